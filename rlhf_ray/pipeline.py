"""The whole job in one command:

    data -> pretrain -> sft -> reward -> ppo -> lpo -> eval      (the default chain; lpo before ppo works too)

    rlhf-ray pipeline --config rlhf_ray/configs/ml-100k.yaml --out runs/ml-100k

One YAML file holds a section per registered stage, plus ``data``, ``generation``,
``prompt`` (the prompt every stage builds: history length, page size, seen-item exclusion,
written once and applied to every section that has those fields; a section may still set
its own page size, e.g. evaluation on longer pages, but not another history length) and ``pipeline`` (which
stages, in which order). Each stage writes its checkpoint to ``--out/<stage>`` and starts
from what its :class:`~rlhf_ray.stages.registry.Stage` declares (the chain's newest policy,
or a named stage's checkpoint). A stage whose checkpoint is already complete for the same
config, data, starting checkpoint and inputs is skipped (and a resumable stage continues
its own saved state), so a killed pipeline resumes where it stopped. ``eval`` evaluates
every policy checkpoint on the test split and writes one table; the run's report
(``rlhf-ray report``: ``--out/report/report.html``) is written last. ``--smoke`` applies each
stage's few-step settings on a small synthetic dataset. ``--out`` may be a storage URI
(``s3://bucket/runs/x``, :mod:`rlhf_ray.storage`): every stage reads and writes there, so a
pipeline on a cluster without a shared file system resumes from any node (the report is then
not written: it needs a local directory).

Nothing here names a stage: stages are looked up in the registry, so this module never
reaches the Ray actor layer (PPO comes in through the registry like any other stage).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from rlhf_ray import storage
from rlhf_ray.checkpoint import MANIFEST, read_manifest
from rlhf_ray.jsonio import dumps
from rlhf_ray.config import (Config, ConfigError, DataConfig, GenerationConfig, PromptConfig, deep_merge, doc,
                             read_mapping, require)
from rlhf_ray.errors import CheckpointError
from rlhf_ray.stages import registry
from rlhf_ray.stages.registry import POLICY, Stage

STEPS = ("data", "eval")  # pipeline steps around the chain of training stages
CHAIN = ["pretrain", "sft", "reward", "ppo", "lpo"]


@dataclass
class PipelineConfig(Config):
    """Which stages the pipeline runs, and in which order."""

    stages: list[str] = field(default_factory=lambda: ["data", *CHAIN, "eval"], metadata=doc(
        "steps to run: data, eval and any of the chain's stages"))
    chain: list[str] = field(default_factory=lambda: list(CHAIN), metadata=doc(
        "the training stages in the order they run (each a registered stage)", nonempty=True))
    order: list[str] | None = field(default=None, metadata=doc(
        "reorder some of the chain's stages, e.g. [lpo, ppo] (LPO first, PPO refines its policy)"))
    eval_users: int = field(default=0, metadata=doc("evaluate on at most N test users (0 = all)", ge=0))

    def validate(self) -> None:
        valid = [*STEPS, *self.chain]
        bad = sorted(set(self.stages) - set(valid))
        require(not bad, "stages", f"unknown {bad}; valid: {valid}")
        require(len(set(self.chain)) == len(self.chain), "chain", f"a stage appears twice in {self.chain}")
        order = self.order or []
        require(len(set(order)) == len(order) and set(order) <= set(self.chain), "order",
                f"must name distinct stages of the chain {self.chain}, got {self.order}")

    def plan(self) -> list[str]:
        """The chain with ``order`` applied: the stages it names take their slots in its order."""
        if not self.order:
            return list(self.chain)
        reordered = iter(self.order)
        return [next(reordered) if s in self.order else s for s in self.chain]


def sections() -> dict[str, type[Config]]:
    """The pipeline YAML's sections: pipeline, prompt, data, generation, and one per registered stage."""
    return {"pipeline": PipelineConfig, "prompt": PromptConfig, "data": DataConfig,
            "generation": GenerationConfig, **registry.config_sections()}


