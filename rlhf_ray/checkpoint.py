"""One self-describing checkpoint directory for every stage.

    config.json + model.safetensors   loadable with transformers AutoModelForCausalLM
    tokenizer/                         tokenizer.json + the item/user token layout
    catalog.parquet                    item_idx <-> item id, title, category, popularity, is_tail
    heads.safetensors                  rating / value / reward heads, when the stage has them
    manifest.json                      stage, config, data fingerprint, metrics, versions, sha256s

Written atomically (a temp sibling directory renamed into place; the manifest,
written last, is what makes a directory a checkpoint) and verified on load: a
missing file or a hash mismatch is a :class:`CheckpointError` naming the file.
No pickle anywhere: weights are safetensors. Checkpoints are read from any location
(:mod:`rlhf_ray.storage`: a local path or a URI such as ``s3://``, copied to this node
once); writers of a URI stage locally and publish with :func:`rlhf_ray.storage.staged`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_ray.jsonio import write_json_atomic  # noqa: F401  (re-exported: pipeline, stages)
from rlhf_ray import storage
from rlhf_ray.errors import CheckpointError
from rlhf_ray.tokens import Vocab, load_tokenizer, save_tokenizer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("config.json", "model.safetensors", "tokenizer/tokenizer.json", "catalog.parquet")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("rlhf-ray", "torch", "transformers", "deepspeed", "ray", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def restore_interrupted(target: Path) -> bool:
    """Undo a replacement killed between its two renames (``target`` -> ``.target.old-*``, then the
    new one -> ``target``): with no ``target`` but an old one beside it, the old one goes back.
    Returns whether it did. (A kill anywhere else leaves ``target`` whole: old or new.)"""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    try:
        os.rename(olds[-1], target)
    except OSError:  # another process restored it first
        return target.exists()
    return True


def atomic_dir(target: Path):
    """Context manager yielding a temp sibling dir that replaces ``target`` on success only.
    A process killed at any point leaves ``target`` as it was or as the block wrote it, never
    half-written (the one window, between the two renames, is undone by :func:`restore_interrupted`)."""
    import contextlib

    @contextlib.contextmanager
    def _cm():
        target.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted(target)
        if target.exists():  # old copies a killed writer left behind (its rename done, not its cleanup)
            for stale in target.parent.glob(f".{target.name}.old-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    return _cm()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the backbone, its tokenizer/layout, catalogue and heads."""

    path: Path
    manifest: dict
    model: Any
    tokenizer: Any
    vocab: Vocab
    catalog: pd.DataFrame
    heads: dict = field(default_factory=dict)  # name -> state dict tensors (prefix stripped)

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def id(self) -> str:
        return self.manifest["id"]


