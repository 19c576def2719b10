"""The whole job in one command:

    data -> pretrain -> sft -> reward -> ppo -> lpo -> eval      (or lpo before ppo)

    rlhf-ray pipeline --config rlhf_ray/configs/ml-100k.yaml --out runs/ml-100k

One YAML file holds a section per stage (``data``, ``pretrain``, ``sft``, ``reward``,
``ppo``, ``lpo``, ``generation``) plus ``pipeline`` (which stages, in which order).
Each stage writes its own checkpoint under ``--out``; each alignment stage starts from
the policy the previous one produced. A stage whose checkpoint is already complete for
the same config and data is skipped, so a killed pipeline resumes where it stopped.
``eval`` evaluates every policy checkpoint on the test split and writes one table.
``--smoke`` shrinks every stage to a few steps on a small synthetic dataset.

This module is an entry point (like :mod:`rlhf_ray.cli`): it is the one place in
``rlhf_ray`` that reaches the Ray actor layer (``actors``), and only to run PPO.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from rlhf_ray.checkpoint import write_json_atomic
from rlhf_ray.config import (Config, ConfigError, DataConfig, GenerationConfig, LPOConfig, PPOConfig,
                             PretrainConfig, RewardConfig, SFTConfig, deep_merge, doc, read_mapping)
from rlhf_ray.errors import CheckpointError

STAGES = ("data", "pretrain", "sft", "reward", "ppo", "lpo", "eval")
POLICY_STAGES = ("sft", "ppo", "lpo")


@dataclass
class PipelineConfig(Config):
    """Which stages the pipeline runs, and the order of the two alignment stages."""

    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata=doc(
        f"stages to run, a subset of {list(STAGES)}"))
    order: list[str] = field(default_factory=lambda: ["ppo", "lpo"], metadata=doc(
        "alignment order: [ppo, lpo] (LPO refines the PPO policy) or [lpo, ppo]"))
    eval_users: int = field(default=0, metadata=doc("evaluate on at most N test users (0 = all)"))

    def __post_init__(self) -> None:
        bad = sorted(set(self.stages) - set(STAGES))
        if bad:
            raise ConfigError(f"stages: unknown {bad}; valid: {list(STAGES)}")
        if sorted(self.order) != ["lpo", "ppo"]:
            raise ConfigError(f"order: must be [ppo, lpo] or [lpo, ppo], got {self.order}")


SECTIONS: dict[str, type[Config]] = {
    "pipeline": PipelineConfig, "data": DataConfig, "pretrain": PretrainConfig, "sft": SFTConfig,
    "reward": RewardConfig, "ppo": PPOConfig, "lpo": LPOConfig, "generation": GenerationConfig,
}

_TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
SMOKE = {
    "data": {"dataset": "synthetic", "synthetic_users": 120, "synthetic_items": 150},
    "pretrain": {"model": _TINY, "train": {"epochs": 1, "max_steps": 5}},
    "sft": {"model": _TINY, "train": {"epochs": 1, "max_steps": 5}},
    "reward": {"train": {"epochs": 1, "max_steps": 5}},
    "ppo": {"iterations": 2, "rollout_batch_size": 8, "eval_every": 1, "eval_users": 20, "save_every": 1,
            "policy": {"train": {"batch_size": 8}}, "critic": {"train": {"batch_size": 8}}},
    "lpo": {"train": {"epochs": 1, "max_steps": 5}, "n_negatives": 4},
}


def default_config_path(dataset: str = "ml-100k") -> Path:
    return Path(str(resources.files("rlhf_ray") / "configs" / f"{dataset}.yaml"))


def load_pipeline_config(path: str | Path | None, smoke: bool = False) -> dict[str, Config]:
    raw = read_mapping(path) if path else {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid: {sorted(SECTIONS)}")
    if smoke:
        raw = deep_merge(raw, SMOKE)
    return {name: cls.from_dict(raw.get(name) or {}, source=f"{path} [{name}]" if path else "")
            for name, cls in SECTIONS.items()}


def _done(ckpt: Path, cfg: dict, fingerprint: str, init: str | None) -> bool:
    """A stage is done when its checkpoint verifies and was made from the same config, data and
    starting checkpoint (so retraining an earlier stage retrains everything after it)."""
    import json

    from rlhf_ray.checkpoint import MANIFEST, verify_checkpoint

    try:
        m = verify_checkpoint(ckpt)
    except CheckpointError:
        return False
    if m.get("config") != cfg or m.get("data_fingerprint") != fingerprint:
        return False
    if init is None:
        return True
    if "ppo" in m:  # PPO records the path of the policy it started from
        return m["ppo"].get("sft") == init
    parent_id = json.loads((Path(init) / MANIFEST).read_text()).get("id") if (Path(init) / MANIFEST).is_file() else None
    return (m.get("parent") or {}).get("id") == parent_id


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def _ppo(cfg: PPOConfig, sft: str, reward: str, data: str, out: Path, address: str | None) -> dict:
    from actors.orchestrator import PPOOrchestrator
    from rlhf_ray.rayutil import init_ray

    init_ray(address)
    metrics = PPOOrchestrator(cfg, sft=sft, reward=reward, data=data, out=str(out)).run(resume=True)
    return {**metrics, "checkpoint": str(out / "policy")}


def run_pipeline(cfgs: dict[str, Config], out: str | Path, stages=None, address: str | None = None,
                 force: bool = False) -> dict:
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.stages.launch import launch

    pipe: PipelineConfig = cfgs["pipeline"]
    stages = tuple(stages or pipe.stages)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"stages": {}, "order": pipe.order}
    t0 = time.time()
    data_dir = out / "data"
    if "data" in stages:
        t = time.time()
        dcfg: DataConfig = cfgs["data"]
        if dcfg.dataset == "ml-100k" and dcfg.path is None:
            from rlhf_ray.data.fetch import fetch

            fetch("ml-100k")
        from rlhf_ray.data.prepare import prepare

        prepare(dcfg, data_dir)
        summary["stages"]["data"] = {"seconds": time.time() - t}
    prepared = load_prepared(data_dir)
    fp = prepared.fingerprint
    # where each stage's checkpoint lives, and what it starts from
    ckpt = {"pretrain": out / "pretrain", "sft": out / "sft", "reward": out / "reward",
            "ppo": out / "ppo" / "policy", "lpo": out / "lpo"}
    policy = str(ckpt["pretrain"]) if (ckpt["pretrain"] / "manifest.json").is_file() else None
    plan = ["pretrain", "sft", "reward", *pipe.order]
    policies: dict[str, str] = {}
    for stage in plan:
        init = {"pretrain": None, "reward": str(ckpt["sft"])}.get(stage, policy)
        if stage not in stages:
            if stage != "reward" and (ckpt[stage] / "manifest.json").is_file():
                policy = str(ckpt[stage])
                if stage in POLICY_STAGES:
                    policies[stage] = policy
            continue
        cfg = cfgs[stage]
        t = time.time()
        if not force and _done(ckpt[stage], cfg.to_dict(), fp, init):
            print(f"[pipeline] {stage}: complete checkpoint at {ckpt[stage]}, skipped")
            metrics = {"skipped": True}
        elif stage == "ppo":
            print(f"[pipeline] ppo -> {out / 'ppo'} (policy from {init})")
            metrics = _ppo(cfg, init, str(ckpt["reward"]), str(data_dir), out / "ppo", address)
        else:
            print(f"[pipeline] {stage} -> {ckpt[stage]}" + (f" (from {init})" if init else ""))
            metrics = launch(stage, cfg, str(data_dir), str(ckpt[stage]), init=init, address=address)
        summary["stages"][stage] = {"seconds": time.time() - t, **_scalars(metrics)}
        if stage != "reward":
            policy = str(ckpt[stage])
        if stage in POLICY_STAGES:
            policies[stage] = str(ckpt[stage])
    if "eval" in stages:
        summary["stages"]["eval"] = evaluate_policies(policies, prepared, cfgs["generation"], out, pipe.eval_users)
    summary["seconds"] = time.time() - t0
    write_json_atomic(out / "summary.json", summary)
    print(f"[pipeline] done in {summary['seconds']:.0f} s; summary: {out / 'summary.json'}")
    return summary


#: columns of the printed test table, per evaluation protocol (rlhf_ray.evaluation.PROTOCOLS)
REPORT_KEYS = {
    "loo": ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "tail_recall@20", "page_ild", "page_redundancy",
            "coverage@20"),
    "pagellm": ("page_recall@10", "page_ndcg@10", "recall@20", "ndcg@100", "page_was", "page_pwkt",
                "tail_page_recall@10", "page_ild", "page_redundancy"),
}


def evaluate_policies(policies: dict[str, str], prepared, gen: GenerationConfig, out: Path, max_users: int) -> dict:
    """Test metrics of every policy checkpoint, one predictions file each, and a printed table.

    Metrics undefined under the data's protocol are listed under ``"n/a"`` with the reason
    and printed as ``n/a``, never as a number.
    """
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    t = time.time()
    table = {}
    for stage, path in policies.items():
        ck = load_checkpoint(path)
        ev = evaluate_full(ck.model, ck.vocab, prepared, "test", gen, max_users=max_users)
        ev.per_user.to_parquet(out / f"predictions-{stage}.parquet", index=False)
        table[stage] = {"checkpoint": path, "protocol": ev.protocol, **ev.metrics, "n/a": ev.na}
    protocol = next(iter(table.values()))["protocol"] if table else "loo"
    keys = REPORT_KEYS[protocol]
    print(f"[pipeline] test metrics, {protocol} protocol (full ranking; page_* from the generated page; "
          "page_redundancy: lower is better)")
    print("  " + "stage".ljust(8) + "".join(k.rjust(21) for k in keys))
    for stage, m in table.items():
        cells = [f"{m[k]:21.4f}" if isinstance(m.get(k), float) else "n/a".rjust(21) for k in keys]
        print("  " + stage.ljust(8) + "".join(cells))
    return {"seconds": time.time() - t, **table}
