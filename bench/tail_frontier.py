"""How far can popularity re-ranking lift the tail? The NDCG@10 / tail Recall@20 frontier on validation.

    python bench/tail_frontier.py --work runs/bench/loo --seeds 0,1,2 [--policies sft,lpo]

LPO's target (README, Alignment targets) asks for tail Recall@20 at least 1.5x SFT's with
NDCG@10 at least 0.99x. This bench asks how much of that the simplest tail lever buys: each
policy's full-ranking scores (the first page slot's log-softmax over the items, seen items
masked) re-ranked as ``log p(i | u) - beta * log(1 + pop_i)`` (logit adjustment by training
popularity, Menon et al. 2021) over a grid of ``beta``, on every validation user of every
seed's run (``WORK/seed{s}/{sft,lpo}``, the protocol table's). Each point is reported as the
ratio of its mean over seeds to SFT's unadjusted mean (NDCG@10 over all users, tail Recall@20
over the users whose validation item is a tail item). The headline per policy is the largest
tail ratio whose NDCG ratio stays at or above ``--guard`` (0.99, LPO's NDCG target).

Validation only: the test split is never read, so the frontier can inform a choice without
spending the test set. Writes ``bench/results/tail_frontier.json`` (``--name``: another file name).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import protocol_runs  # noqa: E402
from provenance import Run  # noqa: E402

BETAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def adjusted_topk(logprobs: np.ndarray, log_pop: np.ndarray, beta: float, k: int) -> np.ndarray:
    """(U, k) items by ``logprobs - beta * log_pop``; masked items (-inf) stay last."""
    from rlhf_ray import metrics as M

    return M.topk_from_scores(logprobs - beta * log_pop[None, :], k)


def point(logprobs: np.ndarray, log_pop: np.ndarray, beta: float, targets: np.ndarray,
          tail_targets: np.ndarray) -> dict:
    """Validation NDCG@10 (all users) and tail Recall@20 (users with a tail target) at one beta."""
    from rlhf_ray import metrics as M

    top = adjusted_topk(logprobs, log_pop, beta, 20)
    has_tail = (tail_targets >= 0).any(1)
    return {"ndcg@10": float(np.nanmean(M.ndcg(top[:, :10], targets))),
            "tail_recall@20": float(np.nanmean(M.recall(top[has_tail], tail_targets[has_tail]))),
            "users": int(len(targets)), "tail_users": int(has_tail.sum())}


def best_under_guard(curve: list[dict], guard: float) -> dict | None:
    """The point with the largest tail ratio among those whose NDCG ratio is >= guard."""
    ok = [p for p in curve if p["ndcg_ratio"] >= guard]
    return max(ok, key=lambda p: (p["tail_ratio"], p["ndcg_ratio"])) if ok else None


def pooled_curve(per_seed: list[dict], base: dict, betas) -> list[dict]:
    """Per beta: means over seeds and their ratios to SFT's unadjusted means (``base``)."""
    out = []
    for b in betas:
        nd = float(np.mean([s[b]["ndcg@10"] for s in per_seed]))
        tr = float(np.mean([s[b]["tail_recall@20"] for s in per_seed]))
        out.append({"beta": b, "ndcg@10": nd, "tail_recall@20": tr,
                    "ndcg_ratio": nd / base["ndcg@10"], "tail_ratio": tr / base["tail_recall@20"]})
    return out


def seed_split(run_dir: Path):
    """One seed's data, once for every policy: (prepared data, validation histories and users,
    log(1 + popularity), targets, tail targets)."""
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import pad_lists

    prep = load_prepared(run_dir / "data")
    hist, targets, _, users = prep.histories("valid")
    tail = np.asarray(prep.is_tail, bool)
    return (hist, users, np.log1p(np.asarray(prep.popularity, float)), pad_lists(targets),
            pad_lists([[t for t in ts if tail[t]] for ts in targets]))


