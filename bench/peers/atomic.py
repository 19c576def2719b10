"""Export our prepared split as RecBole pre-split atomic files, so RecBole sees exactly our split.

Both protocols of ``bench/peers_bench.py`` use the same export, RecBole's benchmark mode
(``benchmark_filename = ["train", "valid", "test"]``): RecBole reads three ``.inter`` files
as they are, with no filtering, re-ordering or splitting of its own.

What the protocols say (``rlhf_ray.data.prepared``; per user, chronological ``items``):

* train interactions: ``items[:valid_start]`` (every interaction, whatever its rating);
* validation targets: the positives in ``items[valid_start:test_start]`` with history
  ``items[:valid_start]`` (``Prepared.histories("valid")``): one item per user under
  leave-one-out (protocol "loo"), every held-out positive of the 10% validation range
  under the per-user temporal 80/10/10 split (protocol "pagellm");
* test targets (``items[test_start:end]``) are never written.

Files (user token = ``user_idx``, item token = ``item_idx``, both as decimal strings):

* ``{name}.item``: every catalogue item, so RecBole's vocabulary is our whole catalogue.
* general models (BPR, LightGCN): ``user_id:token item_id:token timestamp:float`` rows;
  ``train`` holds the train interactions, ``valid`` one row per validation target.
  ``timestamp`` is the position in our chronological list (MovieLens has same-second ties).
* sequential models (SASRec, GRU4Rec): rows are already next-item examples,
  ``user_id:token item_id_list:token_seq item_id:token timestamp:float``; ``train`` has, per
  user and position ``p`` in ``1..valid_start-1``, history ``items[max(0, p-L):p]`` and target
  ``items[p]`` (what RecBole's own augmentation makes of ``items[:valid_start]``), ``valid``
  has history ``items[:valid_start][-L:]`` and each validation target. ``L`` = the model's
  ``MAX_ITEM_LIST_LENGTH``, so each history length has its own files.
* ``test``: RecBole insists on a third file; it repeats the ``valid`` rows. RecBole's test
  evaluation is never run (the bench scores test users itself), and no test item is in it.

:func:`expected_split` states the protocol directly from ``Prepared`` (independently of the
writers); :func:`digest` makes a canonical sha256 of a list of rows, which the runner
recomputes from the datasets RecBole built and compares before training.

Imports numpy only (plus the prepared data object it is given), so the RecBole venv's
runner can import it too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

FORMAT = 2  # bump when the files change: part of every cached run's key
SPLITS = ("train", "valid", "test")
GENERAL_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
SEQUENTIAL_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\n"


# --------------------------------------------------------------------------- canonical rows


def general_row(user, item) -> str:
    return f"{int(user)}\t{int(item)}"


def sequential_row(user, history, item) -> str:
    return f"{int(user)}\t{' '.join(str(int(i)) for i in history)}\t{int(item)}"


def digest(rows) -> dict:
    """{"rows": n, "sha256": ...} of a multiset of canonical row strings (order-free)."""
    rows = sorted(rows)
    h = hashlib.sha256()
    for r in rows:
        h.update(r.encode())
        h.update(b"\n")
    return {"rows": len(rows), "sha256": h.hexdigest()}


# --------------------------------------------------------------------------- the protocol


def train_interactions(prepared) -> list[tuple[int, list[int]]]:
    """Per user (user_idx, items[:valid_start]); users with an empty train part skipped."""
    s = prepared.sequences
    out = []
    for u, items, vs in zip(s["user_idx"], s["items"], s["valid_start"]):
        if int(vs) > 0:
            out.append((int(u), [int(i) for i in items[: int(vs)]]))
    return out


def expected_split(prepared, family: str, max_len: int | None = None) -> dict:
    """What RecBole must hold, as canonical rows: {"train": [...], "valid": [...]}.

    ``family`` "general": (user, item) rows; "sequential": (user, last ``max_len`` history
    items, target) rows. Validation comes from ``prepared.histories("valid")``.
    """
    if family not in ("general", "sequential"):
        raise ValueError(f"family must be general or sequential, got {family!r}")
    if family == "sequential" and (max_len is None or max_len < 1):
        raise ValueError("sequential rows need max_len >= 1")
    train, valid = [], []
    for u, items in train_interactions(prepared):
        if family == "general":
            train.extend(general_row(u, i) for i in items)
        else:
            train.extend(sequential_row(u, items[max(0, p - max_len): p], items[p]) for p in range(1, len(items)))
    v = prepared.histories("valid")
    for u, hist, targets in zip(v.user_idx, v.histories, v.targets):
        for t in targets:
            valid.append(general_row(u, t) if family == "general" else sequential_row(u, hist[-max_len:], t))
    return {"train": train, "valid": valid}


# --------------------------------------------------------------------------- writing


def export_atomic(prepared, data_path: str | Path, name: str, family: str, max_len: int | None = None) -> dict:
    """Write ``{data_path}/{name}/{name}.{train,valid,test}.inter`` and ``{name}.item``.

    Returns {"dataset_dir", "family", "max_len", "train": digest, "valid": digest, counts}.
    The digests are of :func:`expected_split` (the protocol), and the writer checks that
    what it wrote is exactly that before returning.
    """
    root = Path(data_path) / name
    root.mkdir(parents=True, exist_ok=True)
    exp = expected_split(prepared, family, max_len)
    header = GENERAL_HEADER if family == "general" else SEQUENTIAL_HEADER
    written: dict[str, list[str]] = {"train": [], "valid": []}
    lines: dict[str, list[str]] = {"train": [], "valid": []}
    for u, items in train_interactions(prepared):
        if family == "general":
            for pos, i in enumerate(items):
                written["train"].append(general_row(u, i))
                lines["train"].append(f"{written['train'][-1]}\t{pos}\n")
        else:
            for p in range(1, len(items)):
                written["train"].append(sequential_row(u, items[max(0, p - max_len): p], items[p]))
                lines["train"].append(f"{written['train'][-1]}\t{p}\n")
    s = prepared.sequences.set_index("user_idx")
    v = prepared.histories("valid")
    for u, hist, targets in zip(v.user_idx, v.histories, v.targets):
        vs = int(s.at[int(u), "valid_start"])
        seq = [int(i) for i in s.at[int(u), "items"]]
        for t in targets:
            pos = vs + seq[vs:].index(int(t))  # chronological position of the target
            row = general_row(u, t) if family == "general" else sequential_row(u, hist[-max_len:], t)
            written["valid"].append(row)
            lines["valid"].append(f"{row}\t{pos}\n")
    for split in ("train", "valid"):
        if digest(written[split]) != digest(exp[split]):
            raise RuntimeError(f"atomic export: the {split} rows written differ from the protocol's")
    for split, src in (("train", "train"), ("valid", "valid"), ("test", "valid")):
        tmp = root / f".{name}.{split}.inter.tmp"
        with open(tmp, "w") as f:
            f.write(header)
            f.writelines(lines[src])
        tmp.replace(root / f"{name}.{split}.inter")
    with open(root / f"{name}.item", "w") as f:
        f.write(ITEM_HEADER)
        f.writelines(f"{i}\n" for i in range(prepared.n_items))
    return {
        "dataset_dir": str(root),
        "family": family,
        "max_len": max_len,
        "format": FORMAT,
        "train": digest(exp["train"]),
        "valid": digest(exp["valid"]),
        "test_file": "repeats the valid rows (RecBole requires a third file; never evaluated)",
        "items": int(prepared.n_items),
        "users_in_train": len(train_interactions(prepared)),
        "valid_users": int(len(v.user_idx)),
    }


def read_atomic(path: str | Path) -> list[str]:
    """Canonical rows of one written ``.inter`` file (for tests and checks)."""
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if header[1].startswith("item_id_list"):
                rows.append(sequential_row(cols[0], cols[1].split(), cols[2]))
            else:
                rows.append(general_row(cols[0], cols[1]))
    return rows


def write_job(path: str | Path, **job) -> Path:
    """Write the runner's job JSON (format: ``bench/peers/recbole_runner.py`` docstring)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(job, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
    return p
