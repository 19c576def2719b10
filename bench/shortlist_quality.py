"""What a decoding shortlist costs in page quality: trained rankers' validation pages, whole catalogue
against ``GenerationConfig.shortlist`` = M.

    python bench/shortlist_quality.py --work runs/bench/loo --seeds 0,1,2 [--policies sft,ppo,lpo]

With a shortlist, a page's slots after the first are chosen among the M items its first slot scores
highest instead of the whole catalogue (:mod:`rlhf_ray.generation`). ``bench/catalogue_scaling.py``
measures what that saves as the catalogue grows (with fresh weights); this bench measures what it
changes on trained checkpoints, the protocol table's runs (``WORK/seed{s}/{policy}``): per policy
and M, the share of validation pages identical to whole-catalogue decoding, and page NDCG@10, page
Recall@10 and page ILD@10 with the paired 95% bootstrap interval of the difference to the policy's
whole-catalogue pages and to SFT's pages at the same M (per-user values averaged over seeds first). MovieLens-100K's catalogue is small (about 1.6k items),
so M is also given as a share of it: a shop of 1M items with M = 256 shortlists 0.03%.

Validation only (the test split is never read). Writes ``bench/results/shortlist_quality.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import protocol_runs  # noqa: E402
from provenance import Run  # noqa: E402

SHORTLISTS = (0, 10, 20, 40, 80, 160)
METRICS = ("page_ndcg@10", "page_recall@10", "page_ild@10")


def seed_pages(ckpt: Path, data: Path, shortlists) -> dict:
    """Per M: the validation evaluation's per-user page metrics and pages of one checkpoint."""
    from rlhf_ray.checkpoint import load_checkpoint, prompt_of
    from rlhf_ray.config import GenerationConfig
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import evaluate_full

    ck = load_checkpoint(ckpt)
    ck.model.eval()
    prepared = load_prepared(data)
    base = GenerationConfig(**{**prompt_of(ck.manifest), "page_size": 10}, strategy="greedy")  # the metrics' depth
    out = {}
    for m in shortlists:
        ev = evaluate_full(ck.model, ck.vocab, prepared, "valid", base.replace(shortlist=m), ks=(10,))
        out[m] = {"pages": [tuple(p) for p in ev.per_user["page"]],
                  **{k: ev.per_user[k].to_numpy(dtype=float) for k in METRICS}}
    return out


def _pooled(per_seed: list[dict], m: int, k: str) -> np.ndarray:
    """Per-user values of metric ``k`` at shortlist ``m``, averaged over seeds."""
    return np.nanmean([s[m][k] for s in per_seed], axis=0)


def summarise(per_seed: list[dict], shortlists, n_items: int, sft: list[dict] | None) -> list[dict]:
    """One row per M, pooled over seeds (per-user means): against the same policy's whole-catalogue
    pages, and (``sft``: SFT's per-seed pages) against SFT's pages at the same M."""
    from rlhf_ray.stats import paired_diff

    rows = []
    for m in shortlists:
        row = {"shortlist": m, "share_of_catalogue": (m / n_items) if m else 1.0,
               "same_pages": float(np.mean([np.mean([a == b for a, b in zip(s[m]["pages"], s[0]["pages"])])
                                            for s in per_seed]))}
        for k in METRICS:
            now = _pooled(per_seed, m, k)
            row[k] = float(np.nanmean(now))
            row[f"{k}_vs_whole"] = paired_diff(now, _pooled(per_seed, 0, k))
            if sft is not None:
                row[f"{k}_vs_sft"] = paired_diff(now, _pooled(sft, m, k))
        rows.append(row)
    return rows


def _cell(d: dict) -> str:
    return f"x{d['rel']:.3f} [{d['lo']:+.4f}, {d['hi']:+.4f}] {d['verdict'].replace(' interval', '')}"


def markdown(result: dict) -> str:
    lines = ["| policy | shortlist M | share of catalogue | pages equal to whole-catalogue | "
             + " | ".join(f"{k} | vs whole catalogue | vs SFT at this M" for k in METRICS) + " |",
             "|---|---|---|---|" + "---|---|---|" * len(METRICS)]
    for pol, rows in result["rows"].items():
        for r in rows:
            cells = []
            for k in METRICS:
                vs_sft = r.get(f"{k}_vs_sft")
                cells += [f"{r[k]:.4f}", _cell(r[f"{k}_vs_whole"]) if r["shortlist"] else "",
                          _cell(vs_sft) if vs_sft and pol != "sft" else ""]
            m = "whole catalogue" if not r["shortlist"] else str(r["shortlist"])
            lines.append(f"| {pol} | {m} | {100 * r['share_of_catalogue']:.1f}% | {100 * r['same_pages']:.1f}% | "
                         + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Validation, seeds {result['seeds']} ({result['users']} users, {result['n_items']} items). Cells: "
                 "mean over users of the per-user means over seeds; ratio of means with the paired 95% bootstrap "
                 "interval of the difference ('within': it holds 0) against the same policy's whole-catalogue pages "
                 "and against SFT's pages at the same M.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = protocol_runs.parser(__doc__, "sft,ppo,lpo", "checkpoints under each seed's run, comma list (with sft: "
                             "every other policy is also compared with SFT at the same M)", "shortlist_quality")
    p.add_argument("--shortlists", default=",".join(map(str, SHORTLISTS)), help="M values, comma list (0 added)")
    args = p.parse_args(argv)
    work, seeds, policies = protocol_runs.checkpoints(p, args)
    shortlists = sorted({0, *(int(m) for m in args.shortlists.split(",") if m.strip())})
    run = Run(inputs={f"seed{s}/{pol}": work / f"seed{s}" / pol for s in seeds for pol in policies})
    per = {pol: [] for pol in policies}
    for s in seeds:
        for pol in policies:
            per[pol].append(seed_pages(work / f"seed{s}" / pol, work / f"seed{s}" / "data", shortlists))
            print(f"[shortlist] seed {s} {pol}: " + "  ".join(
                f"M={m} page_ndcg@10 {np.nanmean(v['page_ndcg@10']):.4f}" for m, v in per[pol][-1].items()),
                flush=True)
    from rlhf_ray.data.prepared import load_prepared

    n_items = int(load_prepared(work / f"seed{seeds[0]}" / "data").n_items)
    sft = per.get("sft")
    result = {"what": "validation page quality with a decoding shortlist against whole-catalogue pages and SFT",
              "policies": policies, "seeds": seeds, "n_items": n_items,
              "users": len(per[policies[0]][0][0]["pages"]), "shortlists": shortlists,
              "rows": {pol: summarise(v, shortlists, n_items, sft) for pol, v in per.items()}}
    result["markdown"] = markdown(result)
    print(result["markdown"])
    print(f"[shortlist] wrote {run.write(args.name, result, args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
