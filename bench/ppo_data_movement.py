"""Seconds one PPO iteration spends moving data between roles (not a test; prints a JSON line).

    python bench/ppo_data_movement.py --sft SFT_DIR --data DATA_DIR [--batch 64] [--iterations 12]

The role actors are replaced by echo actors that answer every call at once with outputs of the
real shapes and dtypes (pages (B, K), log-probs, values, rewards; the policy publishes a state
dict of the SFT model's size), so an iteration's wall time is what the controller's call
pattern costs by itself: Ray calls, serialisation, object-store transfers (prompts with their
B x catalogue mask, rollouts, experience, weights). The driver's GAE step (``time/advantage_s``)
is subtracted. Median over the iterations after two warm-up ones.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

from actors.experience import RefLogprobs, RewardMix, RewardScores, Rollout, Values  # noqa: E402
from actors.group import BaseActor  # noqa: E402
from actors.orchestrator import PPOOrchestrator  # noqa: E402

MIX = RewardMix(0.5, 0.5)


class EchoPolicy(BaseActor):
    distributed = True

    def setup(self, sft, cfg, steps, *_):
        from rlhf_ray.checkpoint import load_checkpoint

        self.state = {k: v.clone() for k, v in load_checkpoint(sft).model.state_dict().items()}
        return {}

    def publish_weights(self):
        import ray

        return [ray.put(self.state)]

    def train(self, exp, epochs, seed):
        return {"policy_loss": 0.0, "value_loss": 0.0}


class EchoCritic(EchoPolicy):
    def values(self, batch, rollout):
        return Values(torch.zeros(rollout.pages.shape))


class EchoReference(BaseActor):
    def setup(self, *_):
        return {}

    def logprobs(self, batch, rollout):
        return RefLogprobs(torch.zeros(rollout.pages.shape))


class EchoReward(BaseActor):
    def setup(self, *_):
        return {"kind": "Echo", "mix": {}, "max_history": None}

    def score(self, batch, rollout):
        b = rollout.pages.shape[0]
        return RewardScores(torch.zeros(b), torch.zeros(rollout.pages.shape), torch.zeros(b), MIX)


class EchoRollout(BaseActor):
    def setup(self, sft, gen, seed):
        self.K = gen.page_size
        return {}

    def load_weights(self, state):
        return len(state)

    def generate(self, batch, iteration):
        b, n = batch.prompts.blocked.shape
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
    a = p.parse_args()
    from rlhf_ray.config import PPOConfig
    from rlhf_ray.rayutil import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    cfg = PPOConfig.from_dict({"rollout_batch_size": a.batch, "policy": {"train": {"batch_size": a.batch}},
                               "critic": {"train": {"batch_size": a.batch}}})
    orch = EchoOrchestrator(cfg, a.sft, "rule", a.data, a.out, log=lambda s: None)
    orch.start()
    try:
        rows = [orch.iteration(i) for i in range(a.iterations)][2:]
    finally:
        orch.shutdown()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time/")}
    med["movement_s"] = statistics.median(r["time/iteration_s"] - r["time/advantage_s"] for r in rows)
    print(json.dumps({"batch": a.batch, "n_items": orch.vocab.n_items, **{k: round(v, 4) for k, v in med.items()}}))


if __name__ == "__main__":
    main()
