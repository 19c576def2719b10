"""Export our prepared split as RecBole atomic files so RecBole trains on exactly our train part.

Our leave-one-out (``rlhf_ray.data``): per user, chronological lists ``items``; test item =
``items[test_start]`` (last positive), validation item = ``items[valid_start]`` (second-last
positive), train history = ``items[:valid_start]``; anything after ``test_start`` is dropped.

What RecBole gets, per user (user token = user_idx, item token = item_idx, as strings):

* ``{name}.inter`` holds ``items[:valid_start + 1]``: the train history then the validation
  item, nothing later. RecBole is run with ``eval_args.split = {LS: valid_only}``, order
  ``TO``, grouped by user, so its train part is ``items[:valid_start]`` and its single
  validation interaction is ``items[valid_start]`` (used for early stopping only).
* ``timestamp`` is the position in our chronological list (0, 1, 2, ...), not the Unix time:
  MovieLens has many same-second interactions, and RecBole's time sort would be free to
  reorder ties; positions make its order ours exactly.
* ``{name}.item`` lists all ``n_items`` items, so RecBole's vocabulary is our whole catalogue,
  items never seen in training included (as in our ranker's vocabulary).
* No filtering: the runner sets ``user/item_inter_num_interval = [0,inf)``, no ``val_interval``,
  no ``threshold``, no duplicate removal.

The test histories ``items[:test_start]`` (validation item and any later non-positive
interactions included) are passed to the runner in the job JSON; RecBole never sees a test item.

Imports numpy only (plus the prepared data object it is given).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\n"


def export_atomic(prepared, data_path: str | Path, name: str = "bench") -> dict:
    """Write ``{data_path}/{name}/{name}.inter`` and ``.item``; return counts for the split notes."""
    root = Path(data_path) / name
    root.mkdir(parents=True, exist_ok=True)
    s = prepared.sequences
    rows = users = 0
    expected_valid: dict[str, str] = {}
    with open(root / f"{name}.inter", "w") as f:
        f.write(INTER_HEADER)
        for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
            keep = int(vs) + 1  # train history + the validation item
            for pos in range(keep):
                f.write(f"{int(u)}\t{int(items[pos])}\t{float(ratings[pos]):g}\t{pos}\n")
            rows += keep
            users += 1
            expected_valid[str(int(u))] = str(int(items[vs]))
    with open(root / f"{name}.item", "w") as f:
        f.write(ITEM_HEADER)
        f.writelines(f"{i}\n" for i in range(prepared.n_items))
    train_rows = int((s["valid_start"].to_numpy()).sum())
    return {
        "inter_rows": rows,
        "users": users,
        "items": prepared.n_items,
        "train_interactions": train_rows,
        "valid_interactions": users,
        "expected_valid": expected_valid,
    }


def write_job(path: str | Path, *, model: str, data_path: str | Path, name: str, work_dir: str | Path,
              out: str | Path, config: dict, prepared, users: np.ndarray, histories: list[list[int]],
              expected_valid: dict[str, str], time_budget_s: float | None = None) -> Path:
    """Write the runner's job JSON (format: ``bench/peers/recbole_runner.py`` docstring)."""
    job = {
        "model": model,
        "data_path": str(data_path),
        "dataset": name,
        "work_dir": str(work_dir),
        "out": str(out),
        "config": config,
        "n_items": int(prepared.n_items),
        "users": [int(u) for u in users],
        "histories": [[int(i) for i in h] for h in histories],
        "expected_valid": expected_valid,
        "time_budget_s": time_budget_s,
    }
    p = Path(path)
    p.write_text(json.dumps(job))
    return p
