"""Generate README's results tables from ``bench/results/*.json`` (never typed by hand).

    .venv/bin/python bench/readme_tables.py            # rewrite the generated sections of README.md
    .venv/bin/python bench/readme_tables.py --check    # exit 1 if README differs from the JSON

README.md holds blocks delimited by ``<!-- BEGIN bench:NAME -->`` and ``<!-- END bench:NAME -->``;
each NAME has a renderer below that reads one results JSON and returns markdown naming the
commit and the command that produced it. Text outside the blocks is left alone. A block
whose JSON is missing says so instead of showing numbers. Imports nothing of the project
beyond the standard library, so it runs anywhere.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
README = ROOT / "README.md"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _source(doc: dict) -> str:
    prov = doc.get("provenance", {})
    git = prov.get("git", {})
    commit = (git.get("commit") or "unknown")[:10] + (" (dirty tree)" if git.get("dirty") else "")
    load = prov.get("load_before") or []
    return (f"Generated from `bench/results/` by `bench/readme_tables.py`; measured at commit `{commit}` "
            f"with `{prov.get('command')}` (load average before: {load[0] if load else 'n/a'}).")


def _missing(name: str, how: str) -> str:
    return f"*No results yet: `bench/results/{name}.json` is missing. Produce it with `{how}`.*"


def block(name: str, how: str, body):
    """A renderer: ``body(doc)`` markdown of ``results/{name}.json`` + its source line, or a 'missing' note."""
    def render() -> str:
        doc = _load(name)
        return _missing(name, how) if doc is None else body(doc) + "\n\n" + _source(doc)

    return render


def protocol_body(doc: dict) -> str:
    return doc["markdown"]


def sft_select_body(doc: dict) -> str:
    lines = ["| SFT variant | overrides | val NDCG@10 | stopped by | best epoch / run | train s |",
             "|---|---|---|---|---|---|"]
    for v, r in doc["grid"].items():
        mark = " (selected)" if v == doc["selected"] else ""
        ov = ", ".join(f"{k}={x}" for k, x in r["overrides"].items())
        val = r.get("val_ndcg@10")
        shown = f"{val:.4f}" if isinstance(val, (int, float)) else "n/a"
        lines.append(f"| {v}{mark} | {ov} | {shown} | {r.get('stopped_by')} | {r.get('best_epoch')} / "
                     f"{r.get('epochs_run')} | {r.get('train_wall_s') or 0:.0f} |")
    return "\n".join(lines)


def ppo_before_after_body(doc: dict) -> str:
    phases = ["sync", "generate", "score", "advantage", "train"]
    lines = ["| commit | pages/s median [min, max] | s/iteration | " + " | ".join(f"{p} s" for p in phases) + " |",
             "|---|---|---|" + "---|" * len(phases)]
    for side in ("old", "new"):
        s = doc["summary"][side]
        pg = s["pages_per_s"]
        lines.append(f"| {side} `{doc['commits'][side][:7]}` | {pg['median']:.2f} [{pg['min']:.2f}, {pg['max']:.2f}] | "
                     f"{s['iteration_s']['median']:.3f} | "
                     + " | ".join(f"{s[f'{p}_s']['median']:.3f}" for p in phases) + " |")
    lines += ["", f"new/old pages/s (medians over {doc['rounds']} interleaved rounds, {doc['iterations']} measured "
                  f"iterations each, setup {doc['setup']}, {doc['batch']} pages per iteration): "
                  f"**x{doc['pages_per_s_ratio']:.3f}**"]
    return "\n".join(lines)


def own_table_body(doc: dict) -> str:
    """Benches that render their own table (peers: selected config, stopping, seconds, test figures; sweeps)."""
    return doc["table_markdown"]


def generation_speed_body(doc: dict) -> str:
    lines = ["| strategy | prompts per call | ms/page before | ms/page after [min, max] | speed-up | same pages | "
             "max log-prob diff |", "|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        a = r["after"]
        lines.append(f"| {r['strategy']} | {r['batch']} | {r['before_ms_per_page']:.2f} | {r['after_ms_per_page']:.2f} "
                     f"[{a['min']:.2f}, {a['max']:.2f}] | {r['speedup']:.2f}x | {'yes' if r['identical_pages'] else 'NO'} "
                     f"| {r['max_logprob_diff']:.1e} |")
    load = doc.get("median_load_1min")
    lines.append(f"\n{doc['repeats']} interleaved repeats, before = revision `{doc['before_revision']}`; median "
                 f"1-minute load during the repeats: {load if load is not None else 'n/a'}.")
    return "\n".join(lines)


def fault_body(doc: dict) -> str:
    """Faults survived on a simulated 3-node cluster, and PPO pages/s on 1, 2, 3 simulated nodes."""
    s = doc["summary"]

    def figures(d: dict | None) -> str:
        return ", ".join(f"{k} {v:.2g}" for k, v in (d or {}).items() if isinstance(v, (int, float)))

    diffs = (f"PPO: {figures(s['ppo_max_abs_diff_vs_unkilled'])}; "
             f"SFT: {figures(s['sft_max_abs_diff_vs_unkilled'])}")
    lines = ["| faults (landed) | node losses | runs survived | PPO restarts | PPO iterations recomputed | "
             "corrupt checkpoints | largest difference from the unkilled run |", "|---|---|---|---|---|---|---|",
             f"| {s['faults_injected']} ({s['kills_landed']}) | {s['node_losses']} | {s['runs_survived']} / {s['runs']} | "
             f"{s['ppo_restarts']} | {s['ppo_iterations_recomputed']} | {s['corrupt_checkpoints']} | {diffs} |",
             ""]
    noise = s.get("noise_floor") or {}
    if noise:
        lines += [f"Two unkilled runs with the same seed differ by (PPO) "
                  f"{figures(noise.get('ppo_unkilled_twice_max_abs_diff'))}; (SFT on Ray Train) "
                  f"{figures(noise.get('sft_unkilled_twice_abs_diff'))}.", ""]
    lines += ["| simulated nodes | PPO pages/s (median) | of 1 node | rounds |", "|---|---|---|---|"]
    for r in doc["scaling"]:
        rounds = ", ".join(f"{x:.1f}" for x in r["rounds"])
        lines.append(f"| {r['nodes']} | {r['pages_per_s']:.1f} | {r['efficiency']:.2f} | {rounds} |")
    note = doc["cores_note"]
    return "\n".join(lines) + "\n\n" + note[:1].upper() + note[1:] + "."


#: other reward runs shown beside the shipped one: (results file, row label from its doc, source-line prefix)
REWARD_ROWS = (
    ("reward_ml100k_policy0", lambda d: "synthetic pairs only", "Baseline row"),
    (None, lambda d: f"+ {d['config'].get('policy_pages')} on-policy page(s) per golden page (shipped)", None),
    ("reward_ml100k_epochs8", lambda d: f"same pairs, up to {d['config']['train']['epochs']} epochs (patience "
     f"{d['config']['train']['patience']}; best on validation: epoch {d['train']['best_epoch']})", "Longer-training row"),
    ("reward_ml100k_policy4", lambda d: f"+ {d['config'].get('policy_pages')} on-policy pages per golden page",
     "4-page row"),
    ("reward_ml100k_graded", lambda d: f"+ {d['config'].get('policy_pages')} on-policy pages and up to "
     f"{d['config'].get('policy_graded')} graded pairs of them", "Graded row"),
    ("reward_ml100k_graded1_p2", lambda d: f"+ {d['config'].get('policy_pages')} on-policy pages and up to "
     f"{d['config'].get('policy_graded')} graded pair of them", "Graded row (2 pages, 1 pair)"),
    ("reward_ml100k_graded1_p4", lambda d: f"+ {d['config'].get('policy_pages')} on-policy pages and up to "
     f"{d['config'].get('policy_graded')} graded pair of them", "Graded row (4 pages, 1 pair)"),
)
#: the shipped settings trained with several seeds (a mean ±std row), then their ensemble
REWARD_SEEDS = ("reward_ml100k_seed0", "reward_ml100k_seed1", "reward_ml100k_seed2")
REWARD_ENSEMBLE = "reward_ml100k_ensemble3"
REWARD_FAMILIES = ("overall", "relevance", "ranking", "diversity", "redundancy", "policy", "policy_graded")


def reward_cells(d: dict) -> list[float | None]:
    """One reward run's figures in the table's column order (None: not in that run)."""
    acc, cal = d["held_out_pair_accuracy"], d["calibration"]
    spp = cal.get("spearman_policy") or {}
    return ([acc[f]["mix"] if f in acc else None for f in REWARD_FAMILIES]
            + [d["next_item"]["vs_sft"]["mix"], cal["golden_beats_greedy"]["mean"], cal["spearman"]["mean"],
               spp.get("mean")])


def _interval(c: dict | None) -> str:
    return f" [{c['lo']:+.3f}, {c['hi']:+.3f}]" if c else ""


def reward_run_cells(d: dict) -> list[str]:
    """One reward run's formatted cells: accuracies and win rates to 3 places, the Spearman
    columns signed with their intervals; '—' where the run predates a column."""
    cal = d["calibration"]
    cells = ["—" if v is None else f"{v:+.3f}" if i >= len(REWARD_FAMILIES) + 2 else f"{v:.3f}"
             for i, v in enumerate(reward_cells(d))]
    cells[-2] += _interval(cal["spearman"])
    cells[-1] += _interval(cal.get("spearman_policy")) if cells[-1] != "—" else ""
    return cells


def reward_lines(runs: list[tuple[str, dict, str | None]]) -> list[str]:
    """The reward table's header and one row per ``(label, doc, _)``."""
    lines = ["| reward trained on | " + " | ".join(f"pair acc. {f}" for f in REWARD_FAMILIES)
             + " | true page beats SFT page | golden beats SFT greedy | Spearman(R, page NDCG) [95% CI] "
               "| Spearman over the policy's pages |",
             "|---|" + "---|" * (len(REWARD_FAMILIES) + 4)]
    return lines + [f"| {label} | " + " | ".join(reward_run_cells(d)) + " |" for label, d, _ in runs]