def smoke_overrides() -> dict:
    """``--smoke``: a small synthetic dataset and each stage's own few-step settings."""
    return {"data": {"dataset": "synthetic", "synthetic_users": 120, "synthetic_items": 150},
            **{s.name: s.smoke for s in registry.stages()}}


def default_config_path(dataset: str = "ml-100k") -> Path:
    return Path(str(resources.files("rlhf_ray") / "configs" / f"{dataset}.yaml"))


SHARED_STRICT = ("max_history",)  # must be the same in every section: a model is scored and served on its own prompt


def _share_prompt(raw: dict, secs: dict[str, type[Config]], where: str) -> dict:
    """Copy the ``prompt`` section into every section whose config has the prompt fields. A
    section may set its own ``page_size`` / ``exclude_seen`` (e.g. evaluation on longer pages),
    never another ``max_history``: that is an error (the history a prompt holds is set once)."""
    shared = PromptConfig.from_dict(raw.get("prompt") or {}, source=f"{where} [prompt]" if where else "").to_dict()
    given = set(raw.get("prompt") or {})
    out = dict(raw)
    for name, cls in secs.items():
        if name == "prompt" or not issubclass(cls, PromptConfig):
            continue
        sec = dict(out.get(name) or {})
        for k in SHARED_STRICT:
            # checked whether or not prompt: sets it (else the default): a section alone on its
            # own history length would train, then fail at the next stage that reads its checkpoint
            if k in sec and sec[k] != shared[k]:
                said = "" if k in given else " (its default; prompt: does not set it)"
                raise ConfigError(f"{where or 'pipeline config'}: {name}.{k} = {sec[k]!r} differs from prompt.{k} = "
                                  f"{shared[k]!r}{said}; set it once, under prompt:")
        for k in given:
            sec.setdefault(k, shared[k])
        out[name] = sec
    return out


def load_pipeline_config(path: str | Path | None, smoke: bool = False) -> dict[str, Config]:
    return load_pipeline_raw(read_mapping(path) if path else {}, smoke=smoke, where=str(path or ""))


def load_pipeline_raw(raw: dict, smoke: bool = False, where: str = "") -> dict[str, Config]:
    """The typed configs of a pipeline YAML already read into ``raw`` (``where``: its file, for errors)."""
    secs = sections()
    unknown = sorted(set(raw) - set(secs))
    if unknown:
        raise ConfigError(f"{where or 'pipeline config'}: unknown section(s) {unknown}; valid: {sorted(secs)}")
    if smoke:
        raw = deep_merge(raw, smoke_overrides())
    raw = _share_prompt(raw, secs, where)
    return {name: cls.from_dict(raw.get(name) or {}, source=f"{where} [{name}]" if where else "")
            for name, cls in secs.items()}


def _manifest_id(path: str | Path) -> str | None:
    manifest = read_manifest(path)  # unreadable: no id, so nothing made from it counts as done
    return manifest.get("id") if manifest else None


def stage_done(ckpt: str, cfg: Config, fingerprint: str, init: str | None, inputs: dict[str, str]) -> bool:
    """A stage is done when its checkpoint verifies and was made from the same config, data,
    starting checkpoint and inputs (so retraining an earlier stage retrains everything after it);
    ``cosmetic`` fields (progress bars, TensorBoard) do not count.
    A field added since the checkpoint was made counts as its ``legacy`` value there
    (:meth:`Config.upgrade`); a new field without one makes the stage run again."""
    from rlhf_ray.checkpoint import verify_checkpoint

    try:
        m = verify_checkpoint(ckpt)
    except CheckpointError:
        return False
    if not cfg.matches(m.get("config") or {}) or m.get("data_fingerprint") != fingerprint:
        return False
    if init is not None and (m.get("parent") or {}).get("id") != _manifest_id(init):
        return False
    recorded = m.get("inputs") or {}
    return all((recorded.get(name) or {}).get("id") == _manifest_id(path) for name, path in inputs.items())


