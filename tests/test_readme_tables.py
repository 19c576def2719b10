"""README's results tables are generated from bench/results/*.json and must match them."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_generated_blocks_match_the_results_json():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_tables.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout


def test_renderer_replaces_only_marked_blocks(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import readme_tables

    text = ("intro\n<!-- BEGIN bench:protocol_loo -->\nstale numbers 0.1234\n<!-- END bench:protocol_loo -->\n"
            "outro 0.5\n")
    new = readme_tables.render_readme(text)
    assert new.startswith("intro\n<!-- BEGIN bench:protocol_loo -->\n") and new.endswith(
        "<!-- END bench:protocol_loo -->\noutro 0.5\n")
    assert "stale numbers" not in new


def test_every_committed_result_records_its_provenance():
    """Every JSON in bench/results/ names the commit, the exact command and the load it ran under."""
    import json

    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    for f in files:
        doc = json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name}: bare {c}"))
        prov = doc.get("provenance") or {}
        assert prov.get("git", {}).get("commit"), f"{f.name}: no git commit"
        assert prov.get("command"), f"{f.name}: no command"
        assert prov.get("load_before") is not None and prov.get("load_after") is not None, f"{f.name}: no load"
        assert "inputs" in prov, f"{f.name}: no input ids"


def test_check_fails_when_a_generated_block_is_gone(tmp_path):
    """A prose edit that swallows a block's markers must not pass --check."""
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- BEGIN bench:protocol_pagellm -->")
    end = text.index("<!-- END bench:protocol_pagellm -->") + len("<!-- END bench:protocol_pagellm -->")
    readme = tmp_path / "README.md"
    readme.write_text(text[:start] + text[end:])
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_tables.py"), "--check", "--readme", str(readme)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "bench:protocol_pagellm" in out.stderr, out.stderr + out.stdout