def reward_mean_row(label: str, docs: list[dict]) -> str:
    """One table row: every column's mean ±std (ddof 1) over the runs ``docs``."""
    table = np.array([[np.nan if v is None else v for v in reward_cells(d)] for d in docs], dtype=float)
    cells = ["—" if np.isnan(col).all() else f"{np.nanmean(col):.3f} ±{np.nanstd(col, ddof=1):.3f}" for col in table.T]
    return f"| {label} (mean ±std over seeds) | " + " | ".join(cells) + " |"


def reward_body(doc: dict) -> str:
    """The shipped reward (this file) beside the other runs of :data:`REWARD_ROWS`, the shipped
    settings over training seeds and their ensemble: same SFT, same held-out users."""
    runs = [(label(d), d, prefix) for name, label, prefix in REWARD_ROWS
            if (d := doc if name is None else _load(name)) is not None]
    lines = reward_lines(runs)
    seeds = [d for n in REWARD_SEEDS if (d := _load(n)) is not None]
    if len(seeds) > 1:
        lines.append(reward_mean_row(f"the shipped settings, training seeds "
                                     f"{', '.join(str(d['config']['train']['seed']) for d in seeds)}", seeds))
        runs += [(None, d, f"Seed {d['config']['train']['seed']} of the seeds row") for d in seeds]
    ens = _load(REWARD_ENSEMBLE)
    if ens:
        lines.append(f"| the mean of those {len(ens.get('members', []))} models (an ensemble) | "
                     + " | ".join(reward_run_cells(ens)) + " |")
        runs.append((None, ens, "Ensemble row"))
    sp, n_pairs = doc["calibration"]["spearman"], doc["held_out_pair_accuracy"]["overall"]["n"]
    lines.append(f"\nHeld-out users only: pair accuracy over the pair set's test users ({n_pairs} pairs for the "
                 f"shipped row); 'true page beats SFT page' over "
                 f"{doc['next_item']['users']} users (the test item leads the SFT page); the calibration over "
                 f"{sp['prompts']} prompts of {sp['users']} held-out users (golden, rejected, "
                 f"{doc.get('calibration_samples', 8)} sampled from SFT; the last column over those 8 alone). "
                 "'—': not in that run (the column came later).")
    for _, d, prefix in runs:
        if prefix:
            lines.append("\n" + _source(d).replace("Generated from", f"{prefix}: generated from"))
    return "\n".join(lines)