def save_checkpoint(
    out_dir: str | Path,
    *,
    stage: str,
    model,
    tokenizer,
    vocab: Vocab,
    catalog: pd.DataFrame,
    config: dict,
    data_fingerprint: str,
    metrics: dict | None = None,
    heads=None,
    state_dict: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``state_dict`` overrides the model's own (e.g. consolidated from ZeRO-3 shards).
    A peft model (``state_dict`` then in peft's names) is merged into plain weights so
    transformers alone can load it.
    """
    from safetensors.torch import save_file

    from rlhf_ray.model import unwrap

    out = Path(out_dir)
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):  # peft: export merged weights
        model, state_dict = _merged(model, state_dict), None
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), state_dict=state_dict)
        if not (tmp / "model.safetensors").is_file():
            raise RuntimeError(f"save_pretrained wrote no model.safetensors in {tmp} (sharded?)")
        save_tokenizer(tokenizer, vocab, tmp / "tokenizer")
        catalog.to_parquet(tmp / "catalog.parquet", index=False)
        head_info = {}
        if heads is not None and len(list(heads.parameters())):
            tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
            save_file(tensors, str(tmp / "heads.safetensors"))
            head_info = {"names": list(getattr(heads, "names", [])), "hidden": getattr(heads, "hidden", None)}
        files = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "id": f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            "stage": stage,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config,
            "data_fingerprint": data_fingerprint,
            "metrics": metrics or {},
            "versions": library_versions(),
            "vocab": vocab.to_dict(),
            "heads": head_info,
            "files": files,
            **(extra or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return out


_VERIFIED: dict[Path, tuple] = {}  # path -> (stat signature, manifest) of checkpoints hashed in this process


def _merged(peft_model, state_dict: dict | None):
    """A plain fp32 CPU model holding ``peft_model``'s adapters merged into its weights.

    ``state_dict`` (the trained, best or averaged weights, in peft's names; the live model's own
    when None) is loaded into a fresh CPU fp32 copy built from the configs and merged there: a
    deep copy of the live model would be in its training dtype (a bf16 merge rounds away small
    adapter updates), on its device (twice the accelerator memory), and under ZeRO-3 hold
    empty partitions that a full state dict cannot load into."""
    import copy

    import torch
    from peft import get_peft_model

    base = peft_model.get_base_model()
    fresh = get_peft_model(type(base)(base.config), copy.deepcopy(peft_model.peft_config["default"]))
    state = state_dict if state_dict is not None else peft_model.state_dict()
    fresh.load_state_dict({k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.cpu()
                           for k, v in state.items()})
    return fresh.merge_and_unload()


def read_manifest(location: str | Path) -> dict | None:
    """The manifest at a checkpoint location (a path or a storage URI), or None when it is absent,
    not UTF-8 JSON, or not a JSON object. For the driver's checks before a stage; the stage's own
    :func:`verify_checkpoint` then names what is wrong with a checkpoint it cannot use."""
    try:  # ValueError: not JSON, or not UTF-8 text (UnicodeDecodeError)
        text = storage.read_text(storage.join(str(location), MANIFEST))
        manifest = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _signature(p: Path, files: dict) -> tuple:
    """Size and mtime of the manifest and of every listed file: what a rewrite or an edit changes."""
    out = []
    for rel in (MANIFEST, *sorted(files)):
        try:
            st = (p / rel).stat()
        except OSError:
            return ()
        out.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(out)


def local_dir(path: str | Path) -> Path:
    """The checkpoint at ``path`` (a local path or a storage URI) as a local directory on this node."""
    return storage.local_copy(path, MANIFEST)


def verify_checkpoint(path: str | Path) -> dict:
    """Check a checkpoint directory is complete and untampered; return its manifest.

    The sha256 of every file is computed once per process: a checkpoint verified here before
    whose files all keep their size and modification time is not hashed again (an edit or a
    rewrite changes them, so it is). ``path`` may be a storage URI (:func:`local_dir`).
    """
    p = local_dir(path).resolve()
    if not p.is_dir() and not restore_interrupted(p):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    mf = p / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{p}: no {MANIFEST} (incomplete or not a rlhf-ray checkpoint)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8 text
        raise CheckpointError(f"{mf}: corrupt manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mf}: corrupt manifest: a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{mf}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    files = manifest.get("files", {})
    for req in REQUIRED:
        if req not in files:
            raise CheckpointError(f"{p}: manifest lists no {req}")
    sig = _signature(p, files)
    cached = _VERIFIED.get(p)
    if sig and cached is not None and cached[0] == sig:
        return json.loads(json.dumps(cached[1]))  # a copy: callers may edit theirs
    for rel, digest in files.items():
        f = p / rel
        if not f.is_file():
            raise CheckpointError(f"{p}: missing file {rel}")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{p}: {rel} does not match its sha256 in {MANIFEST} (modified or corrupt)")
    if sig:
        _VERIFIED[p] = (sig, manifest)
    return json.loads(json.dumps(manifest))


def load_checkpoint(path: str | Path, *, verify: bool = True, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (hashes checked unless ``verify=False``)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlhf_ray.model import fast_activations

    p = local_dir(path)
    manifest = verify_checkpoint(p) if verify else read_manifest(p)
    if manifest is None:
        raise CheckpointError(f"{p / MANIFEST}: missing or corrupt manifest")
    model = fast_activations(AutoModelForCausalLM.from_pretrained(str(p))).to(device)
    tokenizer, vocab = load_tokenizer(p / "tokenizer")
    if vocab.to_dict() != manifest["vocab"]:
        raise CheckpointError(f"{p}: tokenizer layout differs from the manifest's")
    catalog = pd.read_parquet(p / "catalog.parquet")
    if len(catalog) != vocab.n_items:
        raise CheckpointError(f"{p}: catalog has {len(catalog)} items, the vocabulary {vocab.n_items}")
    heads = {}
    if (p / "heads.safetensors").is_file():
        heads = load_file(str(p / "heads.safetensors"), device=device)
    return Checkpoint(p, manifest, model, tokenizer, vocab, catalog, heads)


def catalog_mismatch(ckpt_items: list[str], data_items: list[str]) -> str | None:
    """Why a dataset's items (item_idx order) are not a checkpoint's catalogue, or None if they are."""
    if list(data_items) == list(ckpt_items):
        return None
    unknown = sorted(set(data_items) - set(ckpt_items))
    return f"{len(unknown)} item(s) not in its catalogue, e.g. {unknown[:5]}" if unknown else \
        "the same items in a different order / subset"


def prompt_of(manifest: dict, default_history: int = 50) -> dict:
    """The prompt a checkpoint was trained with (``max_history``, ``page_size``, ``exclude_seen``):
    the manifest's ``prompt`` entry, else what its stage config recorded, else ``default_history``
    (also for a pre-training checkpoint: its config's ``max_history`` is the rating prompt's, not a
    page prompt's)."""
    conf = (manifest.get("config") or {}) if manifest.get("stage") != "pretrain" else {}
    prompt = dict(manifest.get("prompt") or {})
    prompt.setdefault("max_history", int(conf.get("max_history") or default_history))
    return prompt


def generation_for(manifest: dict, **fields):
    """Decoding settings that score a checkpoint on the prompt it was trained with: its own
    ``max_history`` (:func:`prompt_of`), ``fields`` on top. A model trained on 20-item
    histories and scored on 50 reads positions it never learned."""
    from rlhf_ray.config import GenerationConfig

    return GenerationConfig(**{"max_history": int(prompt_of(manifest)["max_history"]), **fields})


def load_heads(ckpt: Checkpoint, names: list[str] | None = None):
    """Rebuild the :class:`rlhf_ray.model.Heads` module saved in the checkpoint."""
    from rlhf_ray.model import Heads

    info = ckpt.manifest.get("heads") or {}
    if not info.get("names"):
        raise CheckpointError(f"{ckpt.path}: this {ckpt.stage} checkpoint has no heads")
    heads = Heads(info["hidden"], names or info["names"])
    missing = heads.load_state_dict(ckpt.heads, strict=names is None)
    if names is not None and missing.missing_keys:
        raise CheckpointError(f"{ckpt.path}: heads missing {missing.missing_keys}")
    return heads
