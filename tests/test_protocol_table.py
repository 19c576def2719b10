"""bench/protocol_table.py's reordered row on the shared smoke run: LPO then PPO trains beside
the seed's own chain, from that seed's SFT (linked, not retrained), and its predictions become
the ``lpo_ppo`` row of the table."""
import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_lpo_then_ppo_row_reuses_the_seeds_chain(smoke_run, tmp_path):
    import protocol_table as pt

    from rlhf_ray.checkpoint import verify_checkpoint
    from rlhf_ray.data.prepared import load_prepared

    src, first = smoke_run
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "seed0"
    shutil.copytree(src, out, symlinks=True)
    sft_id = verify_checkpoint(out / "sft")["id"]
    args = argparse.Namespace(config=str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml"), protocol="loo",
                              smoke=True)
    run_dir = pt.run_reordered(args, 0, out, "lpo_ppo")
    assert run_dir == out / "lpo_then_ppo"
    assert all((run_dir / s).is_symlink() for s in ("data", "pretrain", "sft", "reward"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["order"][-2:] == ["lpo", "ppo"] and "sft" not in summary["stages"]  # nothing before LPO ran
    lpo, ppo = verify_checkpoint(run_dir / "lpo"), verify_checkpoint(run_dir / "ppo")
    assert lpo["parent"]["id"] == sft_id and ppo["parent"] == {"id": lpo["id"], "stage": "lpo"}
    assert verify_checkpoint(out / "sft")["id"] == sft_id  # the seed's own chain untouched
    assert pt.prediction_file(out, "lpo_ppo") == run_dir / "predictions-ppo.parquet"
    prepared = load_prepared(out / "data")
    frames = pt.per_user_ours([out], prepared, "loo")
    assert set(frames) == {"sft", "ppo", "lpo", "lpo_ppo"}
    table = pt.build_table("loo", frames, {}, {})
    table["valid"] = pt.valid_means([out])
    assert set(table["valid"]) == {"sft", "ppo", "lpo", "lpo_ppo"}
    assert all(v["ndcg@10"]["n_seeds"] == 1 for v in table["valid"].values())
    assert "lpo_ppo vs sft" in table["comparisons"]
    # the pipeline's own targets, on the same frames: one seed, so pooled and per-seed verdicts agree
    table["targets"] = pt.alignment_targets(frames, [out])
    rows = {r["target"]: r for r in table["targets"]}
    assert "lpo tail_recall@20 >= 1.50x sft" in rows and "ppo: hacking monitor silent" in rows
    assert all(r["per_seed"] == [r["met"]] for r in table["targets"])
    summary = json.loads((out / "summary.json").read_text())
    assert {r["target"]: r["met"] for r in summary["targets"]} == {t: r["met"] for t, r in rows.items()}
    md = pt.markdown("loo", table, {"users": 1, "targets": 1, "tail_targets": 0, "tail_users": 0})
    assert "lpo_ppo = SFT then LPO then PPO" in md and "Validation, whole split" in md
    assert "| lpo tail_recall@20 ≥ 1.50x sft |" in md


def test_set_aside_moves_a_stage_and_leaves_the_rest(tmp_path):
    import protocol_table as pt

    run = tmp_path / "seed0"
    for name in ("sft", "ppo", "ppo.logs", "ppo.state", "lpo"):
        (run / name).mkdir(parents=True)
        (run / name / "x").write_text(name)
    (run / "predictions-ppo.parquet").write_text("p")
    (run / "data").symlink_to(tmp_path)  # a link is moved as a link
    moved = pt.set_aside(run, ["ppo", "data"], "t")
    assert sorted(p.name for p in moved) == ["data", "ppo", "ppo.logs", "ppo.state", "predictions-ppo.parquet"]
    assert all(p.parent == run / "replaced-t" for p in moved)
    assert (run / "replaced-t" / "ppo" / "x").read_text() == "ppo" and (run / "replaced-t" / "data").is_symlink()
    assert sorted(p.name for p in run.iterdir()) == ["lpo", "replaced-t", "sft"]
    assert pt.set_aside(run, ["critic"], "t") == []
    with pytest.raises(SystemExit, match="contradict"):
        pt.main(["--protocol", "loo", "--seeds", "0", "--no-train", "--retrain", "ppo", "--work", str(tmp_path)])


def test_our_rows_are_rescored_from_their_lists_with_coverage(synth_data, tmp_path):
    """Our rows are scored from the rankings and pages the pipeline wrote (as the peers are), so a
    metric added later is filled in; a stored value that the same code no longer reproduces stops
    the table; catalogue coverage comes with every row."""
    import numpy as np
    import pandas as pd
    import protocol_table as pt

    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.evaluation import score_lists

    prepared = load_prepared(synth_data)
    _, targets, ratings, users = prepared.histories("test")
    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(prepared.n_items)[:20] for _ in users])
    outs = []
    for seed, page_len in ((0, 20), (1, 10)):
        out = tmp_path / f"seed{seed}"
        out.mkdir()
        page = top[:, :page_len]
        stored = score_lists(top, page, targets, ratings, prepared, "loo").per_user
        stored.pop("page_ild@10")  # a file written before the metric existed
        pd.DataFrame({"user_idx": users, "ranking": list(top), "page": list(page), **stored}).to_parquet(
            out / "predictions-sft.parquet")
        outs.append(out)
    frames = pt.per_user_ours(outs, prepared, "loo")
    assert [len(f) for f in frames["sft"]] == [len(users)] * 2
    assert all("page_ild@10" in f for f in frames["sft"])
    assert np.allclose(frames["sft"][1]["page_ild@10"], frames["sft"][1]["page_ild"], equal_nan=True)  # page of 10
    cov = frames["sft"][0].attrs["coverage"]
    assert cov["page_coverage"] == cov["coverage@20"] == len(np.unique(top)) / prepared.n_items
    table = pt.build_table("loo", frames, {}, {})
    assert table["rows"]["sft"]["coverage"]["coverage@20"]["n_seeds"] == 2
    md = pt.markdown("loo", table, {"users": len(users), "targets": len(users), "tail_targets": 0, "tail_users": 0})
    assert md.splitlines()[0].endswith("| page_ild@10 | page_ild | page_redundancy | coverage@20 | page_coverage |")
    # a stored figure the code no longer reproduces is an error, not a silent overwrite
    bad = pd.read_parquet(outs[0] / "predictions-sft.parquet")
    bad["page_ild"] = bad["page_ild"] + 0.1
    bad.to_parquet(outs[0] / "predictions-sft.parquet")
    with pytest.raises(RuntimeError, match="page_ild rescored here differs"):
        pt.per_user_ours(outs, prepared, "loo")