def _start(stage: Stage, policy: str | None, out: str) -> str | None:
    """The checkpoint ``stage`` starts from in this run."""
    if stage.starts_from is None:
        return None
    return policy if stage.starts_from == POLICY else storage.join(out, stage.starts_from)


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def run_pipeline(cfgs: dict[str, Config], out: str | Path, stages=None, address: str | None = None,
                 force: bool = False) -> dict:
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.stages.launch import launch

    pipe: PipelineConfig = cfgs["pipeline"]
    selected = tuple(stages or pipe.stages)
    plan = [registry.get(name) for name in pipe.plan()]  # unknown stages fail before any work
    out = storage.normalize(out)  # a local path or a storage URI
    summary: dict = {"stages": {}, "order": [s.name for s in plan]}
    t0 = time.time()
    data_dir = storage.join(out, "data")
    if "data" in selected:
        t = time.time()
        dcfg: DataConfig = cfgs["data"]
        if dcfg.dataset == "ml-100k" and dcfg.path is None:
            from rlhf_ray.data.fetch import fetch

            fetch("ml-100k")
        from rlhf_ray.data.prepare import prepare

        with storage.staged(data_dir, marker="stats.json") as local:
            prepare(dcfg, local)
        summary["stages"]["data"] = {"seconds": time.time() - t}
    prepared = load_prepared(data_dir)
    policy: str | None = None  # the newest policy checkpoint of the chain
    policies: dict[str, str] = {}  # evaluated at the end
    for stage in plan:
        ckpt = storage.join(out, stage.name)
        init = _start(stage, policy, out)
        inputs = {need: storage.join(out, need) for need in stage.needs}
        if stage.name in selected:
            cfg = cfgs[stage.name]
            t = time.time()
            if not force and stage_done(ckpt, cfg, prepared.fingerprint, init, inputs):
                print(f"[pipeline] {stage.name}: complete checkpoint at {ckpt}, skipped")
                metrics = {"skipped": True}
            else:
                print(f"[pipeline] {stage.name} -> {ckpt}" + (f" (from {init})" if init else ""))
                metrics = launch(stage, cfg, str(data_dir), str(ckpt), init=init, inputs=inputs, address=address,
                                 resume="auto" if stage.resumable else False)
            summary["stages"][stage.name] = {"seconds": time.time() - t, **_scalars(metrics)}
        elif not storage.exists(storage.join(ckpt, MANIFEST)):
            continue
        if stage.policy:
            policy = str(ckpt)
            if stage.evaluate:
                policies[stage.name] = policy
    if "eval" in selected:
        ev = evaluate_policies(policies, prepared, cfgs["generation"], out, pipe.eval_users)
        summary["targets"] = ev.pop("targets")
        summary["stages"]["eval"] = ev
    summary["seconds"] = time.time() - t0
    storage.write_text(storage.join(out, "summary.json"), dumps(summary, sort_keys=True, default=str) + "\n")
    print(f"[pipeline] done in {summary['seconds']:.0f} s; summary: {storage.join(out, 'summary.json')}")
    if not storage.is_uri(out):
        write_report_safely(Path(out))
    return summary


def write_report_safely(out: Path) -> Path | None:
    """The run's report (``out/report/``). The run is complete without it: a failure is a
    warning naming its cause and the command that retries, never an error."""
    try:
        from rlhf_ray.report import write_report

        html = write_report(out)
    except Exception as e:  # noqa: BLE001 - any failure here must not lose a finished run
        print(f"[pipeline] WARNING: the run is complete, but its report failed: {type(e).__name__}: {e}. "
              f"Retry with: rlhf-ray report {out}", file=sys.stderr)
        return None
    print(f"[pipeline] report: {html}")
    return html


#: columns of the printed test table, per evaluation protocol (rlhf_ray.evaluation.PROTOCOLS)
REPORT_KEYS = {
    "loo": ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "tail_recall@20", "page_ild", "page_redundancy",
            "coverage@20"),
    "pagellm": ("page_recall@10", "page_ndcg@10", "recall@20", "ndcg@100", "page_was", "page_pwkt",
                "tail_page_recall@10", "page_ild", "page_redundancy"),
}


