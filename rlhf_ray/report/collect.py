"""What a pipeline run directory holds, read once for the report (no torch, no Ray).

    RUN_DIR/summary.json                  the pipeline's summary (stage order, seconds, test table)
    RUN_DIR/<stage>/manifest.json         each checkpoint's config, metrics, lineage
    RUN_DIR/<stage>.logs/metrics.jsonl    one record per epoch / PPO iteration / validation
    RUN_DIR/<stage>.logs/tb/              TensorBoard events (per-step training scalars)
    RUN_DIR/predictions-<policy>.parquet  per-user test metrics of each evaluated policy
    RUN_DIR/ppo.state/latest              PPO's newest resumable state (its hacking monitor's alerts)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_ray.checkpoint import MANIFEST
from rlhf_ray.errors import UserError


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` ([] when absent); a bad line is an error naming file and line."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not a JSON record ({e})") from None
    return out


@dataclass
class StageRun:
    """One training stage of the run: its checkpoint manifest, last pipeline entry and logs."""

    name: str
    root: Path
    manifest: dict | None  # None: no checkpoint
    entry: dict  # summary.json's entry for it ({} when the last pipeline call did not run it)
    records: list[dict]  # metrics.jsonl

    @property
    def logs(self) -> Path:
        return self.root / f"{self.name}.logs"

    @property
    def epochs(self) -> list[dict]:
        """Per-epoch records of a supervised stage."""
        return [r for r in self.records if "epoch" in r]

    def step_scalars(self, tags: list[str]) -> dict[str, tuple[list[int], list[float]]]:
        """Per-step TensorBoard scalars (newest event file: the last training of this stage)."""
        files = sorted((self.logs / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        if not files:
            return {}
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0})
        ea.Reload()
        have = set(ea.Tags().get("scalars", []))
        out = {}
        for tag in tags:
            if tag in have:
                ev = ea.Scalars(tag)
                out[tag] = ([e.step for e in ev], [e.value for e in ev])
        return out


@dataclass
class RunData:
    root: Path
    summary: dict
    stages: dict[str, StageRun] = field(default_factory=dict)  # chain order; those with a checkpoint or logs

    @property
    def evaluation(self) -> dict[str, dict]:
        """policy -> test metrics (the summary's eval table), in the chain's order."""
        ev = (self.summary.get("stages") or {}).get("eval") or {}
        order = list(self.summary.get("order") or [])
        pols = sorted((k for k, v in ev.items() if isinstance(v, dict)),
                      key=lambda k: (order.index(k) if k in order else len(order), k))
        return {k: ev[k] for k in pols}

    def predictions(self, policy: str) -> Path | None:
        p = self.root / f"predictions-{policy}.parquet"
        return p if p.is_file() else None

    def ppo_monitor(self) -> dict | None:
        """PPO's reward-hacking monitor (``alerts``, ``baseline``, ``threshold``) from its newest
        state (None: no state to read)."""
        state = self.root / "ppo.state"
        latest = state / "latest"
        if not latest.is_file():
            return None
        ctl = state / latest.read_text().strip() / "controller.json"
        if not ctl.is_file():
            return None
        mon = read_json(ctl).get("monitor") or {}
        return {"alerts": list(mon.get("alerts") or []), "baseline": dict(mon.get("baseline") or {}),
                "threshold": mon.get("threshold")}

    def pairs_file(self) -> Path | None:
        """The reward model's preference pairs: beside the run, else where its manifest says."""
        local = self.root / "reward.pairs.parquet"
        if local.is_file():
            return local
        rw = self.stages.get("reward")
        recorded = ((rw.manifest or {}).get("pairs") or {}).get("file") if rw else None
        return Path(recorded) if recorded and Path(recorded).is_file() else None


def load_run(root: str | Path) -> RunData:
    """Read a pipeline run directory; an error names what is missing."""
    from rlhf_ray.pipeline import CHAIN

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    path = root / "summary.json"
    if not path.is_file():
        raise UserError(f"{root}: not a pipeline run (no summary.json) nor a sweep (no sweep.json)")
    summary = read_json(path)
    run = RunData(root, summary)
    entries = summary.get("stages") or {}
    for name in summary.get("order") or CHAIN:
        man = root / name / MANIFEST
        logs = root / f"{name}.logs" / "metrics.jsonl"
        if not (man.is_file() or logs.is_file() or name in entries):
            continue
        run.stages[name] = StageRun(name, root, read_json(man) if man.is_file() else None,
                                    entries.get(name) or {}, read_jsonl(logs))
    return run
