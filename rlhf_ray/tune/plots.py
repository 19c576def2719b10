"""A sweep's figures, as PNGs in ``<out>/plots/`` with ``index.json`` ([{file, title}]) so a run
report can embed them in order:

    objective_vs_<knob>.png   the objective at each trial's last evaluation against each knob
    curves.png                the objective over evaluations of the top trials
    pareto.png                accuracy against diversity, coloured by tail recall, front marked
"""
from __future__ import annotations

import math
from pathlib import Path

from rlhf_ray.jsonio import write_json_atomic
from rlhf_ray.tune.spec import Sweep

TOP = 5


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def _label(sweep: Sweep) -> str:
    terms = sweep.cfg.objective.terms
    return "objective: " + " + ".join(f"{w:g}·{k}" for k, w in terms.items()) + " (validation)"


def write_plots(rows: list[dict], sweep: Sweep, out: Path, best: dict | None, front: list[dict]) -> list[dict]:
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []
    ylabel = _label(sweep)
    colour = {"completed": "tab:blue", "stopped": "tab:gray", "error": "tab:red"}
    for d in sweep.dims:
        pts = [r for r in rows if _ok(r.get("objective")) and r.get(d.path) is not None]
        # a choice knob: categories at 0, 1, ... in the order the space lists them (then any default outside it)
        order = list(dict.fromkeys([str(c) for c in d.args] + [str(r[d.path]) for r in pts])) \
            if d.kind == "choice" else []

        def x(v):
            return order.index(str(v)) if order else v

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for status in colour:
            sel = [r for r in pts if r["status"] == status]
            if sel:
                ax.scatter([x(r[d.path]) for r in sel], [r["objective"] for r in sel], c=colour[status], label=status,
                           alpha=0.8)
        if best is not None and best.get(d.path) is not None:
            ax.scatter([x(best[d.path])], [best["objective"]], marker="*", s=250, c="gold", edgecolors="k",
                       label="selected")
        if order:
            ax.set_xticks(range(len(order)), order)
        if d.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(f"{d.path} ({d.describe()})")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{sweep.cfg.name}: objective against {d.path}")
        ax.legend(fontsize=8)
        name = f"objective_vs_{d.path.replace('.', '_')}.png"
        _save(fig, out / name)
        plt.close(fig)
        index.append({"file": name, "title": f"Objective at each trial's last evaluation against {d.path}"})

    top = sorted([r for r in rows if r["curve"]], key=lambda r: r["objective"] if _ok(r["objective"]) else -math.inf,
                 reverse=sweep.cfg.objective.mode == "max")[:TOP]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in top:
        knobs = ", ".join(f"{d.path.split('.')[-1]}={r[d.path]:.3g}" if _ok(r[d.path]) else f"{d.path}={r[d.path]}"
                          for d in sweep.dims)
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=f"{r['trial'][-5:]}: {knobs}")
    ax.set_xlabel("evaluation (validation pass) of the trial")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{sweep.cfg.name}: learning curves of the top {len(top)} trials")
    if top:
        ax.legend(fontsize=7)
    _save(fig, out / "curves.png")
    plt.close(fig)
    index.append({"file": "curves.png", "title": f"Objective over evaluations, top {len(top)} trials"})

    keys = sweep.cfg.pareto
    x_key, y_key = keys[0], keys[1] if len(keys) > 1 else keys[0]
    c_key = keys[2] if len(keys) > 2 else None
    pts = [r for r in rows if r["status"] == "completed" and _ok(r.get(x_key)) and _ok(r.get(y_key))]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if pts:
        cs = [r[c_key] if c_key and _ok(r.get(c_key)) else 0.0 for r in pts]
        sc = ax.scatter([r[x_key] for r in pts], [r[y_key] for r in pts], c=cs, cmap="viridis", s=50)
        if c_key:
            fig.colorbar(sc, ax=ax, label=f"{c_key} (validation)")
        on = sorted([r for r in front if _ok(r.get(x_key)) and _ok(r.get(y_key))], key=lambda r: r[x_key])
        ax.scatter([r[x_key] for r in on], [r[y_key] for r in on], facecolors="none", edgecolors="red", s=160,
                   label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{x_key} (validation)")
    ax.set_ylabel(f"{y_key} (validation)")
    ax.set_title(f"{sweep.cfg.name}: trade-off over completed trials")
    _save(fig, out / "pareto.png")
    plt.close(fig)
    index.append({"file": "pareto.png", "title": f"Pareto front over {', '.join(keys)}"})
    write_json_atomic(out / "index.json", index)
    return index
