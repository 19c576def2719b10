"""SFT ablations on ml-100k leave-one-out: what the ranker's inputs and start buy.

    python bench/sft_ablation.py --seeds 0,1,2 [--variants user_tokens,page_order_gt,...]
    python bench/sft_ablation.py --seeds 0,1,2 --variants dropout_0.3,history_20 --peers runs/peers/loo
    python bench/sft_ablation.py --smoke --seeds 0      # synthetic data, minutes: the plumbing

Every variant is an SFT run with the shipped config's ``sft`` section (the same cosine schedule,
best validation epoch kept) that differs from the seed's SFT (the protocol table's,
``runs/bench/loo/seed{s}/sft``) in one thing (:data:`VARIANTS`):

* ``user_tokens``: every prompt starts with the user's own token (the model learns a row per
  user); needs its own pre-training run, since the vocabulary is made there;
* ``page_order_gt``: SFT's ranked-page targets are the good page of ``rlhf_ray.data.pages``
  (positives of the next 30 interactions by rating, then recency, at most 3 per category)
  instead of the next positives in time order;
* ``no_pretrain``: SFT from a freshly initialised model of the same size (no meta-information
  pre-training);
* ``pretrain_40steps``: SFT from a 40-step pre-training warm-up (shipped until a93661f) instead
  of the shipped pre-training of up to 6 epochs (early stopping on the rating head's validation
  RMSE, patience 2; the variant ``pretrain_6ep`` of the table that chose it);
* ``epochs_15``, ``epochs_36``, ``epochs_48``: the cosine learning-rate schedule spans 15, 36 or
  48 epochs instead of the shipped 24 (``bench/sft_select.py`` compared 16 and 24 on seed 0's
  validation; 24 won, its best epoch the 23rd, so a longer schedule was the open question);
* ``dropout_0.2``, ``dropout_0.3``: the model's dropout (residuals, embeddings, attention) at 0.2
  or 0.3 instead of 0.1, in its own pre-training (the model is built there) and so in SFT: the
  best peer on leave-one-out, GRU4Rec, was tuned to dropout 0.3, and ml-100k's 943 users are
  few for 0.7M weights;
* ``ema_0.99``, ``label_smoothing_0.1``: the two regularisers not yet tried against the peer gap:
  an exponential moving average of the weights (``train.ema_decay``; validation picks the best
  epoch of the average) and label smoothing of the next-item loss (``sft.label_smoothing``);
* ``stride_10``: next-item windows slid by 10 items instead of the shipped 20 (chosen at 12406e8
  to fit 8 epochs on this box, never compared on validation since): each epoch sees twice the
  windows, each target in more contexts;
* ``rank_weight_0.5``, ``rank_weight_0.25``, ``rank_weight_0.1``, ``rank_weight_0``: the ranked-page
  loss (``sft.rank_weight``) at a half, a quarter or a tenth of its weight, or off, beside the
  next-item loss, which the peers train alone. The full ranking (the leave-one-out headline) is the
  first slot's, read at the ``<page>`` token, which only the page loss trains: with it off, that
  position is untrained and the ranking falls apart;
* ``history_20``: SFT's prompts (and so its evaluation and every later stage) hold the 20 most
  recent history items instead of 50: both sequential peers chose a 20-item history over 50 on
  leave-one-out validation (``bench/peers_bench.py``'s grids).

With ``--peers DIR`` (the top-100 lists of ``bench/peers_bench.py`` on the same data, e.g.
``runs/peers/loo``) every row is also compared with the best peer on test NDCG@10, paired over
users, as ``bench/protocol_table.py`` compares SFT: the issue's target is SFT at least the best peer.

Test is read once per checkpoint; the table (same cells and paired comparisons as
``bench/lpo_ablation.py``, against the seed's SFT) goes to ``bench/results/sft_ablation.json``.
Variants of one seed can be trained in parallel processes (``--seeds 1``, ``--seeds 2``); a
later run over all seeds reuses every checkpoint whose manifest records the same config.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from lpo_ablation import run_ablation, same_config  # noqa: E402

#: name -> (what it tests, changes to the pretrain section or None = no pre-training, changes to the sft section)
VARIANTS: dict[str, tuple[str, dict | None, dict]] = {
    "user_tokens": ("a token per user at the start of every prompt (pre-training and SFT)",
                    {"model": {"user_tokens": True}}, {}),
    "page_order_gt": ("ranked pages = the good page (next positives by rating, at most 3 per category)",
                      {}, {"page_order": "ground_truth"}),
    "no_pretrain": ("no pre-training: SFT from a fresh model of the same size", None, {}),
    "pretrain_40steps": ("a 40-step pre-training warm-up (shipped until a93661f) instead of up to 6 epochs",
                         {"train": {"epochs": 1, "max_steps": 40, "patience": 0}}, {}),
    "epochs_15": ("a 15-epoch cosine schedule instead of the shipped 24", {}, {"train": {"epochs": 15}}),
    "epochs_36": ("a 36-epoch cosine schedule instead of the shipped 24", {}, {"train": {"epochs": 36}}),
    "epochs_48": ("a 48-epoch cosine schedule instead of the shipped 24", {}, {"train": {"epochs": 48}}),
    "dropout_0.2": ("dropout 0.2 instead of 0.1 (pre-training and SFT)", {"model": {"dropout": 0.2}}, {}),
    "dropout_0.3": ("dropout 0.3 instead of 0.1 (pre-training and SFT; GRU4Rec's tuned 0.3)",
                    {"model": {"dropout": 0.3}}, {}),
    "history_20": ("prompts of the 20 most recent items instead of 50 (GRU4Rec's and SASRec's selected "
                   "MAX_ITEM_LIST_LENGTH)", {}, {"max_history": 20}),
    "ema_0.99": ("a moving average of the weights validated and exported instead of the trained weights "
                 "(decay min(0.99, (1+n)/(10+n)) at step n: spanning about n/9 steps until step 890, "
                 "then 100, 1.6 of the 62-step epochs)", {}, {"train": {"ema_decay": 0.99}}),
    "label_smoothing_0.1": ("label smoothing 0.1 on the next-item loss", {}, {"label_smoothing": 0.1}),
    "stride_10": ("next-item windows every 10 items instead of 20 (twice the windows per epoch; the "
                  "field's default)", {}, {"window_stride": 10}),
    "rank_weight_0.5": ("the ranked-page loss at half weight (sft.rank_weight 0.5 beside the next-item loss's 1)",
                        {}, {"rank_weight": 0.5}),
    "rank_weight_0.25": ("the ranked-page loss at a quarter weight (sft.rank_weight 0.25)", {}, {"rank_weight": 0.25}),
    "rank_weight_0.1": ("the ranked-page loss at a tenth of its weight (sft.rank_weight 0.1)", {}, {"rank_weight": 0.1}),
    "rank_weight_0": ("the next-item loss alone (sft.rank_weight 0: the peers' objective; the <page> position, "
                      "where the ranking is read, is then never trained)", {}, {"rank_weight": 0.0}),
}


def variant_configs(raw: dict, name: str, smoke: bool) -> dict:
    """The pipeline configs of variant ``name`` from the seed's pipeline config ``raw``. A history
    length is the pipeline's ``prompt`` (one for every stage), so ``history_20`` sets it there."""
    from rlhf_ray.config.base import deep_merge
    from rlhf_ray.pipeline import load_pipeline_raw

    _, pre_changes, sft_changes = VARIANTS[name]
    quiet = {"train": {"progress": False, "tensorboard": False}}
    if "max_history" in sft_changes:  # every prompt section, not pre-training's rating prompt
        raw.setdefault("prompt", {})["max_history"] = sft_changes["max_history"]
        for sec, body in raw.items():
            if sec not in ("pretrain", "data", "prompt") and isinstance(body, dict) and "max_history" in body:
                body["max_history"] = sft_changes["max_history"]
    raw["sft"] = deep_merge(deep_merge(raw.get("sft") or {}, sft_changes), quiet)
    if pre_changes:
        raw["pretrain"] = deep_merge(deep_merge(raw.get("pretrain") or {}, pre_changes), quiet)
    if smoke and name == "pretrain_40steps":
        raw["pretrain"]["train"].update(max_steps=4)
    if pre_changes is None:  # the pre-trained model's size, built fresh
        raw["sft"]["model"] = deep_merge((raw.get("pretrain") or {}).get("model") or {},
                                         raw["sft"].get("model") or {})
    return load_pipeline_raw(raw)


