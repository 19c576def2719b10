"""The ranker as a real Ray Serve application over real HTTP on 127.0.0.1.

One Serve app at a time (2 CPUs), twice: the model in the HTTP replica, and (marked slow) in a
``RankerModel`` deployment of its own (``separate_model``); each answers the same tests:
pages, batching, every kind of bad request, docs, and in-place reconfigure to another
checkpoint (and to a broken one). The CLI's start-up checks run in a subprocess without Ray.
"""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import torch

from rlhf_ray.checkpoint import load_checkpoint, save_checkpoint
from rlhf_ray.config import ServeConfig
from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.rayutil import free_port

MAX_K = 20
SHORTLIST = 40  # pages among the first slot's 40 best of 120 items: the setting reaches the replica
WAIT_S = 90  # upper bound when polling for a reconfigure to land (never a timing assertion)


# The separate_model half is slow (`make test-slow`): the default suite keeps one Serve app.
@pytest.fixture(scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)],
                ids=["model_in_replica", "separate_model"])
def server(request, tiny_sft, synth_data):
    from ray import serve

    from rlhf_ray.serve.app import deploy, init_serve_ray

    cfg = ServeConfig(checkpoint=str(tiny_sft), data=str(synth_data), port=free_port(), max_k=MAX_K,
                      max_batch_size=16, batch_wait_ms=50.0, max_body_bytes=65536, separate_model=request.param,
                      shortlist=SHORTLIST)
    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:  # the Ray switches init_serve_ray sets end with this module
        for name in ("RAY_worker_niceness", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
            env.delenv(name, raising=False)
        ray = init_serve_ray(cfg, num_cpus=2, log_to_driver=False, _metrics_export_port=metrics_port)
        try:
            deploy(cfg)
            with httpx.Client(base_url=f"http://127.0.0.1:{cfg.port}", timeout=60) as client:
                client.metrics_port = metrics_port
                yield cfg, client
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def data(synth_data):
    return load_prepared(synth_data)


def _items(data) -> list[str]:
    return data.items["item"].astype(str).tolist()


def _row(data, user: str):
    uidx = int(data.users.loc[data.users["user"].astype(str) == user, "user_idx"].iloc[0])
    return data.sequences.loc[data.sequences["user_idx"] == uidx].iloc[0]


def _full_history(data, user: str) -> set[str]:
    """Every item the user rated: the whole row, also past ``end`` (the last positive)."""
    ids = _items(data)
    return {ids[i] for i in _row(data, user)["items"]}


def _assert_page(body: dict, k: int, forbidden=()):
    assert len(body["items"]) == k == len(body["titles"]) == len(body["scores"])
    assert len(set(body["items"])) == k, body["items"]
    assert not set(body["items"]) & set(forbidden), body["items"]
    assert all(s <= 0 for s in body["scores"])


def test_page_for_a_known_user(server, data, tiny_sft):
    cfg, client = server
    user = str(data.users["user"].iloc[3])
    r = client.post("/v1/rank", json={"user_id": user, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    _assert_page(body, 10, forbidden=_full_history(data, user))
    assert body["source"] == "user_history"
    manifest = json.loads((tiny_sft / "manifest.json").read_text())
    assert body["checkpoint_id"] == manifest["id"] and body["stage"] == "sft"
    titles = dict(zip(_items(data), data.items["title"]))
    assert body["titles"] == [titles[i] for i in body["items"]]
    assert client.post("/v1/rank", json={"user_id": user}).json()["k"] == cfg.default_k


def test_page_for_a_history_with_exclude_and_candidates(server, data):
    _, client = server
    ids = _items(data)
    hist, excl, cands = ids[:6], [int(i) for i in ids[6:9]], ids[4:30]  # ids may be ints too
    r = client.post("/v1/rank", json={"history": hist, "k": 7, "exclude": excl, "candidates": cands})
    assert r.status_code == 200, r.text
    body = r.json()
    _assert_page(body, 7, forbidden=hist + [str(i) for i in excl])
    assert set(body["items"]) <= set(cands) and body["source"] == "request_history"


def test_known_users_are_never_served_anything_they_rated(server, data):
    """Items rated after a user's last positive (past ``end``) are seen too: with only those
    items and one unseen item as candidates, the page holds the unseen item alone."""
    _, client = server
    ids = _items(data)
    late = {u: [ids[i] for i in _row(data, u)["items"][int(_row(data, u)["end"]):]]
            for u in data.users["user"].astype(str)}
    late = {u: items for u, items in late.items() if items}
    assert len(late) >= 10, "the fixture data should have users who rated items after their last positive"
    for user, items in list(late.items())[:10]:
        seen = _full_history(data, user)
        unseen = next(i for i in ids if i not in seen)
        for extra in ({}, {"strategy": "sample", "seed": 1}):
            r = client.post("/v1/rank", json={"user_id": user, "k": 3, "candidates": items + [unseen], **extra})
            assert r.status_code == 200, r.text
            assert r.json()["items"] == [unseen], (user, items, r.json())
        page = client.post("/v1/rank", json={"user_id": user, "k": MAX_K}).json()
        _assert_page(page, MAX_K, forbidden=seen)


def test_popularity_for_empty_history_and_unknown_user(server, data):
    _, client = server
    top = data.items.sort_values("popularity", ascending=False, kind="stable")["item"].astype(str).tolist()
    for req in ({"history": []}, {"user_id": "never-seen"}):
        body = client.post("/v1/rank", json={**req, "k": 4}).json()
        assert body["source"] == "popularity" and body["items"] == top[:4], body


def test_sampling_with_a_seed_is_reproducible(server, data):
    _, client = server
    req = {"history": _items(data)[:3], "k": 6, "strategy": "sample", "temperature": 2.0, "seed": 5}
    a, b = (client.post("/v1/rank", json=req).json() for _ in range(2))
    assert a["items"] == b["items"] and a["strategy"] == "sample"
    _assert_page(a, 6, forbidden=req["history"])


def _concurrent(base_url: str, bodies: list[dict]) -> list[httpx.Response]:
    async def go():
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/rank", json=b) for b in bodies))

    return asyncio.run(go())


def test_batching_batches_and_matches_one_at_a_time(server, data):
    cfg, client = server
    ids = _items(data)
    users = data.users["user"].astype(str).tolist()
    bodies = [{"user_id": users[i], "k": 1 + i % MAX_K} if i % 2 else
              {"history": ids[i: i + 1 + i % 7], "k": 1 + (3 * i) % MAX_K, "exclude": ids[40 + i: 42 + i]}
              for i in range(16)]
    before = client.get("/v1/stats").json()["batch_size_histogram"]
    seen_batch = False
    for _ in range(3):  # a loaded machine may spread one burst thinly; three bursts must batch
        together = _concurrent(str(client.base_url), bodies)
        after = client.get("/v1/stats").json()["batch_size_histogram"]
        grown = {int(s): n - before.get(s, 0) for s, n in after.items() if n > before.get(s, 0)}
        if any(s > 1 for s in grown):
            seen_batch = True
            break
    assert seen_batch, f"no batch > 1 among 16 concurrent requests: {after}"
    for body, resp in zip(bodies, together):
        assert resp.status_code == 200, resp.text
        alone = client.post("/v1/rank", json=body).json()
        assert resp.json()["items"] == alone["items"], body
        assert resp.json()["scores"] == pytest.approx(alone["scores"], abs=1e-5)
    model = client.get("/v1/model").json()
    assert model["batch_size_histogram"] == client.get("/v1/stats").json()["batch_size_histogram"]


def test_the_replica_runs_at_the_configured_niceness(server):
    """Ray starts its workers at niceness 15; the embedded Ray of `rlhf-ray serve` starts the
    replica at ServeConfig.worker_niceness (0), so it does not yield the CPU to its own ingress."""
    cfg, client = server
    assert cfg.worker_niceness == 0
    assert client.get("/v1/stats").json()["niceness"] == 0


BAD_BODIES = [
    ("both user_id and history", {"user_id": "1", "history": ["1"]}, 422),
    ("neither user_id nor history", {"k": 3}, 422),
    ("k = 0", {"history": [], "k": 0}, 422),
    ("k above max_k", {"history": [], "k": MAX_K + 1}, 422),
    ("k not an integer", {"history": [], "k": "ten"}, 422),
    ("history not a list", {"history": "1,2"}, 422),
    ("float item id", {"history": [1.5]}, 422),
    ("unknown strategy", {"history": [], "strategy": "beam"}, 422),
    ("temperature 0", {"history": [], "temperature": 0}, 422),
    ("temperature below the floor", {"history": ["1"], "strategy": "sample", "temperature": 5e-324}, 422),
    ("temperature as a string", {"history": [], "temperature": "1"}, 422),
    ("temperature as a boolean", {"history": [], "temperature": True}, 422),
    ("seed of 2**64", {"history": [], "strategy": "sample", "seed": 2**64}, 422),
    ("unknown field", {"history": [], "kk": 3}, 422),
    ("not an object", ["1", "2"], 422),
]


@pytest.mark.parametrize("what,body,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_request_gets_its_4xx(server, what, body, status):
    _, client = server
    r = client.post("/v1/rank", json=body)
    assert r.status_code == status, (what, r.status_code, r.text)
    assert r.json()["detail"]


JSON = "application/json"
# (what, raw body, content type, status, words the message must hold)
RAW_BODIES = [
    ("bare NaN", b'{"history": [], "temperature": NaN}', JSON, 422, "NaN is not a JSON value"),
    ("Infinity", b'{"history": [], "k": Infinity}', JSON, 422, "Infinity is not a JSON value"),
    ("-Infinity in a list", b'{"history": [-Infinity]}', JSON, 422, "-Infinity is not a JSON value"),
    ("NaN user id", b'{"user_id": NaN}', JSON, 422, "NaN"),
    ("number overflowing a float", b'{"history": [], "temperature": 1e400}', JSON, 422, "1e400 is out of range"),
    ("integer of 5000 digits", b'{"history": [' + b"9" * 5000 + b"]}", JSON, 422, "5000 digits"),
    ("lone surrogate", b'{"history": ["\\ud800"]}', JSON, 422, "lone surrogate"),
    ("invalid UTF-8", b'{"history": ["\xff"]}', JSON, 422, "not UTF-8"),
    ("nested 20000 deep", b"[" * 20000 + b"]" * 20000, JSON, 422, "nests too deeply"),
    ("truncated", b'{"history": [', JSON, 422, "not valid JSON"),
    ("trailing data", b'{"history": []} x', JSON, 422, "Extra data"),
    ("empty", b"", JSON, 422, "empty"),
    ("JSON null", b"null", JSON, 422, "valid dictionary"),
    ("text/plain", b'{"history": []}', "text/plain", 415, "application/json"),
    ("form", b"history=1", "application/x-www-form-urlencoded", 415, "application/json"),
]


@pytest.mark.parametrize("what,raw,ctype,status,words", RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_malformed_body_gets_a_clear_4xx(server, what, raw, ctype, status, words):
    _, client = server
    r = client.post("/v1/rank", content=raw, headers={"content-type": ctype})
    assert r.status_code == status, (what, r.status_code, r.text)
    assert words in r.json()["detail"], (what, r.json())


def test_bad_requests_among_good_ones_spoil_nothing(server, data):
    """Bad bodies sent concurrently with good ones: each gets its own answer, no 5xx."""
    _, client = server
    users = data.users["user"].astype(str).tolist()

    async def go():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as c:
            good = [c.post("/v1/rank", json={"user_id": u, "k": 5}) for u in users[:12]]
            bad = [c.post("/v1/rank", content=raw, headers={"content-type": ctype})
                   for _, raw, ctype, _, _ in RAW_BODIES]
            return await asyncio.gather(*good, *bad)

    answers = asyncio.run(go())
    good, bad = answers[:12], answers[12:]
    assert all(r.status_code == 200 and len(r.json()["items"]) == 5 for r in good), [r.text for r in good]
    assert [r.status_code for r in bad] == [b[3] for b in RAW_BODIES]


def test_unknown_items_are_named(server, data):
    _, client = server
    r = client.post("/v1/rank", json={"history": [_items(data)[0], "no-such-item"], "exclude": [999999]})
    assert r.status_code == 422, r.text
    assert r.json()["unknown_items"] == ["999999", "no-such-item"] and "no-such-item" in r.json()["detail"]


def test_wrong_method_and_oversized_bodies(server):
    cfg, client = server
    json_ct = {"content-type": "application/json"}
    assert client.get("/v1/rank").status_code == 405
    huge = {"history": [str(i) for i in range(cfg.max_body_bytes // 4)]}
    r = client.post("/v1/rank", json=huge)
    assert r.status_code == 413 and str(cfg.max_body_bytes) in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(cfg.max_body_bytes // 1000 + 2):
            yield b" " * 1000

    assert client.post("/v1/rank", content=chunks(), headers=json_ct).status_code == 413
    assert client.get("/healthz").status_code == 200  # and the replica is fine


def test_health_model_and_docs(server, tiny_sft):
    cfg, client = server
    manifest = json.loads((tiny_sft / "manifest.json").read_text())
    assert client.get("/healthz").json() == {"status": "ok", "checkpoint_id": manifest["id"], "stage": "sft"}
    model = client.get("/v1/model").json()
    assert model["id"] == manifest["id"] and model["stage"] == "sft" and model["created"] == manifest["created"]
    assert model["metrics"]["val/recall@10"] == pytest.approx(manifest["metrics"]["val/recall@10"])
    assert model["max_k"] == MAX_K and model["known_users"] > 0 and model["reconfigure_error"] is None
    assert model["shortlist"] == SHORTLIST
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/rank", "/v1/model", "/healthz", "/v1/stats"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_latency_breakdown_in_stats_and_prometheus(server, data):
    """Each page's time by stage: running sums in /v1/stats, histograms on Ray's metrics port."""
    from rlhf_ray.serve.latency import STAGES

    _, client = server
    before = client.get("/v1/stats").json()
    users = data.users["user"].astype(str).tolist()
    _concurrent(str(client.base_url), [{"user_id": u, "k": 5} for u in users[:8]])
    after = client.get("/v1/stats").json()
    assert after["timed_requests"] - before["timed_requests"] == 8
    grew = {st: after["stage_ms_sum"][st] - before["stage_ms_sum"][st] for st in STAGES}
    assert set(grew) == set(STAGES) and all(v >= 0 for v in grew.values()) and grew["model"] > 0, grew
    assert grew["total"] >= grew["model"]
    deadline, text = time.monotonic() + WAIT_S, ""
    want = [f'stage="{st}"' for st in STAGES]
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        text = httpx.get(f"http://127.0.0.1:{client.metrics_port}/metrics", timeout=10).text
        stage_lines = [line for line in text.splitlines() if line.startswith("ray_rlhf_ray_rank_stage_ms_count")]
        if all(any(w in line for line in stage_lines) for w in want) and "ray_rlhf_ray_rank_batch_size" in text:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"stage metrics not exported within {WAIT_S} s: {stage_lines}")
    assert all('deployment="Ranker"' in line for line in stage_lines), stage_lines[:2]


def _other_checkpoint(src, out):
    """A copy of ``src`` with perturbed weights, saved as a new (ppo-stage) checkpoint."""
    ck = load_checkpoint(src)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in ck.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return save_checkpoint(out, stage="ppo", model=ck.model, tokenizer=ck.tokenizer, vocab=ck.vocab,
                           catalog=ck.catalog, config=ck.manifest["config"],
                           data_fingerprint=ck.manifest["data_fingerprint"], metrics={"note": 1.0})


def _poll_model(client, until, what: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        model = client.get("/v1/model").json()
        if until(model):
            return model
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {WAIT_S} s; last /v1/model: {model}")


def test_reconfigure_swaps_checkpoint_in_place(server, data, tiny_sft, tmp_path_factory):
    from rlhf_ray.serve.app import deploy

    cfg, client = server
    users = data.users["user"].astype(str).tolist()[:8]
    before_model = client.get("/v1/model").json()
    before = [client.post("/v1/rank", json={"user_id": u, "k": 10}).json()["items"] for u in users]

    other = _other_checkpoint(tiny_sft, tmp_path_factory.mktemp("ckpt2") / "ppo")
    new_id = json.loads((other / "manifest.json").read_text())["id"]
    deploy(cfg, user_config_override={"checkpoint": str(other), "max_batch_size": 8})
    model = _poll_model(client, lambda m: m["id"] == new_id, "the new checkpoint")
    assert model["stage"] == "ppo" and model["requested_checkpoint"] == str(other)
    assert model["stats"]["replica"] == before_model["stats"]["replica"], "the replica was restarted"
    assert model["model_replica"] == before_model["model_replica"], "the model's replica was restarted"
    assert (model["model_replica"] == model["stats"]["replica"]) != cfg.separate_model
    assert model["stats"]["max_batch_size"] == 8
    after = [client.post("/v1/rank", json={"user_id": u, "k": 10}).json() for u in users]
    assert all(a["checkpoint_id"] == new_id and a["stage"] == "ppo" for a in after)
    assert [a["items"] for a in after] != before

    # a tampered checkpoint: refused, the current one keeps serving, the error is reported
    bad = tmp_path_factory.mktemp("bad") / "ppo"
    shutil.copytree(other, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    deploy(cfg, user_config_override={"checkpoint": str(bad), "max_batch_size": 8})
    model = _poll_model(client, lambda m: m["reconfigure_error"], "the reconfigure error")
    assert "sha256" in model["reconfigure_error"] and model["id"] == new_id
    assert model["requested_checkpoint"] == str(bad)
    r = client.post("/v1/rank", json={"user_id": users[0], "k": 10})
    assert r.status_code == 200 and r.json()["checkpoint_id"] == new_id

    deploy(cfg)  # back to the original user_config
    _poll_model(client, lambda m: m["id"] == before_model["id"] and m["reconfigure_error"] is None,
                "the original checkpoint")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "serve", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_refuses_a_missing_or_tampered_checkpoint(tiny_sft, tmp_path):
    r = _cli("--checkpoint", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr and "nope" in r.stderr, r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sft, bad)
    (bad / "catalog.parquet").write_bytes(b"not parquet")
    r = _cli("--checkpoint", str(bad), "--port", "1")
    assert r.returncode == 2 and "catalog.parquet" in r.stderr and "sha256" in r.stderr, r.stderr
    r = _cli("--checkpoint", str(tiny_sft), "--max-k", "0")
    assert r.returncode == 2 and "max_k" in r.stderr, r.stderr


@pytest.mark.parametrize("separate", [False, True])
def test_cli_prints_a_deployable_config(tiny_sft, synth_data, separate):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    r = _cli("--checkpoint", str(tiny_sft), "--data", str(synth_data), "--replicas", "2",
             "--max-batch-size", "8", "--batch-wait-ms", "5", "--print-config", *(["--separate-model"] * separate))
    assert r.returncode == 0, r.stderr
    conf = yaml.safe_load(r.stdout)
    app = conf["applications"][0]
    assert app["import_path"] == "rlhf_ray.serve.app:build_app" and conf["http_options"]["host"] == "127.0.0.1"
    assert app["args"]["checkpoint"] == str(tiny_sft) and app["args"]["data"] == str(synth_data)
    deps = {d["name"]: d for d in app["deployments"]}
    assert all(d["num_replicas"] == 2 for d in deps.values())
    if separate:
        assert app["args"]["separate_model"] is True and set(deps) == {"Ranker", "RankerModel"}
        assert deps["Ranker"]["user_config"] == {"max_batch_size": 8, "batch_wait_ms": 5.0}
        assert deps["RankerModel"]["user_config"] == {"checkpoint": str(tiny_sft)}
        assert deps["Ranker"]["ray_actor_options"]["num_cpus"] == 0.5
    else:
        assert set(deps) == {"Ranker"}
        assert deps["Ranker"]["user_config"] == {"checkpoint": str(tiny_sft), "max_batch_size": 8,
                                                 "batch_wait_ms": 5.0}
    ServeDeploySchema.model_validate(conf)  # what serve deploy / a RayService accepts


def test_a_user_config_key_no_deployment_takes_is_refused_before_deploying(tiny_sft):
    from rlhf_ray.config import ConfigError
    from rlhf_ray.serve.app import deploy

    with pytest.raises(ConfigError, match="unknown key 'checkpoints'"):
        deploy(ServeConfig(checkpoint=str(tiny_sft), separate_model=True), user_config_override={"checkpoints": "x"})