def hacking_alerts(policies: dict[str, str]) -> int | None:
    """The PPO stage's hacking-monitor alert count, from its checkpoint's manifest (None: no PPO)."""
    if "ppo" not in policies:
        return None
    manifest = read_manifest(policies["ppo"]) or {}
    n = (manifest.get("metrics") or {}).get("hacking_alerts")
    return None if n is None else int(n)


def evaluate_policies(policies: dict[str, str], prepared, gen: GenerationConfig, out: str, max_users: int) -> dict:
    """Test metrics of every policy checkpoint, one predictions file each, a printed table,
    and the alignment targets checked on them (:mod:`rlhf_ray.targets`; under ``"targets"``).

    Metrics undefined under the data's protocol are listed under ``"n/a"`` with the reason
    and printed as ``n/a``, never as a number.
    """
    from rlhf_ray import targets
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.evaluation import evaluate_full

    t = time.time()
    table, per_user = {}, {}
    for stage, path in policies.items():
        ck = load_checkpoint(path)
        ev = evaluate_full(ck.model, ck.vocab, prepared, "test", gen, max_users=max_users)
        per_user[stage] = ev.per_user
        with storage.staged(out, marker=None) as local_out:  # a storage URI: written here, then published
            local_out.mkdir(parents=True, exist_ok=True)
            ev.per_user.to_parquet(local_out / f"predictions-{stage}.parquet", index=False)
        table[stage] = {"checkpoint": path, "protocol": ev.protocol, **ev.metrics, "n/a": ev.na}
    protocol = next(iter(table.values()))["protocol"] if table else "loo"
    keys = REPORT_KEYS[protocol]
    print(f"[pipeline] test metrics, {protocol} protocol (full ranking; page_* from the generated page; "
          "page_redundancy: lower is better)")
    print("  " + "stage".ljust(8) + "".join(k.rjust(21) for k in keys))
    for stage, m in table.items():
        cells = [f"{m[k]:21.4f}" if isinstance(m.get(k), float) else "n/a".rjust(21) for k in keys]
        print("  " + stage.ljust(8) + "".join(cells))
    rows = targets.check(per_user, hacking_alerts(policies))
    if rows:
        print(f"[pipeline] alignment targets against {targets.BASE} on the same test users "
              "(ratio of means; paired 95% bootstrap interval of the difference; README, Alignment targets)")
        print(targets.format_rows(rows))
    return {"seconds": time.time() - t, **table, "targets": rows}


# --------------------------------------------------------------------------- CLI


def _pipeline(args: argparse.Namespace) -> int:
    path = args.config or (None if args.smoke else default_config_path())
    cfgs = load_pipeline_config(path, smoke=args.smoke)
    if args.stages:
        cfgs["pipeline"] = cfgs["pipeline"].replace(stages=[s for s in args.stages.split(",") if s])
    run_pipeline(cfgs, args.out, address=args.address, force=args.force)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """``rlhf-ray pipeline``."""
    p = subparsers.add_parser(
        "pipeline", help="the whole job: data -> pretrain -> sft -> reward -> ppo -> lpo -> eval",
        description="Run every stage in order with one YAML config (a section per stage, a shared prompt). "
                    "Stages whose checkpoint is already complete for the same config, data and inputs are "
                    "skipped, so a killed run resumes where it stopped.")
    p.add_argument("--out", default="runs/ml-100k", metavar="DIR", help="run directory (default runs/ml-100k)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="pipeline YAML (sections: pipeline, prompt, data, generation and one per stage); default: "
                        "the bundled rlhf_ray/configs/ml-100k.yaml")
    p.add_argument("--stages", default=None, metavar="A,B", help="run only these stages (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data and a few steps per stage (CI)")
    p.add_argument("--force", action="store_true", help="retrain stages even if their checkpoint is complete")
    p.add_argument("--address", default=None, metavar="ADDR", help="attach to a Ray cluster (auto | ray://...)")
    p.set_defaults(func=_pipeline)