def train_variant(run_dir: Path, name: str, seed: int, smoke: bool) -> Path:
    """Train (or reuse) one variant's pre-training (when it has its own) and SFT; the SFT dir."""
    from rlhf_ray.stages.launch import launch

    cfgs = variant_configs(yaml.safe_load((run_dir / "config.yaml").read_text()), name, smoke)
    _, pre_changes, _ = VARIANTS[name]
    out = run_dir / "sft_ablation" / name
    init = None
    if pre_changes == {}:
        init = run_dir / "pretrain"  # the seed's own pre-training
    elif pre_changes:
        init = run_dir / "sft_ablation" / f"{name}-pretrain"
        if not same_config(init, cfgs["pretrain"]):
            launch("pretrain", cfgs["pretrain"], str(run_dir / "data"), str(init))
    if same_config(out, cfgs["sft"]) and (init is None or json.loads((out / "manifest.json").read_text())
                                    .get("parent", {}).get("id") == json.loads((init / "manifest.json").read_text())["id"]):
        return out
    t = time.time()
    launch("sft", cfgs["sft"], str(run_dir / "data"), str(out), init=None if init is None else str(init))
    print(f"[sft-ablation] seed {seed} {name}: trained in {time.time() - t:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    return run_ablation(argv, __doc__, "sft_ablation", {k: v[0] for k, v in VARIANTS.items()}, train_variant,
                        "the seed's SFT (the --config's pretrain and sft sections)")


if __name__ == "__main__":
    sys.exit(main())
