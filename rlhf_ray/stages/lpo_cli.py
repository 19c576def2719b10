"""``rlhf-ray lpo``: listwise preference alignment (LPO4Rec) of an SFT checkpoint.

    rlhf-ray lpo --sft runs/sft --data data/ml-100k --out runs/lpo
    rlhf-ray lpo --sft runs/sft --data data/ml-100k --out runs/dpo --loss dpo
    rlhf-ray lpo --sft runs/sft --data data/ml-100k --out runs/lpo --sampler uniform --reweight-strength 0
    rlhf-ray lpo ... --train.num-workers 2 --train.zero-stage 2      # Ray Train + DeepSpeed ZeRO-2
"""
from __future__ import annotations

import argparse

from rlhf_ray.config import LPOConfig
from rlhf_ray.stages.cli import _common, _train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lpo", help="LPO4Rec listwise alignment for tail items (or DPO / S-DPO baselines)",
        description="Align an SFT checkpoint with listwise preference optimisation: the true next item "
                    "against N negatives drawn by Gumbel-top-k sampling (temperature --tau) from the "
                    "--pool, with examples reweighted towards tail targets. --loss dpo|sdpo give the "
                    "reference-model baselines.")
    p.add_argument("--sft", dest="init", required=True, metavar="DIR", help="SFT checkpoint to start from")
    _common(p, LPOConfig)
    p.set_defaults(func=_train("lpo", LPOConfig))
