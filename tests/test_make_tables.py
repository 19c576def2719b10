"""`make tables` (the README's two protocol tables in one command) runs commands the bench scripts accept.

The target takes hours, so the test reads its recipe (`make -n`) and parses every bench command
with that script's own argument parser: a renamed flag, a wrong data path or a missing grid file
fails here rather than two hours into a run.
"""
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def recipe(**variables) -> list[list[str]]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    argv = ["make", "-n", "--no-print-directory", "tables", *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def bench_calls(lines):
    """(script stem, parsed args) of every `.venv/bin/python bench/X.py ...` line, in order."""
    import peers_bench
    import protocol_table

    parsers = {"protocol_table": protocol_table.parse_args, "peers_bench": peers_bench.parse_args}
    calls = []
    for words in lines:
        if len(words) >= 2 and words[0].endswith("/python") and words[1].startswith("bench/"):
            stem = Path(words[1]).stem
            calls.append((stem, parsers[stem](words[2:]) if stem in parsers else words[2:]))
    return calls


def test_tables_trains_ours_then_peers_then_rereads_ours_with_the_peers_for_both_protocols():
    calls = bench_calls(recipe(SEEDS="3,4"))
    assert [c[0] for c in calls] == ["protocol_table", "peers_bench", "protocol_table"] * 2 + ["readme_tables"]
    for i, protocol in enumerate(("loo", "pagellm")):
        (_, train), (_, peers), (_, reread) = calls[3 * i: 3 * i + 3]
        assert train.protocol == peers.protocol == reread.protocol == protocol
        assert train.seeds == reread.seeds == [3, 4]
        assert not train.no_train and reread.no_train and not train.smoke and not peers.smoke
        assert train.config == reread.config and (ROOT / train.config).is_file()
        # the peers train on the split our first seed's pipeline prepared (protocol_table's default work dir)
        assert Path(peers.data) == Path("runs/bench") / protocol / "seed3" / "data"
        # ... and write their lists where the second pass of protocol_table reads them
        assert Path(peers.out_dir) == ROOT / "runs" / "peers" / protocol and reread.peers_dir is None
        grid = json.loads((ROOT / peers.grid_from).read_text())["peers"]
        assert {"BPR", "LightGCN", "GRU4Rec", "SASRec"} <= {m for m, p in grid.items() if "selected" in p}


def test_tables_defaults_to_three_seeds_of_the_selected_config():
    calls = bench_calls(recipe())
    train = calls[0][1]
    assert train.seeds == [0, 1, 2] and train.config == "bench/configs/ml-100k-selected.yaml"
    assert Path(calls[1][1].data).parts[-2] == "seed0"