#: reward runs from the reproducible leave-one-out seed-0 SFT, beside its pipeline's own reward model
REWARD_SEEDED_ROWS = tuple(
    (f"reward_ml100k_blocks{n}", lambda d, what=what: f"{what} (up to {d['config']['train']['epochs']} epochs, "
     f"best on validation: epoch {d['train']['best_epoch']})", f"Row '{what}'")
    for n, what in ((1, "the top block, final norm and heads trained; embeddings and the lower block frozen"),
                    (0, "only the heads and final norm trained; the SFT backbone frozen")))


def reward_seeded_body(doc: dict) -> str:
    """The pipeline's reward model of the reproducible loo seed-0 run (this file, ``--reuse``) beside
    the runs of :data:`REWARD_SEEDED_ROWS`: same SFT, same pairs, same held-out users."""
    runs = [(f"every weight trained (shipped; the pipeline's own, best epoch "
             f"{doc['train']['best_epoch']} of {doc['config']['train']['epochs']})", doc, None)]
    runs += [(label(d), d, prefix) for name, label, prefix in REWARD_SEEDED_ROWS if (d := _load(name)) is not None]
    lines = reward_lines(runs)
    for _, d, prefix in runs:
        if prefix:
            lines.append("\n" + _source(d).replace("Generated from", f"{prefix}: generated from"))
    return "\n".join(lines)


