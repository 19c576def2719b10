"""Shared settings of the PPO tests (no tests here): a tiny PPO run on the tiny SFT fixture."""
from rlhf_ray.config import deep_merge as merge
from rlhf_ray.config import PPOConfig

TINY_PPO = {
    "page_size": 5, "max_history": 20, "iterations": 2, "rollout_batch_size": 16, "ppo_epochs": 2,
    "eval_every": 0, "eval_users": 20, "save_every": 0, "seed": 1,
    "policy": {"train": {"batch_size": 8, "lr": 1e-3}},
    "critic": {"train": {"batch_size": 8, "lr": 1e-3}},
}


def ppo_config(**over) -> PPOConfig:
    """TINY_PPO with ``over`` deep-merged on top."""
    return PPOConfig.from_dict(merge(TINY_PPO, over))
