"""Killed processes leave nothing that loads as complete, and stop their Ray processes.

* SIGKILL at random moments while a process rewrites a checkpoint (``save_checkpoint``) or
  PPO's resumable state (``RunState``) over and over: afterwards the checkpoint verifies and
  is the last or the next write, and the state resumed is the newest complete one.
* SIGTERM to ``rlhf-ray serve`` (what Kubernetes and systemd send) shuts its Ray down as
  Ctrl-C does: no process of its Ray session is left running.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_ray.checkpoint import MANIFEST, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]

WRITER = r"""
import sys
from pathlib import Path
mode, src, target = sys.argv[1:4]
if mode == "checkpoint":
    from rlhf_ray.checkpoint import load_checkpoint, save_checkpoint
    ck = load_checkpoint(src)
    i = 0
    while True:
        i += 1
        save_checkpoint(target, stage="sft", model=ck.model, tokenizer=ck.tokenizer, vocab=ck.vocab,
                        catalog=ck.catalog, config={}, data_fingerprint="x", metrics={"write": i})
        print("WROTE", i, flush=True)
else:
    from actors.state import RunState
    st = RunState(target, keep=2)
    def engines(d):
        Path(d, "policy").mkdir(parents=True)
        Path(d, "policy", "state.pt").write_bytes(b"w" * (4 << 20))
    i = 0
    while True:
        i += 1
        st.write(i, engines, {"iteration": i})
        print("WROTE", i, flush=True)
"""


def _kill_while_writing(mode: str, src: str, target: Path, delay_s: float) -> int:
    """Start a writer, SIGKILL it ``delay_s`` after its first complete write; the last write it reported."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, mode, src, str(target)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:  # (libraries print too)
            if line.startswith("WROTE "):
                break
        else:
            raise AssertionError(f"writer failed before its first write (rc {proc.poll()})")
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        rest = [int(ln.split()[1]) for ln in proc.stdout.read().splitlines() if ln.startswith("WROTE ")]
    finally:
        proc.kill()
    return rest[-1] if rest else 1


@pytest.mark.parametrize("mode", ["checkpoint", "state"])
def test_sigkill_during_writes_leaves_the_last_complete_one(mode, tiny_sft, tmp_path):
    from actors.state import RunState, read_controller

    target = tmp_path / ("ckpt" if mode == "checkpoint" else "run.state")
    rnd = random.Random(7)
    for _ in range(2):
        reported = _kill_while_writing(mode, str(tiny_sft), target, rnd.uniform(0.0, 0.6))
        if mode == "checkpoint":
            got = verify_checkpoint(target)["metrics"]["write"]  # complete, hashes match
        else:
            latest = RunState(target).latest()
            got = read_controller(latest)["iteration"]
            assert (Path(latest) / "policy" / "state.pt").stat().st_size == 4 << 20
        # complete (verified above) and never older than the last write the writer finished
        assert got >= reported, (reported, got, sorted(p.name for p in target.parent.iterdir()))
        names = [p.name for p in target.parent.iterdir()]
        # leftovers of the killed write carry hidden temp names that no reader opens
        assert all(n.startswith(".") for n in names if n not in {target.name} and not n.endswith("sft")), names


def test_interrupted_replacement_is_undone(tiny_sft, tmp_path):
    """The one window of a replacement (the old checkpoint renamed away, the new one not yet in
    place) is undone on the next read: the previous checkpoint is what loads."""
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_sft, tmp_path / ".ckpt.old-deadbeef")  # as the killed writer left it
    shutil.copytree(tiny_sft, tmp_path / ".ckpt.tmp-1-deadbeef")
    assert verify_checkpoint(target)["id"] == json.loads((tiny_sft / MANIFEST).read_text())["id"]
    assert target.is_dir() and not (tmp_path / ".ckpt.old-deadbeef").exists()


def _ray_session_processes(pid: int) -> list:
    """The process ``pid`` started (recursively): its Ray GCS, raylet, agents, workers, replicas."""
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow  # Serve start-up: about a minute on 2 shared cores
def test_sigterm_to_serve_stops_every_ray_process_it_started(tiny_sft, tmp_path):
    import psutil

    from rlhf_ray.rayutil import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_ray.cli", "serve", "--checkpoint", str(tiny_sft),
                             "--port", str(port), "--num-cpus", "2", "--cpus-per-replica", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        else:
            raise AssertionError("serve exited before serving:\n" + "".join(lines[-30:]))
        started = _ray_session_processes(proc.pid)
        names = " ".join(p.name() for p in started)
        assert "raylet" in names and "gcs_server" in names, names  # it did start a Ray of its own
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(started, timeout=30)
    left = [f"{p.pid} {p.name()}" for p in alive]
    for p in alive:  # not leave them to the next test either
        p.kill()
    assert not left, f"orphaned Ray processes after SIGTERM (rc {rc}): {left}"
    assert rc in (0, 143), rc
