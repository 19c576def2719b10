"""Build ``--flags`` from a :class:`~rlhf_ray.config.Config` dataclass, and read them back.

Every stage's CLI does the same three things: ``--config FILE`` for a YAML/JSON
file, one ``--flag`` per config field (help text from ``metadata["help"]``), and
"file values, then flags on top". This module does them once::

    p = sub.add_parser("prepare")
    add_config_file_arg(p)
    add_config_args(p, DataConfig)
    ...
    cfg = load_config(DataConfig, args)       # file + flags, validated

Flags take strings; :meth:`Config.from_dict` converts and checks them, so a bad
value fails with the field's name. Fields left unset on the command line are
absent from the overrides and keep the file's (or the default) value. A field
holding a nested Config becomes ``--<field>.<subfield>`` flags and a nested dict.

Stdlib only (plus :mod:`rlhf_ray.config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from rlhf_ray.config import Config, deep_merge, read_mapping
from rlhf_ray.config.base import choices, unwrap_optional

_SEP = "__"  # separates nested field names in argparse dests


def _metavar(tp: Any) -> str:
    tp = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "A,B,..."
    if tp is int:
        return "N"
    if tp is float:
        return "X"
    return "VALUE"


def add_config_args(parser: argparse.ArgumentParser, cls: type[Config], *,
                    exclude: tuple[str, ...] = (), prefix: str = "",
                    group_title: str | None = None) -> None:
    """Add one ``--flag`` per field of ``cls`` to ``parser`` (all default to None = "not given").

    ``--k-core`` and ``--k_core`` both work; bool fields get ``--x/--no-x``;
    ``Literal`` fields get ``choices``. Fields named in ``exclude`` are skipped.
    """
    group = parser.add_argument_group(group_title or f"{cls.__name__} fields (override --config)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        inner = unwrap_optional(tp)
        name = f"{prefix}{f.name}"
        dest = name.replace(".", _SEP)
        if isinstance(inner, type) and issubclass(inner, Config):
            add_config_args(parser, inner, prefix=f"{name}.",
                            group_title=f"{inner.__name__} fields ({name}.*)")
            continue
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and not isinstance(default, (list, dict)):
            help_text = f"{help_text} (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help ("95% interval" would crash --help)
        flags = sorted({f"--{name.replace('_', '-')}", f"--{name}"}, key=lambda s: "_" in s)
        if inner is bool:
            group.add_argument(*flags, dest=dest, default=None, help=help_text,
                               action=argparse.BooleanOptionalAction)
        elif typing.get_origin(inner) is typing.Literal:
            group.add_argument(*flags, dest=dest, default=None, help=help_text, choices=list(choices(inner)))
        else:
            group.add_argument(*flags, dest=dest, default=None, help=help_text, metavar=_metavar(tp))


def config_overrides(args: argparse.Namespace, cls: type[Config], *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, as a (nested) dict; unset flags are left out."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        inner = unwrap_optional(hints[f.name])
        if isinstance(inner, type) and issubclass(inner, Config):
            sub = config_overrides(args, inner, prefix=f"{name}.")
            if sub:
                out[f.name] = sub
            continue
        value = getattr(args, name.replace(".", _SEP), None)
        if value is not None:
            out[f.name] = value
    return out


def add_config_file_arg(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: YAML/JSON mapping of field values; flags given beside it win."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML/JSON file of config values; --flags given too take precedence")


def load_config(cls: type[Config], args: argparse.Namespace, *, key: str | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Build ``cls`` from ``args.config`` (if any) with the command-line flags on top.

    ``key``: read the file's ``key:`` section instead of its top level (one file
    holding several stages' configs). ``base``: values under both (defaults that come from
    elsewhere, e.g. a checkpoint's own prompt), where the dataclass defaults would be.
    """
    path = getattr(args, "config", None)
    data: dict[str, Any] = {}
    if path:
        data = read_mapping(path)
        if key is not None:
            data = dict(data.get(key) or {})
    data = deep_merge(deep_merge(dict(base or {}), data), config_overrides(args, cls))
    return cls.from_dict(data, source=str(path) if path else "")