#: the same measurement (``--reuse``) on the reward models of the other leave-one-out seeds of the shipped config
REWARD_RANK25_SEEDS = ("reward_ml100k_rank25_seed1", "reward_ml100k_rank25_seed2")
#: each seed's reward model averaged with 2 more trained on its pairs with other seeds (``--ensemble``; the
#: members ``ppo.reward.members`` lists in bench/ppo_ablation.py's shipped_ens3 variants)
REWARD_RANK25_ENSEMBLES = tuple(f"reward_ml100k_rank25_ens3_seed{s}" for s in range(3))


def reward_single_body(doc: dict) -> str:
    """The calibration of a pipeline's own reward model (``--reuse``; this file, seed 0) and of the
    other seeds' pipelines (:data:`REWARD_RANK25_SEEDS`: each its own SFT and reward model, same
    held-out users), with their mean ±std over seeds; then each seed's ensemble of 3
    (:data:`REWARD_RANK25_ENSEMBLES`) and their mean ±std."""
    others = [d for n in REWARD_RANK25_SEEDS if (d := _load(n)) is not None]
    runs = [(f"the pipeline's reward model, seed {i}" if others else "the pipeline's reward model (--reuse)", d,
             f"Seed {i}" if i else None) for i, d in enumerate([doc, *others])]
    lines = reward_lines(runs)
    if others:
        lines.append(reward_mean_row(f"seeds 0-{len(others)}", [doc, *others]))
    ensembles = [(n[-1], d) for n in REWARD_RANK25_ENSEMBLES if (d := _load(n)) is not None]
    for s, d in ensembles:
        label = f"seed {s}: the mean of its reward model and {len(d.get('members', [])) - 1} more on its pairs"
        lines.append(f"| {label} | " + " | ".join(reward_run_cells(d)) + " |")
        runs.append((None, d, f"Seed {s}'s ensemble"))
    if len(ensembles) > 1:
        lines.append(reward_mean_row(f"those ensembles, seeds {', '.join(s for s, _ in ensembles)}",
                                     [d for _, d in ensembles]))
    for _, d, prefix in runs:
        if prefix:
            lines.append("\n" + _source(d).replace("Generated from", f"{prefix}: generated from"))
    return "\n".join(lines)


