"""One function per figure of the run report; each returns a matplotlib ``Figure``.

Figures are built with the object API (``matplotlib.figure.Figure``, no pyplot state) and
saved by :meth:`rlhf_ray.report.render.Report.figure` on the Agg canvas. Every axis says what
it measures and in which unit.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FRACTION = "fraction of users, 0-1"
SCORE = "score, 0-1"
Z = "reward (z-score units)"
ALERT = dict(color="crimson", linestyle="--", linewidth=1.2)


def _fig(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over about 1/25 of the curve (at least 1 point)."""
    w = max(1, len(y) // 25)
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    out[: w - 1] = c[1:w] / np.arange(1, w)
    return out


def _label_last(ax, x, y) -> None:
    """The last value written above its point, inside the axes."""
    ax.annotate(f"{y[-1]:.3f}", (x[-1], y[-1]), textcoords="offset points", xytext=(0, 7), ha="right", fontsize=8)
    ax.margins(x=0.06, y=0.15)


def _epochs_axis(ax, epochs: list) -> None:
    ax.set_xlabel("epoch")
    ax.set_xticks(sorted(set(epochs)))
    if len(set(epochs)) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def loss_label(key: str) -> str:
    name = key.split("/", 1)[1]
    if name == "loss":
        return "loss (weighted sum of the terms)"
    return f"{name} ({'stars²' if 'rating' in key else 'nats'})"


def val_unit(keys: list[str]) -> str:
    if any("rmse" in k for k in keys):
        return "validation rating RMSE (stars)"
    if all(k.startswith("val/acc") for k in keys):
        return "pairwise accuracy (fraction of pairs)"
    return f"validation metric ({SCORE})"


def stage_curves(stage: str, steps: dict, epochs: list[dict], val_keys: list[str], best: int | None = None) -> Figure:
    """Left: training losses per optimiser step (raw and smoothed); right: validation per epoch,
    with the ``best`` epoch (the one the checkpoint keeps) marked when there are several."""
    fig, (left, right) = _fig(2)
    for key, (x, y) in steps.items():
        y = np.asarray(y, dtype=float)
        line, = left.plot(x, y, linewidth=0.6, alpha=0.3)
        left.plot(x, _smooth(y), color=line.get_color(), label=loss_label(key))
    if not steps:  # no TensorBoard events: the per-epoch means from metrics.jsonl
        for key in sorted({k for r in epochs for k in r if k == "train/loss" or k.startswith("train/l_")}):
            ep = [r for r in epochs if key in r]
            left.plot([r["epoch"] for r in ep], [r[key] for r in ep], marker="o", label=loss_label(key))
        _epochs_axis(left, [r["epoch"] for r in epochs])
    else:
        left.set_xlabel("optimiser step")
    left.set_ylabel("training loss (units in the legend)")
    left.set_title(f"{stage}: training loss")
    left.legend(fontsize=8)
    for key in val_keys:
        ep = [r for r in epochs if key in r]
        x, y = [r["epoch"] for r in ep], [r[key] for r in ep]
        right.plot(x, y, marker="o", label=key.split("/", 1)[1])
        _label_last(right, x, y)
    if best is not None and len(epochs) > 1:
        right.axvline(best, color="gray", linestyle=":", label=f"best epoch ({best}): the checkpoint")
    right.set_ylabel(val_unit(val_keys))
    _epochs_axis(right, [r["epoch"] for r in epochs])
    right.set_title(f"{stage}: validation after each epoch")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3)  # below: off the curves
    return fig


