"""Seconds one PPO iteration spends moving data between roles, and the bytes through the driver.

    python bench/ppo_data_movement.py --sft SFT_DIR --data DATA_DIR [--batch 64] [--iterations 12] [--smoke]

The role actors are replaced by echo actors that answer every call at once with outputs of the
real shapes and dtypes (pages (B, K), log-probs, values, rewards; the policy publishes a state
dict of the SFT model's size), so an iteration's wall time is what the controller's call pattern
costs by itself: Ray calls, serialisation, object-store transfers (the prompt batch, rollouts,
the role answers into the advantage task, the Experience out of it, weights), plus building each
rank's prompts and (b, N) seen-item mask where the real roles build them (rollout, reference,
critic, and the policy and critic trainers). The advantage arithmetic itself (``time/assemble_s``,
timed inside the task) is subtracted: ``movement_s``. Median over the iterations after two
warm-up ones; the per-phase seconds and ``perf/driver_*`` (what the driver fetched and put,
:mod:`actors.ledger`) are medians too.

Prints one JSON line; writes bench/results/ppo_data_movement.json through bench/provenance.py
(``--smoke``: 3 iterations of 8 pages, to the smoke directory).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_common import Run, bench_env, results_dir  # noqa: E402

bench_env()

import torch  # noqa: E402

from actors.experience import RefLogprobs, RewardMix, RewardScores, Rollout, Values  # noqa: E402
from actors.group import BaseActor  # noqa: E402
from actors.orchestrator import PHASES, PPOOrchestrator  # noqa: E402

MIX = RewardMix(0.5, 0.5)


def _vocab(sft: str):
    from rlhf_ray.checkpoint import local_dir
    from rlhf_ray.tokens import load_tokenizer

    return load_tokenizer(local_dir(sft) / "tokenizer")[1]


class EchoPolicy(BaseActor):
    distributed = True

    def setup(self, sft, cfg, steps, *_):
        from rlhf_ray.checkpoint import load_checkpoint

        self.vocab = _vocab(sft)
        self.state = {k: v.clone() for k, v in load_checkpoint(sft).model.state_dict().items()}
        return {}

    def publish_weights(self):
        import ray

        return [ray.put(self.state)]

    def train(self, batch, exp, epochs, seed):
        batch.prompts(self.vocab)  # what a real trainer builds for its rows
        return {"policy_loss": 0.0, "value_loss": 0.0}


class EchoCritic(EchoPolicy):
    def values(self, batch, rollout):
        batch.prompts(self.vocab)
        return Values(torch.zeros(rollout.pages.shape))


class EchoReference(BaseActor):
    def setup(self, sft, *_):
        self.vocab = _vocab(sft)
        return {}

    def logprobs(self, batch, rollout):
        batch.prompts(self.vocab)
        return RefLogprobs(torch.zeros(rollout.pages.shape))


class EchoReward(BaseActor):
    def setup(self, *_):
        return {"kind": "Echo", "mix": {}, "max_history": None}

    def score(self, batch, rollout):  # the real reward reads the histories, not the prompts
        b = rollout.pages.shape[0]
        return RewardScores(torch.zeros(b), torch.zeros(rollout.pages.shape), torch.zeros(b), MIX)


class EchoRollout(BaseActor):
    def setup(self, sft, gen, seed):
        self.vocab, self.K = _vocab(sft), gen.page_size
        return {}

    def load_weights(self, state):
        return len(state)

    def generate(self, batch, iteration):
        b, n = batch.prompts(self.vocab).blocked.shape
        return Rollout(torch.stack([torch.randperm(n)[: self.K] for _ in range(b)]), torch.zeros(b, self.K))


class EchoOrchestrator(PPOOrchestrator):
    ROLE_CLASSES = {"policy": EchoPolicy, "critic": EchoCritic, "reference": EchoReference, "reward": EchoReward,
                    "rollout": EchoRollout}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=64, help="rollout_batch_size B")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--out", default="/tmp/ppo-data-movement")
    p.add_argument("--smoke", "--smoke-test", dest="smoke", action="store_true",
                   help="3 iterations of 8 pages; result to the smoke directory")
    a = p.parse_args()
    if a.smoke:
        a.batch, a.iterations = 8, 3
    from rlhf_ray.config import PPOConfig
    from rlhf_ray.rayutil import init_ray

    run = Run(inputs={"sft": a.sft, "data": a.data})
    init_ray(num_cpus=2, log_to_driver=False)
    cfg = PPOConfig.from_dict({"rollout_batch_size": a.batch, "policy": {"train": {"batch_size": a.batch}},
                               "critic": {"train": {"batch_size": a.batch}}})
    orch = EchoOrchestrator(cfg, a.sft, "rule", a.data, a.out, log=lambda s: None)
    orch.start()
    try:
        rows = [orch.iteration(i) for i in range(a.iterations)][2:]
    finally:
        orch.shutdown()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith(("time/", "perf/driver_"))}
    med["movement_s"] = statistics.median(r["time/iteration_s"] - r["time/assemble_s"] for r in rows)
    out = {"batch": a.batch, "n_items": orch.vocab.n_items, "page_size": cfg.page_size,
           **{k: round(v, 4) for k, v in med.items()}}
    print(json.dumps(out))
    print("phase (median s): " + "  ".join(f"{ph} {med[f'time/{ph}_s']:.4f}" for ph in PHASES)
          + f"  | iteration {med['time/iteration_s']:.4f}  movement {med['movement_s']:.4f}"
          + f"  | driver get {med['perf/driver_get_bytes']:.0f} B, put {med['perf/driver_put_bytes']:.0f} B")
    path = run.write("ppo_data_movement", {
        "what": "PPO iteration with echo roles: seconds per phase (data movement only) and driver bytes",
        "smoke": a.smoke, "settings": {"batch": a.batch, "iterations": a.iterations, "measured": len(rows)},
        "results": out, "iterations": rows}, results_dir=results_dir(a.smoke))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
