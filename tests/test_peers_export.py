"""The RecBole atomic export of bench/peers (no RecBole needed): for both protocols, train
holds exactly the train interactions, valid exactly our validation targets, and no file
holds a test item."""
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "peers"))

import atomic  # noqa: E402  (bench/peers/atomic.py)

MAX_LEN = 5


@pytest.fixture(scope="module")
def temporal_data(tmp_path_factory) -> Path:
    from rlhf_ray.config import DataConfig
    from rlhf_ray.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "synthetic-temporal"
    prepare(DataConfig(dataset="synthetic", synthetic_users=80, synthetic_items=120, seed=3, split="temporal"),
            out, log=lambda s: None)
    return out


def protocol_rows(prepared, family):
    """The protocol stated from the raw sequences, independently of atomic.py's helpers."""
    thr = prepared.positive_threshold
    train, valid = Counter(), Counter()
    for u, items, ratings, vs, ts in zip(*(prepared.sequences[c] for c in
                                          ("user_idx", "items", "ratings", "valid_start", "test_start"))):
        items = [int(i) for i in items]
        u, vs, ts = int(u), int(vs), int(ts)
        for p in range(vs):
            if family == "general":
                train[f"{u}\t{items[p]}"] += 1
            elif p > 0:
                train[f"{u}\t{' '.join(map(str, items[max(0, p - MAX_LEN):p]))}\t{items[p]}"] += 1
        for p in range(vs, ts):
            if ratings[p] > thr:
                hist = " ".join(map(str, items[:vs][-MAX_LEN:]))
                valid[f"{u}\t{items[p]}" if family == "general" else f"{u}\t{hist}\t{items[p]}"] += 1
    return train, valid


@pytest.mark.parametrize("protocol", ["loo", "pagellm"])
@pytest.mark.parametrize("family", ["general", "sequential"])
def test_export_is_exactly_our_split(protocol, family, synth_data, temporal_data, tmp_path):
    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(synth_data if protocol == "loo" else temporal_data)
    assert prepared.stats["split"]["method"] == {"loo": "leave_one_out", "pagellm": "temporal"}[protocol]
    max_len = MAX_LEN if family == "sequential" else None
    info = atomic.export_atomic(prepared, tmp_path, "bench", family, max_len)
    root = tmp_path / "bench"
    got = {split: atomic.read_atomic(root / f"bench.{split}.inter") for split in atomic.SPLITS}
    train, valid = protocol_rows(prepared, family)

    assert Counter(got["train"]) == train
    assert Counter(got["valid"]) == valid
    assert got["test"] == got["valid"]  # RecBole's required third file only repeats valid
    assert info["train"] == atomic.digest(got["train"]) and info["valid"] == atomic.digest(got["valid"])
    v = prepared.histories("valid")
    assert info["valid"]["rows"] == sum(map(len, v.targets)) > 0
    if protocol == "loo":
        assert all(len(t) == 1 for t in v.targets)
    else:
        assert any(len(t) > 1 for t in v.targets)  # every held-out positive is a target

    # No test item anywhere: every item of a row sits before the user's test_start, and train
    # rows (targets and histories) before valid_start.
    seq = prepared.sequences.set_index("user_idx")
    for split in atomic.SPLITS:
        for row in got[split]:
            cols = row.split("\t")
            u = int(cols[0])
            items = [int(i) for i in seq.at[u, "items"]]
            vs, ts = int(seq.at[u, "valid_start"]), int(seq.at[u, "test_start"])
            row_items = [int(i) for i in cols[1].split()] + [int(cols[-1])] if family == "sequential" \
                else [int(cols[1])]
            limit = vs if split == "train" else ts
            assert all(items.index(i) < limit for i in row_items), (split, row)
            if split != "train":
                assert items.index(row_items[-1]) >= vs

    # timestamps are chronological positions; the item file lists the whole catalogue
    lines = (root / "bench.item").read_text().splitlines()
    assert lines[0] == atomic.ITEM_HEADER.strip() and lines[1:] == [str(i) for i in range(prepared.n_items)]


def test_digest_detects_a_moved_interaction():
    rows = ["1\t2", "1\t3", "2\t3"]
    assert atomic.digest(rows) == atomic.digest(list(reversed(rows)))
    assert atomic.digest(rows) != atomic.digest(["1\t2", "1\t3", "2\t4"])
    assert atomic.digest(rows)["rows"] == 3
