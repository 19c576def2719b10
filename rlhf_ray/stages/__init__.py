"""The training stages of rlhf_ray, one module each, and their declarations for the registry.

    pretrain.py  sft.py  reward_model.py  lpo.py    one train loop spec each (run(cfg, data, out, init))
    loop.py      the one training loop (fit) they share      launch.py  in-process or Ray Train
    common.py    open data, start a policy, export a checkpoint
    runlog.py    TensorBoard + metrics.jsonl + Ray Train / Tune reporting, for every stage (PPO too)
    registry.py  the Stage record and lookup        cli.py  one subcommand per registered stage

``BUILTIN`` declares this package's stages. The run functions import their module on
first use, so listing the stages (the CLI's ``--help``) imports no torch. PPO lives in
``actors`` and registers through an entry point (:mod:`rlhf_ray.stages.registry`).
"""
from __future__ import annotations

from rlhf_ray.config import LPOConfig, PretrainConfig, RewardConfig, SFTConfig
from rlhf_ray.stages.registry import POLICY, Stage

_TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
_FEW_STEPS = {"epochs": 1, "max_steps": 5}


def _pretrain(cfg, data_dir, out_dir, init=None):
    from rlhf_ray.stages.pretrain import run

    return run(cfg, data_dir, out_dir, init)


def _sft(cfg, data_dir, out_dir, init=None):
    from rlhf_ray.stages.sft import run

    return run(cfg, data_dir, out_dir, init)


def _reward(cfg, data_dir, out_dir, init=None):
    from rlhf_ray.stages.reward_model import run

    return run(cfg, data_dir, out_dir, init)


def _lpo(cfg, data_dir, out_dir, init=None):
    from rlhf_ray.stages.lpo import run

    return run(cfg, data_dir, out_dir, init)


BUILTIN = (
    Stage("pretrain", PretrainConfig, _pretrain, help="stage 1: rating + meta-text pre-training",
          description="Pre-train the ranker on rating prediction and item meta text.",
          starts_from=None, evaluate=False, smoke={"model": _TINY, "train": _FEW_STEPS}),
    Stage("sft", SFTConfig, _sft, help="stage 2: SFT on ground-truth ranked pages",
          description="Supervised fine-tuning on ranked pages + next-item prediction.",
          init_help="checkpoint to start from (normally the pretrain output); default: a fresh model",
          smoke={"model": _TINY, "train": _FEW_STEPS}),
    Stage("reward", RewardConfig, _reward, help="mixed-grained reward model (PageLLM) on synthesised page pairs",
          description="Bradley-Terry on (golden page, perturbed page) pairs: page head + item head.",
          starts_from="sft", init_flag="--sft",
          init_help="SFT checkpoint to initialise the backbone from (default: a fresh model)", policy=False, evaluate=False, smoke={"train": _FEW_STEPS}),
    Stage("lpo", LPOConfig, _lpo, help="LPO4Rec listwise alignment for tail items (or DPO / S-DPO baselines)",
          description="Align an SFT checkpoint with listwise preference optimisation: the true next item "
                      "against N negatives drawn by Gumbel-top-k sampling (temperature --tau) from the "
                      "--pool, with examples reweighted towards tail targets. --loss dpo|sdpo give the "
                      "reference-model baselines.",
          starts_from=POLICY, init_required=True, init_flag="--sft", init_help="SFT checkpoint to start from",
          smoke={"train": _FEW_STEPS, "n_negatives": 4}),
)
