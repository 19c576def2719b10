"""LPO on a Ray Train worker group with DeepSpeed ZeRO-2 and a frozen reference (slow: ~1 min).

From what each rank reports (``dist/rank{r}/*``, :func:`rlhf_ray.stages.loop.rank_summary`):
both ranks took every step, ended with bit-identical parameters that differ from the SFT
start, and the exported checkpoint holds exactly those parameters. The training objective
fell: recomputed on the very examples both ranks trained on, with negatives fixed once from
the SFT start (LPO's Gumbel negatives are redrawn from the current model each step, so the
per-step loss of successive batches is no measure)."""
from __future__ import annotations

import pytest
import torch

from rlhf_ray.checkpoint import load_checkpoint, verify_checkpoint
from rlhf_ray.config import LPOConfig
from rlhf_ray.stages import lpo
from rlhf_ray.stages.common import open_data
from rlhf_ray.stages.loop import param_digest

pytestmark = pytest.mark.slow

STEPS = 8


def _digest(ck) -> int:
    """The digest the LPO module's parameters ("lm.<backbone>") have when ``ck``'s weights are loaded."""
    wrapper = torch.nn.Module()
    wrapper.lm = ck.model
    return param_digest(wrapper)


def test_sdpo_on_two_ray_train_workers_with_zero2(tiny_sft, synth_data, tmp_path):
    from rlhf_ray.stages.launch import launch

    cfg = LPOConfig.from_dict({
        "loss": "sdpo", "n_negatives": 4, "max_history": 20,
        "train": {"epochs": 1, "max_steps": STEPS, "batch_size": 16, "num_workers": 2, "zero_stage": 2,
                  "lr": 5e-3, "warmup_ratio": 0.0, "cpus_per_worker": 0.5, "progress": False, "tensorboard": False},
    })
    out = tmp_path / "lpo-ray"
    metrics = launch("lpo", cfg, str(synth_data), str(out), init=str(tiny_sft))
    assert metrics["train/steps"] == STEPS and "val/tail_ndcg@10" in metrics
    manifest = verify_checkpoint(out)
    assert manifest["stage"] == "lpo" and manifest["config"]["loss"] == "sdpo"
    assert [metrics.get(f"dist/rank{r}/steps") for r in (0, 1)] == [STEPS, STEPS], metrics
    digests = {metrics[f"dist/rank{r}/param_digest"] for r in (0, 1)}
    assert len(digests) == 1, digests  # replicas agree bit for bit
    new, old = load_checkpoint(out), load_checkpoint(tiny_sft)
    assert digests == {_digest(new)}  # the checkpoint is what the ranks trained
    assert _digest(old) not in digests
    changed = [not torch.equal(a, b) for a, b in zip(new.model.parameters(), old.model.parameters())]
    assert sum(changed) >= len(changed) // 2, f"{sum(changed)} of {len(changed)} parameter tensors changed"
    before, after = trained_objective(cfg, synth_data, old, new)
    assert after < before - 0.15, (before, after)


def trained_objective(cfg: LPOConfig, data, old, new) -> tuple[float, float]:
    """The S-DPO objective (CE + preference, tail-weighted, reference = the SFT start) over the
    STEPS batches of both ranks, with each batch's negatives drawn once from the SFT start;
    ``(at the SFT start, at the trained checkpoint)``."""
    spec = lpo.build_spec(cfg, open_data(data), old.model, old.tokenizer, old.vocab, old.catalog, data / "unused")
    mod, ref = spec.module, spec.module.reference(torch.device("cpu"))
    batches = [b for r in (0, 1) for i, b in zip(range(STEPS), spec.batches(0, r, 2))]

    def pick(logp, batch, neg):
        return logp.gather(1, batch["pos"][:, None]).squeeze(1), logp.gather(1, neg)

    with torch.no_grad():
        negs = [mod.sample_negatives(lpo.restricted_logprobs(old.model, old.vocab, b), b) for b in batches]

        def objective(lm) -> float:
            total = 0.0
            for b, neg in zip(batches, negs):
                pp, pn = pick(lpo.restricted_logprobs(lm, old.vocab, b), b, neg)
                rp, rn = pick(lpo.restricted_logprobs(ref, old.vocab, b), b, neg)
                pref = lpo.PREFERENCE_LOSSES["sdpo"](pp, pn, rp, rn, cfg.beta)
                per_example = cfg.ce_weight * -pp + cfg.lpo_weight * pref
                total += float((mod.weights(b, per_example) * per_example).mean())
            return total / len(batches)

        return objective(old.model.eval()), objective(new.model.eval())
