"""The whole job in one command: data -> pretrain -> sft -> eval (later stages join as they land).

    rlhf-ray pipeline --config rlhf_ray/configs/ml-100k.yaml --out runs/ml-100k

One YAML file holds a section per stage (``data``, ``pretrain``, ``sft``,
``generation``). Every stage writes its own checkpoint under ``--out``; a stage
whose checkpoint is already complete, for the same config and data, is skipped,
so a killed pipeline resumes where it stopped. ``--smoke`` shrinks every stage to
a few steps on a small synthetic dataset (CI, laptops).
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rlhf_ray.checkpoint import write_json_atomic
from rlhf_ray.config import (Config, DataConfig, GenerationConfig, PretrainConfig, SFTConfig, read_mapping)
from rlhf_ray.config import ConfigError
from rlhf_ray.errors import CheckpointError

SECTIONS = {"data": DataConfig, "pretrain": PretrainConfig, "sft": SFTConfig, "generation": GenerationConfig}
STAGES = ("data", "pretrain", "sft", "eval")

SMOKE = {
    "data": {"dataset": "synthetic", "synthetic_users": 120, "synthetic_items": 150},
    "pretrain": {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "train": {"epochs": 1, "max_steps": 5}},
    "sft": {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "train": {"epochs": 1, "max_steps": 5}},
}


def default_config_path(dataset: str = "ml-100k") -> Path:
    return Path(str(resources.files("rlhf_ray") / "configs" / f"{dataset}.yaml"))


def load_pipeline_config(path: str | Path | None, smoke: bool = False) -> dict[str, Config]:
    from rlhf_ray.cliutil import merge

    raw = read_mapping(path) if path else {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid: {sorted(SECTIONS)}")
    if smoke:
        raw = merge(raw, SMOKE)
    return {name: cls.from_dict(raw.get(name) or {}, source=f"{path} [{name}]" if path else "")
            for name, cls in SECTIONS.items()}


def _done(out: Path, cfg: dict, fingerprint: str) -> bool:
    """A stage is done when its checkpoint verifies and was made from the same config and data."""
    from rlhf_ray.checkpoint import verify_checkpoint

    try:
        m = verify_checkpoint(out)
    except CheckpointError:
        return False
    return m.get("config") == cfg and m.get("data_fingerprint") == fingerprint


def run_pipeline(cfgs: dict[str, Config], out: str | Path, stages=STAGES, address: str | None = None,
                 force: bool = False) -> dict:
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.stages.launch import launch

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"stages": {}}
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
    init = None
    for stage in ("pretrain", "sft"):
        ck = out / stage
        if stage not in stages:
            init = str(ck) if (ck / "manifest.json").is_file() else init
            continue
        cfg = cfgs[stage]
        t = time.time()
        if not force and _done(ck, cfg.to_dict(), fp):
            print(f"[pipeline] {stage}: complete checkpoint at {ck}, skipped")
            metrics = {"skipped": True}
        else:
            print(f"[pipeline] {stage} -> {ck}")
            metrics = launch(stage, cfg, str(data_dir), str(ck), init=init, address=address)
        summary["stages"][stage] = {"seconds": time.time() - t, **_scalars(metrics)}
        init = str(ck)
    if "eval" in stages:
        from rlhf_ray.checkpoint import load_checkpoint
        from rlhf_ray.evaluation import evaluate

        t = time.time()
        final = out / "sft"
        ck = load_checkpoint(final)
        metrics, preds = evaluate(ck.model, ck.vocab, prepared, "test", cfgs["generation"], ks=(10, 20))
        preds.to_parquet(out / "predictions.parquet", index=False)
        summary["stages"]["eval"] = {"seconds": time.time() - t, "checkpoint": str(final), **metrics}
        print("[pipeline] test metrics of", final)
        for k in ("ndcg@10", "recall@10", "hr@10", "ndcg@20", "recall@20", "tail_recall@20",
                  "page_ild", "page_entropy", "page_coverage"):
            if k in metrics:
                print(f"  {k:20s} {metrics[k]:.4f}")
    summary["seconds"] = time.time() - t0
    write_json_atomic(out / "summary.json", summary)
    print(f"[pipeline] done in {summary['seconds']:.0f} s; summary: {out / 'summary.json'}")
    return summary


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps({k: v.to_dict() for k, v in load_pipeline_config(default_config_path()).items()}, indent=2))
