"""PPO as a registered stage: how ``rlhf-ray ppo``, the pipeline, Tune trials and cluster jobs
find it, declared once here, in the package that holds its actors.

    rlhf-ray ppo --sft runs/sft --reward runs/reward --data data/ml-100k --out runs/ppo [--resume]

Writes, like every stage, its checkpoint to ``OUT`` (stage ``ppo``: the final policy, in the
common format) and its logs to ``OUT.logs`` (TensorBoard + ``metrics.jsonl``, and Ray Train /
Tune reports when run under one); its resumable states go to ``OUT.state``. On a multi-node
cluster the actors read --sft/--reward/--data and write ``OUT.state`` themselves: those are
locations every node reaches (a shared file system path, or a storage URI such as s3://,
:mod:`rlhf_ray.storage`), so a run resumed on another node finds everything.

How it is registered: ``pyproject.toml`` names :data:`PPO` under the ``rlhf_ray.stages``
entry-point group, and :mod:`rlhf_ray.stages.registry` loads that group on first lookup.
So ``rlhf_ray`` (pipeline, CLI, launcher) never imports ``actors``: the dependency points
one way, from here to ``rlhf_ray``, and PPO uses no code path the other stages do not.
This module imports nothing heavy; the orchestrator (Ray, torch) is imported when PPO runs.
"""
from __future__ import annotations

import argparse

from rlhf_ray.config import PPOConfig
from rlhf_ray.stages.registry import POLICY, Stage


def run(cfg: PPOConfig, data_dir: str, out_dir: str, init: str | None = None, *, reward: str,
        address: str | None = None, resume: bool | str = False, num_cpus: int | None = None) -> dict:
    """Train PPO from the policy ``init`` with the reward ``reward`` (a checkpoint dir or "rule");
    returns the final metrics (``checkpoint``: ``out_dir``)."""
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.rayutil import init_ray

    orch = PPOOrchestrator(cfg, sft=init, reward=reward, data=data_dir, out=out_dir)
    init_ray(address, num_cpus=None if address else num_cpus)
    return orch.run(resume=resume)


# read afresh when the roles start, so a run resumed from another run's state (PBT) may change them
ADOPTABLE = ("kl_coef", "reward.alpha", "policy.entropy_coef", "rollout.temperature")


def bundles(cfg: PPOConfig) -> list[dict]:
    """The roles' placement bundles (a sweep trial reserves them beside its own)."""
    from actors.placement import trial_bundles

    return trial_bundles(cfg)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "Examples: --reward rule (no reward model); --policy.ranks 2 --policy.train.zero-stage 3."


PPO = Stage(
    "ppo", PPOConfig, run, launcher=run,
    help="stage 4: PPO with the mixed-grained reward on Ray actors",
    description="PPO (PageLLM) from an SFT checkpoint: rollout, reward, reference, policy and critic actors on "
                "Ray; the final policy is the checkpoint at OUT, resumable states are kept in OUT.state.",
    starts_from=POLICY, init_required=True, init_flag="--sft",
    init_help="SFT checkpoint: initial policy, reference and critic",
    needs=("reward",), input_help={"reward": "reward checkpoint (rlhf-ray reward), or 'rule' for the rule-based reward"},
    resumable=True, add_arguments=_arguments, bundles=bundles, adoptable=ADOPTABLE,
    smoke={"iterations": 2, "rollout_batch_size": 8, "eval_every": 1, "eval_users": 20, "save_every": 1,
           "policy": {"train": {"batch_size": 8}}, "critic": {"train": {"batch_size": 8}}},
)
