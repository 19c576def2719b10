"""bench/lpo_ablation.py end to end on synthetic data: every variant trained from the right start,
test read once per checkpoint, one table with paired comparisons against SFT."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_smoke_writes_one_table(tmp_path):
    res = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "bench" / "lpo_ablation.py"), "--smoke", "--seeds", "0",
           "--variants", "default,reweight_adaptive,joint", "--work", str(tmp_path / "work"), "--results", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((res / "lpo_ablation_smoke.json").read_text())
    assert set(doc["rows"]) == {"sft", "default", "reweight_adaptive", "joint"}
    for name, row in doc["rows"].items():
        m = row["metrics"]["ndcg@10"]
        assert m["n"] == doc["users"] and m["lo"] <= m["mean"] <= m["hi"]
        assert 0 < row["page_coverage"]["mean"] <= 1
        assert row["valid_ndcg@10"]["n_seeds"] == 1 and row["valid_tail_recall@20"]["n_seeds"] == 1
    assert doc["tail_users"] > 0
    # every trained variant's wall time per seed, from its manifest (LPO checkpoints record train/wall_s)
    assert set(doc["train_seconds"]) == {"default", "reweight_adaptive", "joint"}
    for name, secs in doc["train_seconds"].items():
        wall = json.loads((tmp_path / "work" / "seed0" / "lpo_ablation" / name / "manifest.json").read_text())
        assert secs == [round(wall["metrics"]["train/wall_s"], 3)], name
    assert set(doc["comparisons"]) == {"default", "reweight_adaptive", "joint"}
    for comp in doc["comparisons"].values():
        assert comp["ndcg@10"]["verdict"] in ("higher", "lower", "within interval")
        # the choice between variants: paired with SFT on the validation users too
        assert comp["valid"]["ndcg@10"]["verdict"] in ("higher", "lower", "within interval")
        assert comp["valid"]["tail_recall@20"]["n"] <= comp["valid"]["ndcg@10"]["n"]
    assert "valid_vs_default" in doc["comparisons"]["joint"] and "valid_vs_default" not in doc["comparisons"]["default"]
    run = tmp_path / "work" / "seed0"
    # joint starts from pre-training, the others from SFT
    parent = lambda v: json.loads((run / "lpo_ablation" / v / "manifest.json").read_text())["parent"]["stage"]  # noqa: E731
    assert parent("joint") == "pretrain" and parent("default") == "sft"
    cfg = json.loads((run / "lpo_ablation" / "reweight_adaptive" / "manifest.json").read_text())["config"]
    assert cfg["reweight"] == "adaptive" and cfg["reweight_strength"] == 1.0
    assert "| reweight_adaptive |" in doc["markdown"]
    # --valid-skip: the same checkpoints (reused), validation over the users after the first 5
    proc = subprocess.run(cmd + ["--valid-skip", "5"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = json.loads((res / "lpo_ablation_smoke.json").read_text())
    assert skipped["valid_skip"] == 5 and "after the first 5" in skipped["markdown"]
    for name, comp in skipped["comparisons"].items():
        assert comp["valid"]["ndcg@10"]["n"] == doc["comparisons"][name]["valid"]["ndcg@10"]["n"] - 5
        assert comp["ndcg@10"] == doc["comparisons"][name]["ndcg@10"]  # test untouched
    # --peers: each row also against the best of the peers' top-100 lists (here: popularity and
    # its reverse, written the way bench/peers_bench.py writes them), paired over the test users
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(run / "data")
    users = prepared.histories("test")[3]
    pop = np.argsort(-prepared.items["popularity"].to_numpy(), kind="stable")[:100]
    peers = tmp_path / "peers"
    peers.mkdir()
    np.savez(peers / "most_popular.npz", user_idx=users, top=np.tile(pop, (len(users), 1)))
    np.savez(peers / "BPR.npz", user_idx=users, top=np.tile(pop[::-1], (len(users), 1)))
    bad = subprocess.run(cmd + ["--peers", str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--peers" in bad.stderr
    # a malformed list is refused before any variant trains (lpo_sigmoid is not trained yet)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "BPR.npz").write_text("not an npz")
    bad = subprocess.run(cmd[:-6] + ["--variants", "lpo_sigmoid", *cmd[-4:], "--peers", str(garbage)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "BPR.npz: not a peer list" in bad.stderr, bad.stderr[-2000:]
    assert not (run / "lpo_ablation" / "lpo_sigmoid").exists()
    proc = subprocess.run(cmd + ["--peers", str(peers)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with_peers = json.loads((res / "lpo_ablation_smoke.json").read_text())
    vs = with_peers["vs_best_peer"]
    assert vs["peer"] in ("most_popular", "BPR") and set(vs["rows"]) == set(doc["rows"])
    assert all(r["n"] == doc["users"] for r in vs["rows"].values())
    assert "Against the best peer" in with_peers["markdown"]
    assert with_peers["provenance"]["inputs"]["peer/BPR"]["kind"] == "file"


def test_ensure_sft_reuses_only_the_run_of_its_protocol(tmp_path, monkeypatch):
    """--protocol pagellm reuses the PageLLM table's run of a seed; a loo ablation pointed at the same
    directory does not reuse it (it would compare against an SFT of another split) but rewrites the
    config with the leave-one-out split and runs the pipeline."""
    import yaml

    sys.path.insert(0, str(ROOT / "bench"))
    import lpo_ablation
    from protocol_table import protocol_config

    config = str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml")
    run = tmp_path / "seed0"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "manifest.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump(protocol_config(config, "pagellm", 0, False)))
    calls = []
    monkeypatch.setattr(lpo_ablation.subprocess, "run", lambda cmd, check: calls.append(cmd))
    assert lpo_ablation.ensure_sft(tmp_path, 0, config, False, "pagellm") == run
    assert calls == []
    lpo_ablation.ensure_sft(tmp_path, 0, config, False, "loo")
    assert len(calls) == 1 and "data,pretrain,sft" in calls[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["split"] == "leave_one_out"


def test_vs_best_peer_pairs_users_by_index_against_the_strongest_peer():
    """--peers: every row against the peer with the highest mean, matched user by user (a peer
    list in another user order still pairs the same users), the ratio of means as in the
    protocol table; seeds that evaluated different users are refused."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT / "bench"))
    from lpo_ablation import vs_best_peer

    users = np.arange(200)
    rng = np.random.default_rng(0)
    base = rng.random(200)
    seed = lambda v: pd.DataFrame({"user_idx": users, "ndcg@10": v})  # noqa: E731
    noise = rng.normal(0, 0.1, 200)
    noise -= noise.mean()  # sft's mean equals the strong peer's; per user it differs both ways
    frames = {"sft": [seed(base + noise), seed(base + 0.1 + noise)], "variant": [seed(base * 2), seed(base * 2)]}
    strong = pd.DataFrame({"user_idx": users, "ndcg@10": base + 0.05}).iloc[::-1]  # reversed user order
    weak = pd.DataFrame({"user_idx": users, "ndcg@10": base * 0.5})
    out = vs_best_peer(frames, {"weak": weak, "strong": strong}, "ndcg@10")
    assert out["peer"] == "strong" and out["cell"]["n"] == 200
    sft, var = out["rows"]["sft"], out["rows"]["variant"]
    assert sft["n"] == var["n"] == 200
    assert sft["diff"] == pytest.approx(0.0, abs=1e-12) and sft["verdict"] == "within interval"
    # the interval is the one of the users matched by index (per-user differences = the noise);
    # pairing by position against the reversed peer would give other per-user differences
    from rlhf_ray import stats

    aligned = stats.paired_diff(base + 0.05 + noise, base + 0.05)
    by_position = stats.paired_diff(base + 0.05 + noise, strong["ndcg@10"].to_numpy())
    assert (sft["lo"], sft["hi"]) == pytest.approx((aligned["lo"], aligned["hi"]))
    assert (by_position["lo"], by_position["hi"]) != pytest.approx((aligned["lo"], aligned["hi"]))
    assert var["rel"] == pytest.approx((2 * base).mean() / (base + 0.05).mean()) and var["verdict"] == "higher"
    assert "strong" in out["markdown"] and "variant x" in out["markdown"]
    frames["sft"][1] = frames["sft"][1].iloc[::-1]
    with pytest.raises(RuntimeError, match="different users"):
        vs_best_peer(frames, {"strong": strong}, "ndcg@10")


def test_train_seconds_reads_each_stages_wall_time_from_its_manifest(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from lpo_ablation import train_seconds

    def checkpoint(name, metrics):
        ck = tmp_path / name
        ck.mkdir()
        if metrics is not None:
            (ck / "manifest.json").write_text(json.dumps({"metrics": metrics}))
        return ck

    assert train_seconds(checkpoint("sft", {"train/wall_s": 587.84949, "elapsed_s": 514.4})) == 587.849
    assert train_seconds(checkpoint("ppo", {"wall_s": 0.0426})) == 0.043  # a smoke run's hundredths are kept
    assert train_seconds(checkpoint("old", {"elapsed_s": 3.0})) is None  # a manifest without a wall time
    assert train_seconds(checkpoint("absent", None)) is None
    bad = checkpoint("bad", {})
    (bad / "manifest.json").write_bytes(b"\xff\xfe")  # not UTF-8: None, not an exception
    assert train_seconds(bad) is None
