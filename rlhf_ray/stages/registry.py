"""The stage registry: every training stage declared once, looked up by the pipeline, the CLI,
Tune trials and cluster jobs alike.

A :class:`Stage` says what a stage is: its config class, the function that trains it, what it
starts from, which other checkpoints it reads, whether it writes a policy, and its few-step
``--smoke`` settings. Every stage writes one checkpoint directory, at the ``out`` it is given
(logs beside it in ``<out>.logs/``), in the common format of :mod:`rlhf_ray.checkpoint`.

How stages get in, without ``rlhf_ray`` importing ``actors`` (imports run one way):

* the stages of this package are declared in :mod:`rlhf_ray.stages` (``BUILTIN``);
* any other package declares a ``Stage`` object in its own module and names it under the
  ``rlhf_ray.stages`` entry-point group of its ``pyproject.toml``. PPO does this
  (``ppo = "actors.stage:PPO"``): the registry reads the group the first time a stage is
  looked up, so ``rlhf_ray`` never names ``actors`` and needs no start-up hook. An entry
  point is packaging metadata, written by ``pip install`` (``make setup``): after adding or
  renaming one, reinstall (``pip install -e .``) or the stage stays unknown, which
  :func:`get` says in its error.

Why not register at CLI start-up: ``python -m rlhf_ray.cli``, the tests, a Ray Train
worker and a Tune trial each start from a different entry, and every one of them must see
the same stages; the packaging metadata is the one place they all read.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

from rlhf_ray.config import Config, ConfigError

ENTRY_POINT_GROUP = "rlhf_ray.stages"
POLICY = "policy"  # Stage.starts_from: the newest policy checkpoint of the pipeline's chain


@dataclass(frozen=True)
class Stage:
    """One training stage.

    ``run(cfg, data_dir, out_dir, init=None, **inputs) -> metrics`` trains and writes the
    checkpoint to ``out_dir``; ``inputs`` are the checkpoints named in ``needs`` (by stage
    name). It runs in this process, or on every Ray Train worker when ``launcher`` is None
    and ``cfg.train.num_workers >= 1`` (:func:`rlhf_ray.stages.launch.launch`). A stage that
    places its own Ray actors (PPO) gives a ``launcher`` with the same signature as ``run``
    plus ``address`` and ``resume``.
    """

    name: str
    config: type[Config]
    run: Callable[..., dict]
    help: str
    description: str = ""
    starts_from: str | None = POLICY  # None: builds a fresh model; POLICY; or a stage's name
    init_required: bool = False  # refuses to start without a checkpoint
    init_flag: str = "--init"  # the CLI flag naming the starting checkpoint
    init_help: str = "checkpoint to start from"
    needs: tuple[str, ...] = ()  # other checkpoints it reads, by stage name (CLI flag --<name>)
    policy: bool = True  # writes a policy: later stages start from it, the pipeline evaluates it
    evaluate: bool = True  # the pipeline's test-set evaluation includes it
    smoke: dict = field(default_factory=dict)  # config overrides for a few-step run (pipeline --smoke)
    launcher: Callable[..., dict] | None = None  # replaces the in-process / Ray Train launch
    resumable: bool = False  # continues a killed run from its own state (``--resume``)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # extra CLI flags
    input_help: dict = field(default_factory=dict)  # need -> CLI help for its --<need> flag
    # cfg -> the Ray resource bundles the launcher's own actors need beside the calling process
    # (None: the stage runs in the caller); a sweep trial reserves them (rlhf_ray.tune)
    bundles: Callable[[Config], list[dict]] | None = None
    # config fields (dotted, within the stage's section) a run resumed from *another* run's saved
    # state may take new values of (``resume=<state dir>``: Population-Based Training's exploit)
    adoptable: tuple[str, ...] = ()


_STAGES: dict[str, Stage] = {}
_loaded = False


def register(stage: Stage) -> Stage:
    """Add ``stage`` (a second stage under the same name is an error, not a replacement)."""
    old = _STAGES.get(stage.name)
    if old is not None and old is not stage:
        raise ValueError(f"stage {stage.name!r} is registered twice ({old.run.__module__} and {stage.run.__module__})")
    _STAGES[stage.name] = stage
    return stage


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    from rlhf_ray.stages import BUILTIN

    for stage in BUILTIN:
        register(stage)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        stage = ep.load()
        if not isinstance(stage, Stage) or stage.name != ep.name:
            raise TypeError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) must be a Stage named {ep.name!r}")
        register(stage)


def stages() -> list[Stage]:
    """Every registered stage: this package's first, then entry points by name."""
    _load()
    return list(_STAGES.values())


def names() -> list[str]:
    return [s.name for s in stages()]


def get(name: str) -> Stage:
    _load()
    try:
        return _STAGES[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage {name!r}; registered: {sorted(_STAGES)}. Stages outside rlhf_ray register "
            f"through the {ENTRY_POINT_GROUP!r} entry-point group: if one is missing, reinstall the "
            f"package (make setup, or pip install -e .) so its entry points are current") from None


def resolve(stage: "str | Stage") -> Stage:
    return get(stage) if isinstance(stage, str) else stage


def config_sections() -> dict[str, type[Config]]:
    """stage name -> config class (the pipeline YAML's per-stage sections)."""
    return {s.name: s.config for s in stages()}