def _alerts(axes, alerts: list[dict]) -> None:
    """Hacking alerts as vertical lines; iterations are whole numbers on every axis."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for i, a in enumerate(alerts):
            ax.axvline(a["iteration"], label="reward-hacking alert" if i == 0 else None, **ALERT)


def ppo_training(iters: list[dict], alerts: list[dict]) -> Figure:
    """Reward (total, page and item parts), KL to the reference with its coefficient, policy entropy."""
    fig, (rw, kl, ent) = _fig(3)
    x = [r["iteration"] for r in iters]
    for key, name in (("reward/total", "total (alpha mix)"), ("reward/page", "page head"),
                      ("reward/item", "item head, mean per slot")):
        if all(key in r for r in iters):
            rw.plot(x, [r[key] for r in iters], marker=".", label=name)
    rw.set(title="PPO: reward of the rollout pages", xlabel="PPO iteration", ylabel=Z)
    kl.plot(x, [r["kl/per_page"] for r in iters], marker=".", color="tab:purple", label="KL per page")
    kl.axhline(0.0, color="black", linewidth=0.5)
    coefs = [r["kl/coef"] for r in iters]
    if len(set(coefs)) == 1:  # fixed coefficient: a second axis would only show a flat line
        kl.set_title(f"PPO: KL to the SFT reference (coefficient fixed at {coefs[0]:g})")
        handles = kl.get_legend_handles_labels()[0]
    else:
        kl.set_title("PPO: KL to the SFT reference and its adaptive coefficient")
        coef = kl.twinx()
        coef.plot(x, coefs, color="tab:gray", linestyle=":", label="KL coefficient")
        coef.set_ylabel("KL coefficient (unitless)")
        handles = kl.get_legend_handles_labels()[0] + coef.get_legend_handles_labels()[0]
    kl.set(xlabel="PPO iteration", ylabel="KL per page (nats)")
    ent.plot(x, [r["policy/entropy"] for r in iters], marker=".", color="tab:green", label="policy entropy")
    ent.set(title="PPO: policy entropy per page slot", xlabel="PPO iteration", ylabel="entropy (nats)")
    _alerts((rw, kl, ent), alerts)
    kl.legend(handles=handles + [h for h in kl.get_legend_handles_labels()[0] if h not in handles], fontsize=8)
    rw.legend(fontsize=8)
    ent.legend(fontsize=8)
    return fig


PPO_VAL = (("val/ndcg@10", "NDCG@10", f"NDCG@10 ({SCORE})"), ("val/page_ild", "page ILD", "intra-list distance, 0-1"),
           ("val/page_cat_entropy", "page category entropy", "category entropy of a page (nats)"))


def ppo_validation(vals: list[dict], alerts: list[dict], baseline: dict, threshold: float | None) -> Figure:
    """Validation NDCG@10, page ILD and category entropy per validation, with the monitor's alerts and,
    for the metrics it watches (``baseline``: their values for the SFT policy), its alert level."""
    keys = [k for k in PPO_VAL if any(k[0] in v for v in vals)]
    fig, axes = _fig(len(keys))
    for ax, (key, name, unit) in zip(axes, keys):
        v = [r for r in vals if key in r]
        x, y = [r["iteration"] for r in v], [r[key] for r in v]
        ax.plot(x, y, marker="o", label=name)
        _label_last(ax, x, y)
        if key in baseline and threshold is not None:
            ax.axhline(baseline[key] * (1 - threshold), color="gray", linestyle=":",
                       label=f"alert level ({threshold:.0%} below baseline)")
        ax.set(title=f"PPO validation: {name}", xlabel="PPO iteration (0 = SFT policy)", ylabel=unit)
    _alerts(axes, alerts)
    for ax in axes:
        ax.legend(fontsize=8)
    return fig


def reward_scores(scores: dict, split: str) -> Figure:
    """Histograms of the reward model's score of chosen vs rejected pages, one panel per family."""
    fams = sorted(scores)
    ncols = min(2, len(fams))
    fig, axes = _fig(ncols, (len(fams) + ncols - 1) // ncols)
    for ax, fam in zip(axes, fams):
        ch, rj = scores[fam]["chosen"], scores[fam]["rejected"]
        bins = np.histogram_bin_edges(np.concatenate([ch, rj]), bins=30)
        for v, color, name in ((ch, "tab:green", "chosen page"), (rj, "tab:red", "rejected page")):
            ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.25, color=color)
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, color=color, label=f"{name} (dashed: mean)")
            ax.axvline(float(np.mean(v)), color=color, linestyle="--", linewidth=1.2)
        acc = float(np.mean(ch > rj))
        ax.set(title=f"{fam}: chosen scored higher in {acc:.0%} of {len(ch)} pairs",
               xlabel="reward model score of the page (z-score units)", ylabel="pages (count)")
        ax.legend(fontsize=8)
    for ax in axes[len(fams):]:
        ax.set_axis_off()
    fig.suptitle(f"Reward model scores, {split} pairs, per preference family")
    return fig


def intervals(cis: dict, metrics: list[tuple[str, str]], title: str) -> Figure:
    """Test metric per policy: mean and 95% bootstrap interval, one panel per metric."""
    fig, axes = _fig(len(metrics), width=3.8)
    for ax, (key, unit) in zip(axes, metrics):
        pols = [p for p in cis if cis[p].get(key) and cis[p][key]["mean"] is not None]
        m = np.array([cis[p][key]["mean"] for p in pols])
        err = np.array([[m[i] - cis[p][key]["lo"], cis[p][key]["hi"] - m[i]] for i, p in enumerate(pols)]).T
        ax.errorbar(range(len(pols)), m, yerr=err if len(pols) else None, fmt="o", capsize=4)
        ax.set_xticks(range(len(pols)), pols)
        ax.set_xlim(-0.5, len(pols) - 0.5)
        ax.set(title=key, xlabel="policy", ylabel=unit)
    fig.suptitle(title)
    return fig


def head_tail(cis: dict, metrics: list[str]) -> Figure:
    """Per policy, head-target users vs tail-target users, one panel per metric, 95% intervals."""
    fig, axes = _fig(len(metrics))
    for ax, metric in zip(axes, metrics):
        pols = list(cis)
        x = np.arange(len(pols))
        for off, group, color in ((-0.2, "head", "tab:blue"), (0.2, "tail", "tab:orange")):
            cs = [cis[p].get(f"{group}_{metric}") or {"mean": None, "n": 0} for p in pols]
            m = np.array([c["mean"] if c["mean"] is not None else np.nan for c in cs])
            err = np.array([[c["mean"] - c["lo"], c["hi"] - c["mean"]] if c["mean"] is not None else [0, 0]
                            for c in cs]).T
            ax.bar(x + off, m, width=0.4, yerr=err, capsize=3, color=color,
                   label=f"{group} users (n = {max(c['n'] for c in cs)})")
        ax.set_xticks(x, pols)
        ax.set(title=f"test {metric}", xlabel="policy", ylabel=f"{metric} ({FRACTION})")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle("Head vs tail: users whose held-out item is popular (head) or long-tail, 95% intervals")
    return fig
