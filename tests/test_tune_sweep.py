"""A real Ray Tune run of tune_configs/smoke.yaml through the CLI: interrupted with Ctrl-C
(SIGINT) after a trial finished, then rerun: finished trials are not rerun, and the sweep
writes its table, plots, Pareto front, test comparison and a servable best checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def cli(out: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_ray.cli", "tune", "--config", str(SMOKE), "--out", str(out), "--num-cpus", "2"]


def result_lines(out: Path, trial: str) -> list[dict]:
    files = list((out / "tune").glob(f"*{trial}*/result.json"))
    assert len(files) == 1, (trial, files)
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def wait_for_a_finished_trial(proc: subprocess.Popen, out: Path, log: Path, timeout: float = 600) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = sorted((out / "trials").glob("*/lpo/manifest.json"))  # the trial's last stage exported
        if done:
            return done
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before any trial finished:\n{log.read_text()[-3000:]}")
        time.sleep(2)
    pytest.fail("no trial finished in time")


@pytest.mark.slow  # about 3.5 min on 2 shared cores; real Tune runs in the default suite in test_stage_reporting
def test_smoke_sweep_interrupted_then_resumed(tmp_path):
    from matplotlib.image import imread

    from rlhf_ray.checkpoint import load_checkpoint, verify_checkpoint

    out = tmp_path / "sweep"
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cli(out), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
    try:
        finished = wait_for_a_finished_trial(proc, out, log)
        time.sleep(3)  # let Tune record the trial's end
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = log.read_text()
    trials_done = [m.parent.parent.name for m in finished]
    if rc == 0:
        pytest.fail("the sweep finished before it could be interrupted; nothing to resume:\n" + first[-2000:])
    assert rc == 2 and "rerun the same command to continue" in first, first[-3000:]
    before = {t: ((out / "trials" / t / "lpo" / "manifest.json").stat().st_mtime_ns, len(result_lines(out, t)))
              for t in trials_done}

    second = subprocess.run(cli(out), capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "continuing the experiment" in second.stdout
    for t, (mtime, n) in before.items():  # a finished trial was neither retrained nor rerun by Tune
        assert (out / "trials" / t / "lpo" / "manifest.json").stat().st_mtime_ns == mtime
        assert len(result_lines(out, t)) == n

    table = pd.read_csv(out / "results.csv")
    tuned = table[table["trial"] != "default"]
    assert len(tuned) == 4 and (table["trial"] == "default").sum() == 1
    assert set(table["status"]) <= {"completed", "stopped"}
    for t in tuned["trial"]:  # every evaluation reported the validation metrics and the objective
        lines = result_lines(out, t)
        assert lines and all("objective" in r and "val/ndcg@10" in r and "val/recall@20" in r and
                             "val/tail_recall@20" in r for r in lines)
        ppo = [r for r in lines if r["stage_index"] == 0]
        assert ppo and all("val/page_ild" in r and "reward/total" in r and "kl/per_page" in r for r in ppo[1:])
    completed = table[table["status"] == "completed"]
    assert len(completed) >= 2  # ASHA keeps at least the top trial of each rung going, plus the default
    for t in completed["trial"]:  # a completed trial closes with its final policy evaluated
        if t != "default":
            assert result_lines(out, t)[-1]["stage_index"] == 2 and result_lines(out, t)[-1]["final"] == 1

    summary = json.loads((out / "sweep.json").read_text())
    best = summary["best"]
    assert best["trial"] in set(completed["trial"])
    assert best["objective"] == pytest.approx(completed["objective"].max())
    ck = load_checkpoint(out / "best")  # the exported policy loads (rlhf-ray serve --checkpoint OUT/best)
    assert ck.model is not None and ck.vocab.n_items > 0
    assert verify_checkpoint(out / "best")["id"] == verify_checkpoint(best["policy"])["id"]
    test = summary["test"]
    assert test["protocol"] == "loo" and test["users"] > 0
    for k in ("ndcg@10", "recall@20", "tail_recall@20"):
        b = test["best"][k]
        assert b["lo"] <= b["mean"] <= b["hi"] and test["best_minus_default"][k]["verdict"] in (
            "higher", "lower", "within interval")

    pareto = pd.read_csv(out / "pareto.csv") if (out / "pareto.csv").stat().st_size > 1 else pd.DataFrame()
    assert set(pareto.get("trial", [])) <= set(completed["trial"]) and summary["pareto"] == list(pareto.get("trial", []))
    index = json.loads((out / "plots" / "index.json").read_text())
    names = [e["file"] for e in index]
    assert "curves.png" in names and "pareto.png" in names and sum(n.startswith("objective_vs_") for n in names) == 3
    for e in index:
        img = imread(out / "plots" / e["file"])
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and e["title"]
    md = (out / "results.md").read_text()
    assert "| trial |" in md and "Test split" in md and best["trial"] in md


@pytest.mark.slow
def test_pbt_smoke_sweep_exploits_a_saved_ppo_state(tmp_path):
    """PBT over the KL weight and reward mix: a weak trial resumes PPO from a strong trial's
    saved state with its own new knob values (the orchestrator logs the adoption)."""
    import yaml

    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(name="smoke-pbt", trial=["ppo"], include_default=False, num_samples=4, max_concurrent=4,
               scheduler={"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25},
               space={"ppo.kl_coef": {"loguniform": [0.01, 0.5]}, "ppo.reward.alpha": {"uniform": [0.0, 1.0]}})
    raw["overrides"]["ppo"].update(iterations=4, eval_every=1, save_every=1)
    raw["base"] = str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml")
    f = tmp_path / "pbt.yaml"
    f.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "tune", "--config", str(f), "--out", str(out),
                           "--no-test"], capture_output=True, text=True, cwd=ROOT, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "adopted from" in log, "no PBT exploit happened"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and (table["status"] == "completed").all()
    assert json.loads((out / "sweep.json").read_text())["best"]["trial"] in set(table["trial"])
