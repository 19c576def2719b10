"""The stage registry, the pipeline's stage-agnostic plan and shared prompt, the config rules
declared in field metadata, and the one sharding helper: no Ray, no training."""
import numpy as np
import pytest

from rlhf_ray.config import ConfigError, LPOConfig, PairsConfig, PPOConfig, SFTConfig, TrainConfig
from rlhf_ray.stages import registry


def test_every_stage_is_registered_once_ppo_through_its_entry_point():
    assert {"pretrain", "sft", "reward", "ppo", "lpo"} <= set(registry.names())
    ppo = registry.get("ppo")
    assert ppo.config is PPOConfig and ppo.run.__module__ == "actors.stage"  # declared in actors, found here
    assert ppo.needs == ("reward",) and ppo.resumable and ppo.launcher is not None
    assert registry.get("reward").starts_from == "sft" and not registry.get("reward").policy
    with pytest.raises(ConfigError, match="entry-point"):
        registry.get("distill")
    with pytest.raises(ValueError, match="twice"):
        registry.register(registry.Stage("sft", SFTConfig, lambda *a: {}, help="another sft"))


def test_pipeline_plan_and_shared_prompt(tmp_path):
    from rlhf_ray.pipeline import PipelineConfig, load_pipeline_config

    assert PipelineConfig.from_dict({"order": ["lpo", "ppo"]}).plan() == ["pretrain", "sft", "reward", "lpo", "ppo"]
    with pytest.raises(ConfigError, match="order"):
        PipelineConfig.from_dict({"order": ["ppo", "distill"]})
    f = tmp_path / "p.yaml"
    f.write_text("prompt: {max_history: 30, page_size: 8}\ngeneration: {page_size: 20}\nsft: {window_stride: 5}\n")
    cfgs = load_pipeline_config(f)
    for name in ("sft", "reward", "ppo", "lpo", "generation"):
        assert cfgs[name].max_history == 30, name
    assert cfgs["sft"].page_size == cfgs["ppo"].page_size == 8 and cfgs["generation"].page_size == 20
    assert cfgs["pretrain"].max_history == 20  # the rating prompt is not a page prompt
    f.write_text("prompt: {max_history: 30}\nreward: {max_history: 20}\n")
    with pytest.raises(ConfigError, match="reward.max_history = 20 differs from prompt.max_history = 30"):
        load_pipeline_config(f)
    f.write_text("sft: {max_history: 20}\n")  # a section alone on its own length: refused at load, not after SFT
    with pytest.raises(ConfigError, match=r"sft.max_history = 20 differs from prompt.max_history = 50 \(its default"):
        load_pipeline_config(f)
    f.write_text("sft: {max_history: 50}\n")  # equal to the shared default: fine
    assert load_pipeline_config(f)["lpo"].max_history == 50
    smoke = load_pipeline_config(None, smoke=True)  # every stage's own few-step settings
    assert smoke["ppo"].iterations == registry.get("ppo").smoke["iterations"] and smoke["lpo"].n_negatives == 4


def test_rules_live_in_field_metadata_and_types():
    with pytest.raises(ConfigError, match=r"TrainConfig.warmup_ratio: must be in \[0, 1\), got 1.5"):
        TrainConfig.from_dict({"warmup_ratio": 1.5})
    with pytest.raises(ConfigError, match="lr: must be > 0, got 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="'soft' is not one of"):
        LPOConfig.from_dict({"loss": "soft"})
    with pytest.raises(ConfigError, match="families: 'novelty' is not one of"):  # from YAML / flags
        PairsConfig.from_dict({"families": ["relevance", "novelty"]})
    with pytest.raises(ConfigError, match="families: must be a subset"):  # built in Python
        PairsConfig(families=["relevance", "novelty"])
    assert SFTConfig(max_history=7).prompt.to_dict() == {"max_history": 7, "page_size": 10, "exclude_seen": True}


def test_lpo_losses_declared_once():
    from rlhf_ray.config import LPO_LOSSES
    from rlhf_ray.stages.lpo import PREFERENCE_LOSSES

    assert set(PREFERENCE_LOSSES) == set(LPO_LOSSES)


@pytest.mark.parametrize("n,per_rank,world", [(10, 3, 2), (7, 2, 3), (12, 4, 3)])
def test_shard_gives_every_rank_equal_disjoint_rows_per_step(n, per_rank, world):
    from rlhf_ray.seeding import rng, seed, shard

    order = rng(0, "order", 1).permutation(n)
    steps = [[shard(order, i, per_rank, r, world) for r in range(world)] for i in range(3)]
    for ranks in steps:
        assert all(len(x) == per_rank for x in ranks)
        rows = np.concatenate(ranks)
        assert len(set(rows.tolist())) == min(len(rows), n)  # no row twice within a step (while n allows)
    first_pass = np.concatenate([x for ranks in steps for x in ranks])[:n]
    assert sorted(first_pass.tolist()) == list(range(n))  # an epoch visits every row before repeating
    assert seed(0, "order", 1) != seed(0, "order", 2) != seed(0, "pages", 1)
    assert seed(3, "rollout", 4, 1) == seed(3, "rollout", 4, 1)
