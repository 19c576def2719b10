"""LPO ablations in one table: loss form, negative sampler, pool, reweighting, and LPO trained
jointly with cross-entropy from the start against LPO as a stage after SFT.

    .venv/bin/python bench/lpo_ablation.py --seeds 0,1,2                 # ml-100k, leave-one-out
    .venv/bin/python bench/lpo_ablation.py --seeds 0 --variants default,dpo --smoke

Every variant starts from the same SFT checkpoint of each seed: the one ``bench/protocol_table.py``
trains for that seed (``runs/bench/loo/seed{s}/sft``, the shipped config's pipeline with the
protocol's split and the Pareto tail; made here with ``rlhf-ray pipeline --stages
data,pretrain,sft`` if missing). A variant is :data:`BASE` (the LPO sweep's choice, the
shipped section before this ablation) with a few fields changed (:data:`VARIANTS`), so the
rows stay one change apart whatever is shipped; ``default`` is the config's own ``lpo:``
section as shipped (today it equals ``base``); ``joint`` instead starts from the pre-training checkpoint and
trains LPO + cross-entropy for as long as SFT does (early stopping on validation, SFT's learning
rate), as LPO4Rec's own code trains its model. Each run selects its checkpoint on validation
NDCG@10 (early stopping inside the stage); test is read once per checkpoint, here.

Table: test NDCG@10, Recall@20, tail Recall@20 (users whose held-out item is a tail item), page
ILD and catalogue coverage of the 20-item pages; cells are the mean over seeds ±std over seeds
[95% bootstrap interval over users of the seed-averaged per-user values]; each variant is
compared with SFT paired over users (NDCG@10 and tail Recall@20: difference, interval,
ratio), on test and, for the choice between variants, on the whole validation split. Writes
``bench/results/lpo_ablation.json`` (``lpo_ablation_pagellm.json`` with ``--protocol pagellm``)
with provenance.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from protocol_runs import seed_list  # noqa: E402
from protocol_table import cell, fmt, protocol_config, seed_avg  # noqa: E402
from ppo_common import results_dir  # noqa: E402
from provenance import Run  # noqa: E402

from rlhf_ray import stats  # noqa: E402

#: the section every variant changes: the LPO sweep's choice on validation (tune_configs/lpo.yaml)
BASE = {"loss": "lpo", "n_negatives": 4, "sampler": "gumbel", "tau": 7.41557527195705, "pool": "all",
        "reweight_strength": 0.013692500850740474, "train": {"epochs": 3, "patience": 1, "lr": 0.0003}}
#: name -> (what it tests, changes to BASE). "default" is the config's own section; "joint" also changes the start.
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("the LPO sweep's choice: softmax listwise, Gumbel tau 7.4, 4 negatives, pool all, static reweight "
             "0.014 (shipped before this ablation)", {}),
    "default": ("shipped (the config's lpo section as it is)", {}),
    "lpo_sigmoid": ("loss: product of sigmoids (pairwise Bradley-Terry terms)", {"loss": "lpo_sigmoid"}),
    "dpo": ("loss: DPO (1 negative, frozen reference)", {"loss": "dpo"}),
    "sdpo": ("loss: S-DPO (N negatives, frozen reference)", {"loss": "sdpo"}),
    "gumbel_tau0.5": ("sampler: Gumbel, tau 0.5 (hard negatives)", {"tau": 0.5}),
    "gumbel_tau2": ("sampler: Gumbel, tau 2", {"tau": 2.0}),
    "uniform": ("sampler: uniform", {"sampler": "uniform"}),
    "popularity": ("sampler: popularity", {"sampler": "popularity"}),
    "in_batch": ("sampler: in-batch positives", {"sampler": "in_batch"}),
    "pool_head": ("pool: head items only (LPO4Rec)", {"pool": "head"}),
    "reweight_static": ("reweight: static tail flag, strength 1", {"reweight_strength": 1.0}),
    "reweight_adaptive": ("reweight: adaptive (tail flag + standardised loss), strength 1",
                          {"reweight_strength": 1.0, "reweight": "adaptive"}),
    "reweight_off": ("reweight: off (strength 0)", {"reweight_strength": 0.0}),
    "tail_heavy": ("pool head + static reweight strength 3 (the sweep's tail end)",
                   {"pool": "head", "reweight_strength": 3.0}),
    "head_popularity": ("pool head + popularity sampler", {"pool": "head", "sampler": "popularity"}),
    "head_n16": ("pool head, 16 negatives", {"pool": "head", "n_negatives": 16}),
    "head_tau1": ("pool head, Gumbel tau 1 (harder head negatives)", {"pool": "head", "tau": 1.0}),
    "head_lpo2": ("pool head, preference loss weight 2", {"pool": "head", "lpo_weight": 2.0}),
    "head_rw1": ("pool head + static reweight strength 1", {"pool": "head", "reweight_strength": 1.0}),
    "head_popularity_n16": ("pool head + popularity sampler, 16 negatives",
                            {"pool": "head", "sampler": "popularity", "n_negatives": 16}),
    "head_popularity_n8": ("pool head + popularity sampler, 8 negatives",
                           {"pool": "head", "sampler": "popularity", "n_negatives": 8}),
    "head_popularity_n32": ("pool head + popularity sampler, 32 negatives",
                            {"pool": "head", "sampler": "popularity", "n_negatives": 32}),
    "head_popularity_n16_ce2": ("pool head + popularity sampler, 16 negatives, cross-entropy weight 2",
                                {"pool": "head", "sampler": "popularity", "n_negatives": 16, "ce_weight": 2.0}),
    "head_pop8_pref_rw1": ("pool head + popularity sampler, 8 negatives, tail reweight 1 on the preference term only",
                           {"pool": "head", "sampler": "popularity", "n_negatives": 8, "reweight_strength": 1.0,
                            "reweight_on": "preference"}),
    "head_pop8_pref_rw2": ("pool head + popularity sampler, 8 negatives, tail reweight 2 on the preference term only",
                           {"pool": "head", "sampler": "popularity", "n_negatives": 8, "reweight_strength": 2.0,
                            "reweight_on": "preference"}),
    "joint": ("LPO + CE from the pre-trained model, as long as SFT (no SFT stage)", {}),
}
COLUMNS = ["ndcg@10", "recall@20", "tail_recall@20", "page_ild"]
COMPARE = ["ndcg@10", "tail_recall@20"]
VALID = ["ndcg@10", "tail_recall@20"]  # validation figures shown per variant (its checkpoint's, as selected)
#: how a compared metric is named in the table's header
LABELS = {"ndcg@10": "NDCG@10", "tail_recall@20": "tail R@20"}


def ensure_sft(work: Path, seed: int, config: str, smoke: bool, protocol: str = "loo") -> Path:
    """``work/seed{s}`` with data, pretrain and sft (the protocol table's, reused when complete)."""
    out = work / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    text = yaml.safe_dump(protocol_config(config, protocol, seed, smoke))
    if (out / "sft" / "manifest.json").is_file() and cfg.is_file() and cfg.read_text() == text:
        return out  # the protocol table's run of this seed (maybe still running its later stages)
    cfg.write_text(text)
    cmd = [sys.executable, "-m", "rlhf_ray.cli", "pipeline", "--config", str(cfg), "--out", str(out),
           "--stages", "data,pretrain,sft"] + (["--smoke"] if smoke else [])
    print(f"[ablation] $ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return out


def lpo_config(run_dir: Path, name: str, seed: int, smoke: bool):
    """The variant's LPOConfig: the pipeline's lpo section, changed by :data:`VARIANTS`, on the
    prompt length of the run's SFT checkpoint."""
    from rlhf_ray.checkpoint import prompt_of
    from rlhf_ray.config import LPOConfig

    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    sec = dict(raw.get("lpo") or {}) if name == "default" else {**BASE, **VARIANTS[name][1]}
    train = dict(sec.get("train") or {})
    train.update({"seed": seed, "progress": False, "tensorboard": False})
    if name == "joint":  # SFT's optimisation budget and learning rate
        sft_train = (raw.get("sft") or {}).get("train") or {}
        train.update({k: sft_train[k] for k in ("epochs", "lr", "patience") if k in sft_train})
    if smoke:
        train.update({"epochs": 1, "max_steps": 3, "eval_users": 50})
    sec["train"] = train
    # the history length SFT was trained on (every variant continues SFT or is compared with it;
    # the run's config may set it under prompt: or nowhere)
    history = prompt_of(json.loads((run_dir / "sft" / "manifest.json").read_text()))["max_history"]
    return LPOConfig.from_dict({**sec, "max_history": int(history)})


def describe(cfg) -> str:
    """One line for an LPO config: loss, sampler, negatives, pool, reweighting."""
    sampler = f"Gumbel tau {cfg.tau:.3g}" if cfg.sampler == "gumbel" else cfg.sampler
    return (f"{cfg.loss} loss, {sampler} sampler, {cfg.negatives} negatives, pool {cfg.pool}, "
            f"{cfg.reweight} reweight {cfg.reweight_strength:.2g}" + (" (preference term only)" if cfg.reweight_on
                                                                     == "preference" else ""))


def same_config(ckpt: Path, cfg) -> bool:
    """Whether the checkpoint at ``ckpt`` was trained with ``cfg`` (fields added since then count as
    their legacy values; cosmetic fields such as progress bars do not count): what every ablation
    bench reuses a checkpoint on."""
    m = ckpt / "manifest.json"
    return m.is_file() and cfg.matches(json.loads(m.read_text()).get("config") or {})


def train_variant(run_dir: Path, name: str, seed: int, smoke: bool) -> Path:
    """Train (or reuse, when its manifest records the same config) one variant's checkpoint."""
    from rlhf_ray.stages.launch import launch

    cfg = lpo_config(run_dir, name, seed, smoke)
    out = run_dir / "lpo_ablation" / name
    if same_config(out, cfg):
        return out
    init = run_dir / ("pretrain" if name == "joint" else "sft")
    t = time.time()
    launch("lpo", cfg, str(run_dir / "data"), str(out), init=str(init))
    print(f"[ablation] seed {seed} {name}: trained in {time.time() - t:.0f} s", flush=True)
    return out


def test_frame(ckpt: Path, prepared, cache: Path, split: str = "test") -> pd.DataFrame:
    """Per-user ``split`` metrics of a checkpoint (20-item pages, prompts of the history length it
    was trained with), cached beside it by manifest id."""
    from rlhf_ray.checkpoint import generation_for, load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    manifest = json.loads((ckpt / "manifest.json").read_text())
    gen = generation_for(manifest, page_size=20)
    key = f"{ckpt.name}-{manifest['id']}-h{gen.max_history}"
    f = cache / (f"{key}.parquet" if split == "test" else f"{key}-{split}.parquet")
    if f.is_file():
        return pd.read_parquet(f)
    ck = load_checkpoint(ckpt)
    ev = evaluate_full(ck.model.eval(), ck.vocab, prepared, split, gen)
    frame = ev.per_user.drop(columns=["targets", "ranking"])
    cache.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(f)
    return frame


def coverage(frame: pd.DataFrame, n_items: int) -> float:
    """Share of the catalogue on at least one user's page."""
    return float(np.unique(np.concatenate([np.asarray(p) for p in frame["page"]])).size) / n_items


def record_valid(val: dict, name: str, ckpt: Path, valid=VALID, prepared=None,
                 cache: Path | None = None, skip: int = 0) -> pd.DataFrame | None:
    """Append the checkpoint's validation figures (``valid``) to ``val[name]``: from its manifest
    (the stage's own validation; returns None), or, given ``prepared`` and ``cache``, measured here
    on the whole validation split like the test (every variant and SFT on the same users; returns
    the per-user frame, for paired comparisons on validation), less its first ``skip`` users."""
    frame = None
    if prepared is not None:
        frame = test_frame(ckpt, prepared, cache, split="valid").iloc[skip:].reset_index(drop=True)
        m = {f"val/{c}": float(np.nanmean(frame[c].to_numpy(dtype=float))) for c in valid}
    else:
        m = json.loads((ckpt / "manifest.json").read_text()).get("metrics", {})
    for c in valid:
        val.setdefault(name, {}).setdefault(c, []).append(m.get(f"val/{c}", float("nan")))
    return frame


def vs_base(comp: dict) -> str:
    """' x1.012 (within interval)' for a paired comparison; ' (n/a)' without users to compare."""
    return " (n/a)" if comp["rel"] is None else f" x{comp['rel']:.3f} ({comp['verdict']})"


def ablation_table(frames: dict[str, list[pd.DataFrame]], val: dict[str, list[float]], whats: dict[str, str],
                   prepared, n_seeds: int, base_what: str, base: str = "sft", columns=COLUMNS, compare=COMPARE,
                   valid=VALID, val_frames: dict[str, list[pd.DataFrame]] | None = None):
    """(rows, comparisons, markdown, tail users) of an ablation: every variant's test cells
    (``columns``) and its paired comparison with ``base`` (``compare``), one row per entry of
    ``frames`` (``base`` first). ``val``: each variant's validation metrics (``valid``) per
    seed (the selection figures). ``val_frames``: per-user validation frames per variant and
    seed; given, each validation cell also carries its paired comparison with ``base`` over the
    validation users (``comparisons[name]["valid"]``), what a choice between variants rests on,
    and the JSON each variant's against the shipped ``default`` (``["valid_vs_default"]``)."""
    rows, comps = {}, {}
    for name, fr in frames.items():
        rows[name] = {"what": base_what if name == base else whats[name],
                      "metrics": {c: cell(fr, c) for c in columns},
                      "page_coverage": stats.seed_summary([coverage(f, prepared.n_items) for f in fr]),
                      **{f"valid_{c}": stats.seed_summary(val[name][c]) if name in val else None for c in valid}}
        if name != base:
            comps[name] = {c: stats.paired_diff(seed_avg(fr, c), seed_avg(frames[base], c)) for c in compare}
            if val_frames:
                comps[name]["valid"] = {c: stats.paired_diff(seed_avg(val_frames[name], c),
                                                             seed_avg(val_frames[base], c)) for c in valid}
                if "default" in val_frames and name != "default":  # the alternative against what is shipped
                    comps[name]["valid_vs_default"] = {
                        c: stats.paired_diff(seed_avg(val_frames[name], c), seed_avg(val_frames["default"], c))
                        for c in valid}
    lines = ["| variant | what | " + " | ".join(f"valid {c}" for c in valid) + " | "
             + " | ".join(f"test {c}" for c in columns) + " | page coverage | "
             + " | ".join(f"{LABELS.get(c, c)} vs {base.upper()}" for c in compare) + " |",
             "|---|---|" + "---|" * (len(valid) + len(columns) + 1 + len(compare))]
    for name, r in rows.items():
        shown = ["—" if not r[f"valid_{c}"] or r[f"valid_{c}"]["mean"] is None else f"{r[f'valid_{c}']['mean']:.4f}"
                 + (vs_base(comps[name]["valid"][c]) if name != base and "valid" in comps.get(name, {}) else "")
                 for c in valid]
        cells = shown + [fmt(r["metrics"][c]) for c in columns] + [f"{r['page_coverage']['mean']:.3f}"]
        vs = ["—"] * len(compare) if name == base else [
            f"x{comps[name][c]['rel']:.3f} ({comps[name][c]['verdict']})" for c in compare]
        lines.append(f"| {name} | {r['what']} | " + " | ".join(cells) + " | " + " | ".join(vs) + " |")
    hist, targets, ratings, users = prepared.histories("test")
    n_tail = int(sum(bool(np.asarray(prepared.is_tail)[t].any()) for t in targets if len(t)))
    tail = (f"; tail Recall@20 over the {n_tail} users whose held-out item is a tail item"
            if "tail_recall@20" in columns else "")
    vnote = (f" Validation cells: mean over seeds, then (rows but {base.upper()}) the ratio to {base.upper()}'s "
             f"and its verdict, paired over the validation users." if val_frames else "")
    lines += ["", f"Cells: mean over {n_seeds} seeds ±std over seeds [95% bootstrap interval over "
                  f"{len(users)} test users{tail}]. vs {base.upper()}: ratio of means, paired over users; "
                  f"'higher'/'lower' only when the 95% interval of the difference excludes 0.{vnote}"]
    return rows, comps, "\n".join(lines), n_tail


def vs_best_peer(frames: dict[str, list[pd.DataFrame]], peers: dict[str, pd.DataFrame], metric: str) -> dict:
    """Every row of ``frames`` against the best peer on ``metric`` (the highest test mean, as
    ``bench/protocol_table.py`` picks it: the hardest opponent), paired over the same users:
    ``{"peer", "cell", "rows": {name: paired_diff(row, peer)}, "markdown"}``."""
    best = max(peers, key=lambda k: float(np.nanmean(peers[k][metric].to_numpy(dtype=float))))
    ref = peers[best].set_index("user_idx")[metric]
    rows = {}
    for name, fr in frames.items():
        users = fr[0]["user_idx"].to_numpy()
        if any(not np.array_equal(f["user_idx"].to_numpy(), users) for f in fr):
            raise RuntimeError(f"{name}: seeds evaluated different users")
        rows[name] = stats.paired_diff(seed_avg(fr, metric), ref.reindex(users).to_numpy(dtype=float))
    c = cell([peers[best]], metric)
    md = (f"Against the best peer on test {metric} ({best}, {c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}], "
          f"bench/peers_bench.py's top-100 lists), paired over {next(iter(rows.values()))['n']} users: "
          + "; ".join(f"{n} " + (f"x{r['rel']:.3f}" if r["rel"] is not None else "n/a") + f" ({r['verdict']})"
                      for n, r in rows.items()) + ".")
    return {"peer": best, "cell": c, "rows": rows, "markdown": md}


def train_seconds(checkpoint: Path) -> float | None:
    """Wall seconds the stage that wrote ``checkpoint`` trained for, from its manifest (supervised
    stages record ``train/wall_s``, PPO ``wall_s``); None when the manifest has neither. A variant
    reused from an earlier run keeps the time of the run that trained it, which the harness's own
    ``seconds`` (this invocation's wall time) does not show. A variant's own pre-training is not
    included."""
    from rlhf_ray.checkpoint import read_manifest

    metrics = (read_manifest(checkpoint) or {}).get("metrics") or {}
    for key in ("train/wall_s", "wall_s"):
        if isinstance(metrics.get(key), (int, float)):
            return round(float(metrics[key]), 3)  # a smoke run trains in a few hundredths of a second
    return None


def run_ablation(argv, doc: str, bench: str, variants: dict[str, str], train, base_what: str,
                 describe_default=None, columns=COLUMNS, compare=COMPARE, valid=VALID,
                 whole_valid: bool = False, checkpoint_note=None) -> int:
    """The command line of an ablation bench (this one and ``sft_ablation.py``): per seed, the
    protocol table's SFT (made if missing), every variant trained by ``train(run_dir, name, seed,
    smoke)`` (or reused), test read once per checkpoint into ``run_dir/<bench>/test``; one table
    (:func:`ablation_table`) written to ``<bench>.json``. ``variants``: name -> what it tests;
    ``describe_default(run_dir, seed, smoke)``: the text of the "default" row, from its config;
    ``columns``/``compare``/``valid``: the table's test columns, paired comparisons with SFT and
    validation columns; ``whole_valid``: validation figures measured on the whole validation split
    (20-item pages, as the test) instead of read from each checkpoint's manifest; ``checkpoint_note(name,
    checkpoints)``: a sentence on a variant from its checkpoints (one per seed), listed under the table."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--protocol", default="loo", choices=["loo", "pagellm"],
                   help="the split the seeds' runs use (bench/protocol_table.py's); the JSON is <bench>.json for "
                        "loo, <bench>_pagellm.json for pagellm")
    p.add_argument("--variants", default=",".join(variants), help=f"comma list of {', '.join(variants)}")
    p.add_argument("--config", default=str(ROOT / "bench" / "configs" / "ml-100k-selected.yaml"),
                   help="pipeline config the seeds' runs are made from (default: the selected config)")
    p.add_argument("--work", default=None, help="run directory (default runs/bench/loo, shared with protocol_table)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, a few steps: checks the plumbing")
    p.add_argument("--results", default=None, help="where the JSON goes (default bench/results; smoke: outside the repo)")
    p.add_argument("--valid-skip", type=int, default=0, help="whole-split validation figures over the validation "
                   "users after the first N (e.g. PPO's eval_users, on which ppo.select chose: a comparison on "
                   "them favours the chosen checkpoint)")
    p.add_argument("--peers", default=None, metavar="DIR",
                   help="peer top-100 lists of bench/peers_bench.py (DIR/{model}.npz, same data): every row is "
                        "then also compared with the best peer on the protocol's headline metric, paired over users")
    args = p.parse_args(argv)
    if args.peers and not Path(args.peers).is_dir():
        p.error(f"--peers: {args.peers} is not a directory")
    if args.valid_skip < 0:
        p.error(f"--valid-skip: at least 0, got {args.valid_skip}")
    seeds = args.seeds
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(variants))
    if unknown:
        p.error(f"unknown variants {unknown}")
    from rlhf_ray.data.prepared import load_prepared

    work = Path(args.work or ROOT / "runs" / "bench" / (args.protocol + ("-smoke" if args.smoke else "")))
    run = Run(inputs={"config": args.config})
    t0 = time.time()
    dirs = [ensure_sft(work, s, args.config, args.smoke, args.protocol) for s in seeds]
    prepared = load_prepared(dirs[0] / "data")
    run.add_input("data", dirs[0] / "data")
    peers = {}
    if args.peers:  # read (and refused) before any variant trains
        from protocol_table import per_user_peers
        try:
            peers = per_user_peers(Path(args.peers), prepared, args.protocol)
        except RuntimeError as e:
            p.error(f"--peers: {e}")
        if not peers:
            p.error(f"--peers: no peer lists (*.npz of bench/peers_bench.py) in {args.peers}")
        for name in peers:
            run.add_input(f"peer/{name}", Path(args.peers) / f"{name}.npz")
    frames: dict[str, list[pd.DataFrame]] = {"sft": []}
    val: dict[str, dict[str, list[float]]] = {}
    val_frames: dict[str, list[pd.DataFrame]] = {}
    checkpoints: dict[str, list[Path]] = {}
    for s, d in zip(seeds, dirs):
        cache = d / bench / "test"
        run.add_input(f"seed{s}/sft", d / "sft")
        vargs = (prepared, d / bench / "valid", args.valid_skip) if whole_valid else ()
        for name in ["sft", *names]:
            ck = d / "sft" if name == "sft" else train(d, name, s, args.smoke)
            if name != "sft":
                run.add_input(f"seed{s}/{name}", ck)
                checkpoints.setdefault(name, []).append(Path(ck))
            frames.setdefault(name, []).append(test_frame(ck, prepared, cache))
            vf = record_valid(val, name, ck, valid, *vargs)
            if vf is not None:
                val_frames.setdefault(name, []).append(vf)
    whats = {k: variants[k] for k in names}
    if describe_default is not None and "default" in whats:
        whats["default"] = describe_default(dirs[0], seeds[0], args.smoke)
    rows, comps, md, n_tail = ablation_table(frames, val, whats, prepared, len(seeds), base_what,
                                             columns=columns, compare=compare, valid=valid,
                                             val_frames=val_frames or None)
    if args.valid_skip and val_frames:
        md += (f"\n\nValidation columns over the {len(val_frames['sft'][0])} validation users after the first "
               f"{args.valid_skip} (--valid-skip: the users PPO validated on, which ppo.select chose on).")
    peer = None
    if peers:
        from protocol_table import HEADLINE
        peer = vs_best_peer(frames, peers, HEADLINE[args.protocol])
        md += "\n\n" + peer["markdown"]
    notes = {n: checkpoint_note(n, cks) for n, cks in checkpoints.items()} if checkpoint_note else {}
    if notes:
        md += "\n\n" + "\n".join(f"* {n}: {t}" for n, t in notes.items())
    print(md)
    name = bench + ("" if args.protocol == "loo" else f"_{args.protocol}") + ("_smoke" if args.smoke else "")
    path = run.write(name,
                     {"protocol": args.protocol, "seeds": seeds, "variants": whats, "valid_skip": args.valid_skip,
                      "rows": rows, "comparisons": comps, "markdown": md, "notes": notes, "vs_best_peer": peer,
                      "users": len(prepared.histories("test")[3]),
                      "tail_users": n_tail, "seconds": round(time.time() - t0, 1),
                      "train_seconds": {n: [train_seconds(ck) for ck in cks] for n, cks in checkpoints.items()}},
                     results_dir=args.results or results_dir(args.smoke))
    print(f"[{bench}] wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_ablation(argv, __doc__, "lpo_ablation", {k: v[0] for k, v in VARIANTS.items()}, train_variant,
                        "SFT (the start of every variant but joint)",
                        lambda d, s, smoke: "shipped: " + describe(lpo_config(d, "default", s, smoke)),
                        whole_valid=True)


if __name__ == "__main__":
    sys.exit(main())