def serve_ab(subdir: str, modes: dict[str, str]):
    """A renderer of interleaved serve_load rounds ``results/{subdir}/{mode}_r{n}.json``: per client
    count and mode, the median [min, max] over rounds of pages/s, ratio to the ceiling and p99, and
    the replica's mean model and handoff ms per request."""
    def render() -> str:
        runs = {m: sorted((RESULTS / subdir).glob(f"{m}_r*.json")) for m in modes}
        if not all(runs.values()):
            return f"*No results yet: `bench/results/{subdir}/` lacks rounds of {sorted(m for m in runs if not runs[m])}.*"
        docs = {m: [json.loads(f.read_text()) for f in fs] for m, fs in runs.items()}
        lines = ["| clients | setting | rounds | pages/s | ratio to ceiling | p99 ms | model ms | handoff ms |",
                 "|---|---|---|---|---|---|---|---|"]
        med = lambda xs: f"{np.median(xs):.{2 if max(xs) < 10 else 1}f} [{min(xs):.{2 if max(xs) < 10 else 1}f}, " \
            f"{max(xs):.{2 if max(xs) < 10 else 1}f}]"  # noqa: E731
        clients = sorted({r["concurrency"] for d in docs[next(iter(modes))] for r in d["results"]})
        for c in clients:
            for m, label in modes.items():
                rows = [r for d in docs[m] for r in d["results"] if r["concurrency"] == c]
                stage = lambda k: med([r["replica_stage_ms"][k] for r in rows])  # noqa: E731
                lines.append(f"| {c} | {label} | {len(rows)} | {med([r['throughput_rps'] for r in rows])} | "
                             f"{med([r['ratio'] for r in rows])} | {med([r['p99_ms'] for r in rows])} | "
                             f"{stage('model')} | {stage('handoff')} |")
        first = docs[next(iter(modes))][0]
        commits = sorted({(d["provenance"]["git"].get("commit") or "unknown")[:10] for ds in docs.values() for d in ds})
        loads = [d["provenance"].get("load_before", [None])[0] for ds in docs.values() for d in ds]
        return ("\n".join(lines) + "\n\nMedian [min, max] over the rounds, run alternately. Generated from "
                f"`bench/results/{subdir}/` by `bench/readme_tables.py`; measured at commit(s) {', '.join(commits)} "
                f"with `{first['provenance'].get('command')}` (each setting's own flags; load average before the "
                f"rounds: {min(x for x in loads if x is not None)}-{max(x for x in loads if x is not None)}).")

    return render