def policy_scores(ckpt: Path, hist, users) -> np.ndarray:
    """(U, I) validation log-softmax scores of one checkpoint (its own prompt settings)."""
    import torch

    from rlhf_ray.checkpoint import load_checkpoint, prompt_of
    from rlhf_ray.generation import build_prompts, score_items

    ck = load_checkpoint(ckpt)
    ck.model.eval()
    prompt = prompt_of(ck.manifest)
    chunks = []
    with torch.no_grad():
        for s in range(0, len(hist), 256):
            prompts = build_prompts(hist[s:s + 256], ck.vocab, int(prompt["max_history"]),
                                    exclude_seen=bool(prompt.get("exclude_seen", True)), user_idx=users[s:s + 256])
            chunks.append(torch.log_softmax(score_items(ck.model, ck.vocab, prompts).float(), -1).numpy())
    return np.concatenate(chunks)


def stage_parent(ckpt: Path) -> str | None:
    """The stage a checkpoint was trained from (the pipeline's lpo starts from ppo when order is [ppo, lpo])."""
    return (json.loads((ckpt / "manifest.json").read_text()).get("parent") or {}).get("stage")


def markdown(result: dict) -> str:
    lines = ["| policy | beta | valid NDCG@10 | valid tail R@20 | NDCG@10 vs SFT | tail R@20 vs SFT |",
             "|---|---|---|---|---|---|"]
    for pol, curve in result["curves"].items():
        best = result["best"][pol]
        label = f"{pol} (from {result['parents'][pol]})" if result["parents"].get(pol) else pol
        for p in curve:
            mark = " **(best at guard)**" if best and p["beta"] == best["beta"] else ""
            lines.append(f"| {label} | {p['beta']:g}{mark} | {p['ndcg@10']:.4f} | {p['tail_recall@20']:.4f} | "
                         f"x{p['ndcg_ratio']:.3f} | x{p['tail_ratio']:.3f} |")
    lines.append("")
    lines.append(f"Validation only, mean over seeds {result['seeds']} ({result['users']} users, "
                 f"{result['tail_users']} with a tail validation item, per seed); ratios to SFT's unadjusted "
                 f"means. Scores: log p(i|u) - beta x log(1 + training popularity of i). Best at guard: the "
                 f"largest tail ratio with NDCG@10 at least {result['guard']}x SFT's.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = protocol_runs.parser(__doc__, "sft,lpo", "checkpoints under each seed's run, comma list (sft always)",
                             "tail_frontier", ", e.g. tail_frontier_pagellm for the PageLLM protocol's runs")
    p.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS), help="popularity weights, comma list")
    p.add_argument("--guard", type=float, default=0.99, help="NDCG@10 ratio floor of the headline point")
    args = p.parse_args(argv)
    work, seeds, policies = protocol_runs.checkpoints(p, args, always=("sft",))
    betas = [float(b) for b in args.betas.split(",")]
    if 0.0 not in betas:
        betas = [0.0] + betas
    run = Run(inputs={f"seed{s}/{pol}": work / f"seed{s}" / pol for s in seeds for pol in policies})
    per = {pol: [] for pol in policies}
    parents = {}
    for s in seeds:
        hist, users, log_pop, targets, tail_targets = seed_split(work / f"seed{s}")
        for pol in per:
            lp = policy_scores(work / f"seed{s}" / pol, hist, users)
            parents[pol] = stage_parent(work / f"seed{s}" / pol)
            per[pol].append({b: point(lp, log_pop, b, targets, tail_targets) for b in betas})
            print(f"[tail-frontier] seed {s} {pol}: " + "  ".join(
                f"b={b:g} {v['ndcg@10']:.4f}/{v['tail_recall@20']:.4f}" for b, v in per[pol][-1].items()), flush=True)
    counts = per["sft"][-1][0.0]
    base = {k: float(np.mean([x[0.0][k] for x in per["sft"]])) for k in ("ndcg@10", "tail_recall@20")}
    curves = {pol: pooled_curve(v, base, betas) for pol, v in per.items()}
    result = {"what": "validation NDCG@10 vs tail Recall@20 under popularity re-ranking, per policy",
              "seeds": seeds, "parents": parents, "guard": args.guard, "betas": betas, "sft_base": base,
              "users": counts["users"], "tail_users": counts["tail_users"], "curves": curves,
              "best": {pol: best_under_guard(c, args.guard) for pol, c in curves.items()},
              "per_seed": {pol: [{f"{b:g}": x for b, x in s.items()} for s in v] for pol, v in per.items()}}
    result["markdown"] = markdown(result)
    print(result["markdown"])
    print(f"[tail-frontier] wrote {run.write(args.name, result, args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