def test_peer_lists_are_checked_before_they_are_scored(synth_data, tmp_path):
    """A peer's npz is scored only when it is one: a .npy under the name, a list shallower than
    the protocol's deepest cutoff, or an item index outside the catalogue stops the table with
    the file, the expected shape and the index range it found."""
    import numpy as np
    import protocol_table as pt

    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(synth_data)
    _, _, _, users = prepared.histories("test")
    users = np.asarray(users, dtype=np.int64)
    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(prepared.n_items)[:100] for _ in users])
    f = tmp_path / "BPR.npz"

    def save(t):
        with open(f, "wb") as fh:
            np.savez(fh, user_idx=users, top=t)

    save(top)
    assert set(pt.per_user_peers(tmp_path, prepared, "pagellm")) == {"BPR"}
    save(top[:, :40])  # deep enough for loo's ks (10, 20), not for pagellm's NDCG@100
    assert set(pt.per_user_peers(tmp_path, prepared, "loo")) == {"BPR"}
    with pytest.raises(RuntimeError, match=r"BPR.npz: top must be .*>= 100.*got shape \(\d+, 40\)"):
        pt.per_user_peers(tmp_path, prepared, "pagellm")
    bad = top.copy()
    bad[0, 0] = prepared.n_items
    save(bad)
    with pytest.raises(RuntimeError, match=f"indices 0..{prepared.n_items}"):
        pt.per_user_peers(tmp_path, prepared, "loo")
    with open(f, "wb") as fh:
        np.save(fh, top)  # an .npy with the peer's name
    with pytest.raises(RuntimeError, match="BPR.npz: not a peer list"):
        pt.per_user_peers(tmp_path, prepared, "loo")


@pytest.mark.parametrize("bad", ["a,b", "0,-1", "", ",", "1.5"])
def test_bad_seeds_are_a_usage_error_that_names_them(bad, capsys):
    """`make tables SEEDS=...` passes the value straight through: a wrong one stops before any run."""
    import protocol_table as pt

    with pytest.raises(SystemExit) as e:
        pt.parse_args(["--protocol", "loo", "--seeds", bad])
    assert e.value.code == 2
    assert "--seeds" in capsys.readouterr().err
    assert pt.parse_args(["--protocol", "loo", "--seeds", " 3, 4,"]).seeds == [3, 4]
    assert pt.parse_args(["--protocol", "loo"]).seeds == [0, 1, 2]
