"""Reading a request body: strict JSON, then the pydantic schema, every failure a
:class:`RequestError` that names what is wrong.

Python's ``json`` module accepts more than JSON: ``NaN`` and ``Infinity``, numbers that
overflow to ``inf`` (``1e400``) and strings with lone UTF-16 surrogates. None of them is a
JSON value (or Unicode text), and each used to end as a 500 when the error answer tried to
echo it back. Here they are refused up front, and schema errors are reported without
echoing the input.
"""
from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rlhf_ray.serve.ranker import RequestError

M = TypeVar("M", bound=BaseModel)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity; send a finite number)")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text} is out of range (larger than a 64-bit float)")
    return x


def _int(text: str) -> int:
    if len(text) > 100:  # before Python's own 4300-digit limit, with a message for the client
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _is_json(content_type: str | None) -> bool:
    mime = (content_type or "application/json").split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def parse_json(body: bytes, content_type: str | None) -> Any:
    """The JSON value of ``body``; a missing Content-Type is read as JSON, any other is a 415."""
    if not _is_json(content_type):
        raise RequestError(f"Content-Type must be application/json, got {content_type!r}", field="content-type",
                           status=415)
    if not body.strip():
        raise RequestError("request body is empty: send a JSON object", field="body")
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite, parse_int=_int)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates: not Unicode text
    except json.JSONDecodeError as e:
        raise RequestError(f"request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                           field="body") from None
    except UnicodeDecodeError as e:
        raise RequestError(f"request body is not UTF-8 text: invalid byte at offset {e.start}", field="body") from None
    except UnicodeEncodeError:
        raise RequestError("request body holds a string that is not Unicode text (a lone surrogate such as "
                           "\\ud800)", field="body") from None
    except RecursionError:
        raise RequestError("request body nests too deeply", field="body") from None
    except ValueError as e:  # NaN/Infinity, out-of-range numbers
        raise RequestError(f"request body is not valid JSON: {e}", field="body") from None
    return value


def _where(loc: tuple) -> str:
    """``("history", 0, "str")`` -> ``history[0]`` (the union member a loc ends with is dropped)."""
    parts = list(loc)
    if len(parts) > 1 and parts[-1] in ("str", "int"):
        parts.pop()
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def validate(model: type[M], value: Any) -> M:
    """``model`` from a parsed body; a ValidationError becomes one 422 naming every field."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        problems: dict[str, list[str]] = {}
        for err in e.errors(include_input=False, include_url=False, include_context=False):
            msgs = problems.setdefault(_where(err["loc"]), [])
            msg = err["msg"].removeprefix("Value error, ")
            if msg not in msgs:
                msgs.append(msg)
        detail = "; ".join(f"{where}: {_either(msgs)}" for where, msgs in problems.items())
        raise RequestError(detail, field=next(iter(problems))) from None


def _either(msgs: list[str]) -> str:
    """``["Input should be a valid string", "Input should be a valid integer"]`` -> one sentence."""
    head = "Input should be "
    if len(msgs) > 1 and all(m.startswith(head) for m in msgs):
        return head + " or ".join(m[len(head):] for m in msgs)
    return "; ".join(msgs)


def read_body(model: type[M], body: bytes, content_type: str | None) -> M:
    """Parse and validate one request body."""
    return validate(model, parse_json(body, content_type))
