"""Offline validation of KubeRay manifests against the operator's CRD schemas
(``../shared/kuberay-crds``, see its README): JSON-schema validation of the whole object with
``jsonschema``, plus a strict walk that reports every key the schema does not declare (the API
server would silently prune it; ``kubectl apply --validate=strict`` refuses it).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

CRD_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}


@lru_cache(maxsize=None)
def crd_schema(kind: str, version: str = "v1") -> dict:
    """The openAPIV3Schema of ``kind`` at API ``version``."""
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{CRD_FILES[kind]}: no version {version}")


def schema_errors(manifest: dict) -> list[str]:
    """Everything ``jsonschema`` finds wrong with ``manifest`` against its kind's CRD schema."""
    import jsonschema

    kind, version = manifest["kind"], manifest["apiVersion"].split("/")[-1]
    validator = jsonschema.Draft7Validator(crd_schema(kind, version))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))]


def unknown_keys(value, schema: dict, path: str = "") -> list[str]:
    """Paths of keys in ``value`` that ``schema`` does not declare (``properties`` of an object
    without ``additionalProperties``); follows ``items`` and ``anyOf``/``allOf``/``oneOf``."""
    out: list[str] = []
    branches = [schema] + [s for key in ("anyOf", "allOf", "oneOf") for s in schema.get(key, [])]
    if isinstance(value, dict):
        props: dict = {}
        for b in branches:
            props.update(b.get("properties", {}))
        free = any("additionalProperties" in b or b.get("x-kubernetes-preserve-unknown-fields") for b in branches)
        for k, v in value.items():
            where = f"{path}.{k}" if path else k
            if k in props:
                out += unknown_keys(v, props[k], where)
            elif props and not free:
                out.append(where)
            else:
                extra = next((b["additionalProperties"] for b in branches
                              if isinstance(b.get("additionalProperties"), dict)), None)
                if extra is not None:
                    out += unknown_keys(v, extra, where)
    elif isinstance(value, list):
        item = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), None)
        if item is not None:
            for i, v in enumerate(value):
                out += unknown_keys(v, item, f"{path}[{i}]")
    return out


def problems(manifest: dict) -> list[str]:
    """Schema errors and undeclared keys of one KubeRay manifest (empty: valid)."""
    kind, version = manifest["kind"], manifest["apiVersion"].split("/")[-1]
    return schema_errors(manifest) + [f"{p}: not declared by the {kind} schema"
                                      for p in unknown_keys(manifest, crd_schema(kind, version))]