BLOCKS = {
    "generation_speed": block("generation_speed", "python bench/generation_speed.py --checkpoint CKPT --data DIR",
                              generation_speed_body),
    "protocol_loo": block("protocol_loo", "python bench/protocol_table.py --protocol loo", protocol_body),
    "protocol_pagellm": block("protocol_pagellm", "python bench/protocol_table.py --protocol pagellm", protocol_body),
    "sft_select_loo": block("sft_select_loo", "python bench/sft_select.py --protocol loo", sft_select_body),
    "peers_loo": block("peers_loo", "python bench/peers_bench.py --protocol loo --data DIR", own_table_body),
    "peers_pagellm": block("peers_pagellm", "python bench/peers_bench.py --protocol pagellm --data DIR", own_table_body),
    **{f"sweep_{n}": block(f"sweep_{n}", f"python bench/tune_sweep.py --config tune_configs/{n}.yaml --out "
                           f"runs/sweep-{n}", own_table_body) for n in ("ppo", "ppo-grounded", "lpo", "smoke")},
    "fault_injection": block("fault_injection", "python bench/fault_injection.py", fault_body),
    "reward_ml100k": block("reward_ml100k", "python bench/reward_ml100k.py --data DIR --sft DIR", reward_body),
    "reward_ml100k_seeded": block("reward_ml100k_seeded", "python bench/reward_ml100k.py --data DIR --sft DIR "
                                  "--reuse --out DIR", reward_seeded_body),
    "reward_ml100k_rank25": block("reward_ml100k_rank25", "python bench/reward_ml100k.py --data DIR --sft DIR "
                                  "--reuse --out DIR (the rank_weight 0.25 SFT's run)", reward_single_body),
    "reward_judges": block("reward_judges", "python bench/reward_judges.py --work runs/bench/loo", protocol_body),
    "reward_judges_pagellm": block("reward_judges_pagellm", "python bench/reward_judges.py --work runs/bench/pagellm "
                                   "--name reward_judges_pagellm", protocol_body),
    "lpo_ablation": block("lpo_ablation", "python bench/lpo_ablation.py --seeds 0,1,2", protocol_body),
    "lpo_ablation_pagellm": block("lpo_ablation_pagellm", "python bench/lpo_ablation.py --protocol pagellm "
                                  "--seeds 0,1,2", protocol_body),
    "tail_frontier": block("tail_frontier", "python bench/tail_frontier.py --work runs/bench/loo", protocol_body),
    "tail_frontier_pagellm": block("tail_frontier_pagellm", "python bench/tail_frontier.py --work "
                                   "runs/bench/pagellm --name tail_frontier_pagellm", protocol_body),
    "protocol_loo_5seeds": block("protocol_loo_5seeds", "python bench/protocol_table.py --protocol loo "
                                 "--seeds 0,1,2,3,4 (then copy its protocol_loo.json to this name)", protocol_body),
    "protocol_loo_rank25": block("protocol_loo_rank25", "python bench/protocol_table.py --protocol loo --seeds 0,1,2 "
                                 "(on the rank_weight 0.25 SFT; then copy its protocol_loo.json to this name)",
                                 protocol_body),
    "protocol_loo_rankw1": block("protocol_loo_rankw1", "python bench/protocol_table.py --protocol loo --seeds "
                                 "0,1,2 (at e0c3e8c, on the SFT with page-loss weight 1; then copy its "
                                 "protocol_loo.json to this name)", protocol_body),
    "sft_ablation": block("sft_ablation", "python bench/sft_ablation.py --seeds 0,1,2", protocol_body),
    "sft_ablation_peer": block("sft_ablation_peer", "python bench/sft_ablation.py --seeds 0,1,2 --variants "
                               "dropout_0.3,dropout_0.2,history_20,ema_0.99,label_smoothing_0.1,stride_10,epochs_36,"
                               "epochs_48 --peers DIR (then copy its sft_ablation.json to "
                               "this name)", protocol_body),
    "sft_ablation_rank": block("sft_ablation_rank", "python bench/sft_ablation.py --seeds 0,1,2 --variants "
                               "rank_weight_0.5,rank_weight_0.25,rank_weight_0.1 --peers DIR (then copy its "
                               "sft_ablation.json to this name)", protocol_body),
    "ppo_ablation": block("ppo_ablation", "python bench/ppo_ablation.py --seeds 0,1,2", protocol_body),
    "ppo_ablation_div": block("ppo_ablation_div", "python bench/ppo_ablation.py --seeds 0,1,2 --variants "
                              "default,hit3_lr_half_div5,hit3_lr_half_div6 (then copy its ppo_ablation.json to "
                              "this name)", protocol_body),
    "ppo_ablation_rank25": block("ppo_ablation_rank25", "python bench/ppo_ablation.py --seeds 0,1,2 --variants "
                                 "default,hit3_lr_half_div5,hit3_lr_half_div6 --work DIR (on the rank_weight 0.25 "
                                 "SFT; then copy its ppo_ablation.json to this name)", protocol_body),
    "ppo_ablation_ptxpage": block("ppo_ablation_ptxpage", "python bench/ppo_ablation.py --seeds 0,1,2 --variants "
                                  "hit3_lr_half_div5,hit3_lr_half_div5_pp0.25,...,hit3_lr_half_div15_pp1.0_s1 --work DIR "
                                  "(on the rank_weight 0.25 SFT; then copy its ppo_ablation.json to this name)",
                                  protocol_body),
    **{f"ppo_ablation_div30{suffix}": block(f"ppo_ablation_div30{suffix}", f"python bench/ppo_ablation.py --protocol {proto} "
                                          "--seeds 0,1,2 --variants default,hit3_lr_half_div20_pp1.0_s1,"
                                          "hit3_lr_half_div25_pp1.0_s1,hit3_lr_half_div30_pp1.0_s1 --work DIR (then copy "
                                          "its result to this name)", protocol_body)
       for proto, suffix in (("loo", ""), ("pagellm", "_pagellm"))},
    "ppo_ablation_div30_5seeds": block("ppo_ablation_div30_5seeds", "python bench/ppo_ablation.py --protocol loo --seeds "
                                       "0,1,2,3,4 --variants default,hit3_lr_half_div30_pp1.0_s1 --work DIR (then copy "
                                       "its ppo_ablation.json to this name)", protocol_body),
    "ppo_ablation_div15_vs_30": block("ppo_ablation_div15_vs_30", "python bench/ppo_ablation.py --protocol loo --seeds "
                                      "0,1,2 --variants default,hit3_lr_half_div15_pp1.0_s1 --work DIR (weight 30 "
                                      "shipped; then copy its ppo_ablation.json to this name)", protocol_body),
    "ppo_ablation_reward": block("ppo_ablation_reward", "python bench/ppo_ablation.py --seeds 0,1,2 --variants "
                                 "default,shipped_clip1,shipped_clip2,shipped_ens3,shipped_ens3_unc1,shipped_ens3_unc3 "
                                 "--work DIR (then copy its ppo_ablation.json to this name)", protocol_body),
    "ppo_ablation_model": block("ppo_ablation_model", "python bench/ppo_ablation.py --protocol loo --seeds 0,1,2 "
                                "--variants default,shipped_model0,shipped_model3,shipped_model10 --work DIR (then copy "
                                "its ppo_ablation.json to this name)", protocol_body),
    **{f"ppo_ablation_warmup{suffix}": block(f"ppo_ablation_warmup{suffix}", f"python bench/ppo_ablation.py --protocol "
                                             f"{proto} --seeds 0,1,2 --variants default,shipped_warmup0.25 --work DIR "
                                             "(then copy its JSON to this name)", protocol_body)
       for proto, suffix in (("loo", ""), ("pagellm", "_pagellm"))},
    **{f"ppo_ablation_divslot{suffix}": block(f"ppo_ablation_divslot{suffix}", f"python bench/ppo_ablation.py "
                                              f"--protocol {proto} --seeds 0,1,2 --variants default,shipped_divslot "
                                              "--work DIR (then copy its JSON to this name)", protocol_body)
       for proto, suffix in (("loo", ""), ("pagellm", "_pagellm"))},
    "ppo_ablation_pretrain6": block("ppo_ablation_pretrain6", "python bench/ppo_ablation.py --seeds 0,1,2",
                                    protocol_body),
    "ppo_ablation_amd5": block("ppo_ablation_amd5", "python bench/ppo_ablation.py --seeds 0,1,2,3,4 (then copy its "
                               "ppo_ablation.json to this name)", protocol_body),
    "ppo_ablation_select": block("ppo_ablation_select", "python bench/ppo_ablation.py --seeds 0,1,2,3,4 --valid-skip "
                                 "300 (then copy its ppo_ablation.json to this name)", protocol_body),
    "ppo_before_after": block("ppo_before_after", "python bench/ppo_before_after.py --old REV --data DIR --sft DIR "
                              "--reward DIR", ppo_before_after_body),
    "checkpoint_load": block("checkpoint_load", "python bench/checkpoint_load.py --checkpoints CKPT,CKPT,CKPT",
                             protocol_body),
    "tokenizer_build": block("tokenizer_build", "python bench/tokenizer_build.py", protocol_body),
    "catalogue_scaling": block("catalogue_scaling", "python bench/catalogue_scaling.py", own_table_body),
    "shortlist_quality": block("shortlist_quality", "python bench/shortlist_quality.py --work runs/bench/loo "
                               "--seeds 0,1,2,3,4", protocol_body),
    "shortlist_quality_ppo": block("shortlist_quality_ppo", "python bench/shortlist_quality.py --work runs/bench/loo "
                                   "--seeds 0,1,2,3,4 --policies sft,ppo,ppo_ablation/NAME --shortlists 10,20 --name "
                                   "shortlist_quality_ppo", protocol_body),
    "shortlist_quality_pagellm": block("shortlist_quality_pagellm", "python bench/shortlist_quality.py --work "
                                       "runs/bench/pagellm --seeds 0 --policies sft --name shortlist_quality_pagellm",
                                       protocol_body),
    "serve_load": block("serve_load", "python bench/serve_load.py --checkpoint CKPT --data DIR", own_table_body),
    "gil_contention": block("gil_contention", "python bench/gil_contention.py --checkpoint CKPT --data DIR",
                            own_table_body),
    "serve_load_haproxy": block("serve_load_haproxy", "python bench/serve_load.py --checkpoint CKPT --data DIR "
                                "--ingress haproxy", own_table_body),
    **{f"serve_shortlist_{n}": serve_ab(f"serve_shortlist/{n}", {"whole": "whole catalogue",
                                                                "shortlist": "shortlist 256"}) for n in ("100k", "1m")},
    "serve_separate_ab": serve_ab("serve_separate/ab", {"inreplica": "model in the HTTP replica",
                                                        "separate": "separate_model"}),
}
PATTERN = re.compile(r"(<!-- BEGIN bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END bench:(?P=name) -->)", re.S)


def render_readme(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"README.md: unknown generated block bench:{name} (known: {sorted(BLOCKS)})")
        return m.group(1) + BLOCKS[name]().rstrip() + "\n" + m.group(4)

    return PATTERN.sub(sub, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON gives")
    p.add_argument("--readme", default=str(README))
    args = p.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    absent = sorted(set(BLOCKS) - {m.group("name") for m in PATTERN.finditer(old)})
    if absent:  # a block lost in a prose edit would otherwise pass --check unseen
        print(f"{path}: generated block(s) missing: {', '.join('bench:' + n for n in absent)} "
              "(restore their BEGIN/END markers)", file=sys.stderr)
        return 1
    new = render_readme(old)
    if args.check:
        if new != old:
            print(f"{path}: generated tables are out of date; run python bench/readme_tables.py", file=sys.stderr)
            return 1
        print(f"{path}: generated tables match bench/results")
        return 0
    if new != old:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        tmp.replace(path)
        print(f"rewrote the generated blocks of {path}")
    else:
        print(f"{path}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
