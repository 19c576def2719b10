"""``rlhf-ray serve`` end to end in a subprocess: it starts its own Ray, serves a page on
127.0.0.1, and shuts down cleanly on Ctrl-C (SIGINT)."""
import os
import signal
import subprocess
import sys
import time

import httpx

from rlhf_ray.rayutil import free_port

START_S = 240  # upper bound for Ray + Serve start on a busy 2-core box (not a timing assertion)


def test_cli_serves_and_stops_on_ctrl_c(tiny_sft, synth_data, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_ray.cli", "serve", "--checkpoint", str(tiny_sft), "--data", str(synth_data),
         "--port", str(port), "--num-cpus", "2", "--max-batch-size", "4", "--batch-wait-ms", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready = f"at http://127.0.0.1:{port}/v1/rank"  # printed once deployed
        deadline = time.monotonic() + START_S
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                if health.status_code == 200 and ready in log_path.read_text():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None and health.status_code == 200, \
            f"server did not come up:\n{log_path.read_text()[-3000:]}"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/rank", json={"history": [], "k": 3}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=30).json()
        assert model["stats"]["max_batch_size"] == 4 and model["stats"]["batch_wait_timeout_s"] == 0.001
        assert ready in log_path.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
