"""``rlhf-ray serve`` end to end in a subprocess: it starts its own Ray, serves pages on
127.0.0.1 through the ingress asked for, forms batches under a concurrent burst, and shuts down
cleanly on Ctrl-C (SIGINT). The default suite runs Ray's HAProxy mode (an ``haproxy`` process
owns the port); Serve's proxy actor, the local default, serves every test of test_serve.py and
runs here with ``make test-slow``."""
import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from rlhf_ray.rayutil import free_port

START_S = 240  # upper bound for Ray + Serve start on a busy 2-core box (not a timing assertion)


def _listener(port: int) -> str:
    """Name of the process listening on 127.0.0.1:``port``."""
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return psutil.Process(c.pid).name()
    return ""


async def _burst(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        rs = await asyncio.gather(*(c.post("/v1/rank", json={"history": [], "k": 3}) for _ in range(n)))
    return [r.status_code for r in rs]


@pytest.mark.parametrize("ingress", [pytest.param("proxy", marks=pytest.mark.slow), "haproxy"])
def test_cli_serves_batches_and_stops_on_ctrl_c(tiny_sft, synth_data, tmp_path, ingress):
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_ray.cli", "serve", "--checkpoint", str(tiny_sft), "--data", str(synth_data),
         "--port", str(port), "--num-cpus", "2", "--max-batch-size", "4", "--batch-wait-ms", "1",
         "--ingress", ingress],
        stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        ready = f"at {url}/v1/rank"  # printed once deployed
        deadline = time.monotonic() + START_S
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                if health.status_code == 200 and ready in log_path.read_text():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None and health.status_code == 200, \
            f"server did not come up:\n{log_path.read_text()[-3000:]}"
        owner = _listener(port)
        assert (owner == "haproxy") == (ingress == "haproxy"), f"port {port} is held by {owner!r}"
        r = httpx.post(f"{url}/v1/rank", json={"history": [], "k": 3}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        assert asyncio.run(_burst(url, 24)) == [200] * 24
        model = httpx.get(f"{url}/v1/model", timeout=30).json()
        assert model["stats"]["max_batch_size"] == 4 and model["stats"]["batch_wait_timeout_s"] == 0.001
        hist = {int(s): n for s, n in model["batch_size_histogram"].items()}
        assert sum(s * n for s, n in hist.items()) == 1 + 24 + 0  # every request in exactly one batch
        assert max(hist) > 1, hist  # 24 requests at once, one model: some had company
        assert ready in log_path.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_ingress_switches_go_into_the_environment_before_ray(monkeypatch):
    import ray

    from rlhf_ray.config import ConfigError, ServeConfig
    from rlhf_ray.serve.app import use_ingress

    keys = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
    for k in keys:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    use_ingress(ServeConfig(checkpoint="c", ingress="haproxy"))
    assert [os.environ[k] for k in keys] == ["1", "1"]
    use_ingress(ServeConfig(checkpoint="c", ingress="proxy"))
    assert [os.environ[k] for k in keys] == ["0", "0"]
    use_ingress(ServeConfig(checkpoint="c", ingress="haproxy", address="ray://head:10001"))  # the cluster decides
    assert [os.environ[k] for k in keys] == ["0", "0"]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # too late to switch: said, not ignored
    use_ingress(ServeConfig(checkpoint="c", ingress="proxy"))  # already what runs
    with pytest.raises(ConfigError, match="ingress: 'haproxy' needs .*before Ray starts"):
        use_ingress(ServeConfig(checkpoint="c", ingress="haproxy"))
    with pytest.raises(ConfigError, match="ingress"):
        ServeConfig.from_dict({"checkpoint": "c", "ingress": "nginx"})
