"""Typed configuration: one dataclass per stage, every field documented, rules declared once.

    base.py          the machinery: Config, doc(rules), require, YAML/JSON loading, deep_merge
    common.py        ModelConfig, TrainConfig, PromptConfig (shared by every stage), GenerationConfig
    data.py          DataConfig
    stages.py        PretrainConfig, SFTConfig, LPOConfig
    reward_model.py  PairsConfig, RewardConfig
    ppo.py           PPOConfig and its per-role sub-configs
    serve.py         ServeConfig

Everything is re-exported here (``from rlhf_ray.config import SFTConfig``). Only stdlib +
yaml: importing this package never pulls torch or Ray.
"""
from rlhf_ray.config.base import (Config, ConfigError, check_fields, choices, deep_merge, doc, read_mapping,
                                  require)
from rlhf_ray.config.common import ActorResources, GenerationConfig, ModelConfig, PromptConfig, TrainConfig
from rlhf_ray.config.data import DataConfig
from rlhf_ray.config.ppo import (PPOConfig, PPOCriticConfig, PPOPolicyConfig, PPOReferenceConfig, PPORewardConfig,
                                 PPORolloutConfig)
from rlhf_ray.config.reward_model import PAIR_FAMILIES, PairsConfig, RewardConfig
from rlhf_ray.config.serve import ServeConfig
from rlhf_ray.config.stages import LPO_LOSSES, LPO_SAMPLERS, LPOConfig, PretrainConfig, SFTConfig

__all__ = [
    "ActorResources", "Config", "ConfigError", "DataConfig", "GenerationConfig", "LPOConfig", "LPO_LOSSES",
    "LPO_SAMPLERS", "ModelConfig", "PAIR_FAMILIES", "PPOConfig", "PPOCriticConfig", "PPOPolicyConfig",
    "PPOReferenceConfig", "PPORewardConfig", "PPORolloutConfig", "PairsConfig", "PretrainConfig", "PromptConfig",
    "RewardConfig", "SFTConfig", "ServeConfig", "TrainConfig", "check_fields", "choices", "deep_merge", "doc",
    "read_mapping", "require",
]
