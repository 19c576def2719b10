"""Shared fixtures. Environment first: Ray on loopback without an auth token, DeepSpeed's
JIT ops cached across runs, one BLAS thread per process on a 2-core box."""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlhf-ray" / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

def pytest_sessionfinish(session, exitstatus):
    """Leave nothing native running into interpreter shutdown: a Ray driver that a test left
    connected, and the 1-rank process group in-process DeepSpeed runs create (alive at exit,
    either can crash the finished run with a segfault)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "torch.distributed" in sys.modules:
        from rlhf_ray.engine import destroy_process_group

        destroy_process_group()


TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 96, "dropout": 0.0, "text_vocab_size": 300}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small prepared synthetic dataset (seeded)."""
    from rlhf_ray.config import DataConfig
    from rlhf_ray.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare(DataConfig(dataset="synthetic", synthetic_users=80, synthetic_items=120, seed=3), out,
            log=lambda s: None)
    return out


def tiny_sft_config(**train):
    from rlhf_ray.config import SFTConfig

    t = {"epochs": 1, "batch_size": 16, "progress": False, "tensorboard": False, "max_steps": 3, **train}
    return SFTConfig.from_dict({"model": TINY_MODEL, "train": t, "max_history": 20, "page_size": 5})


@pytest.fixture(scope="session")
def tiny_sft(synth_data, tmp_path_factory) -> Path:
    """A tiny SFT checkpoint trained in-process for a few steps."""
    from rlhf_ray.stages import sft

    out = tmp_path_factory.mktemp("ckpt") / "sft"
    sft.run(tiny_sft_config(), str(synth_data), str(out))
    return out


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    """``rlhf-ray ARGS`` in a subprocess (the real CLI), output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, **kw)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``rlhf-ray pipeline --smoke`` run, shared by the tests that read it: (run dir, process).
    Read it, never write into it (copy it first)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    return out, run_cli(["pipeline", "--smoke", "--out", str(out)])


@pytest.fixture(params=["gpt2-step", "gpt2-step/bucket-per-length", "hf-forward", "hf-forward/bucket-per-length"])
def decode_path(request, monkeypatch):
    """Each page-decoding route of :mod:`rlhf_ray.kvdecode`: the hand-written GPT-2 step or the HF
    forward with its cache, with the length buckets the cost model picks or one bucket per length."""
    from rlhf_ray import kvdecode

    if request.param.startswith("hf"):
        monkeypatch.setattr(kvdecode, "fast_path", lambda model: False)
    if request.param.endswith("bucket-per-length"):
        monkeypatch.setattr(kvdecode, "BUCKET_PREFILL_COST", 0)
        monkeypatch.setattr(kvdecode, "BUCKET_STEP_COST", 0)
    return request.param
