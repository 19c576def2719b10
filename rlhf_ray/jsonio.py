"""Strict JSON out: no bare NaN/inf (JSON parsers reject them), written atomically.

Every JSON file this project writes (manifests, summaries, bench results, ``eval --json``)
goes through :func:`json_safe`: NaN and infinities become ``null``, numpy scalars and
arrays become Python numbers and lists, paths become strings.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, bytes, bool, int)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` (obj), strict (``allow_nan=False``)."""
    kwargs.setdefault("indent", 2)
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any, **kwargs: Any) -> Path:
    """Write strict JSON to ``path`` through a temporary sibling and a rename."""
    kwargs.setdefault("sort_keys", True)
    return write_atomic(path, dumps(obj, default=str, **kwargs) + "\n")
