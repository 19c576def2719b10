"""RolloutActor: an inference copy of the policy that writes the training pages.

Pages are sampled with the shared constrained decoder
(:func:`rlhf_ray.generation.generate_pages`): only catalogue items, no repeats, no
seen items. The log-probs it records are under the same restricted distribution
``page_logprobs`` recomputes in the policy. The prompts and their seen-item mask are built here,
for this rank's rows, from the controller's :class:`~actors.experience.PromptBatch`. Sampling is seeded by
(seed, "rollout", iteration, rank) (:mod:`rlhf_ray.seeding`), so a resumed run draws the same pages.
"""
from __future__ import annotations

import torch

from actors.experience import PromptBatch, Rollout
from actors.group import BaseActor
from actors.models import load_policy
from rlhf_ray.config import GenerationConfig
from rlhf_ray.seeding import seed as derive_seed


class RolloutActor(BaseActor):
    def setup(self, sft_dir: str, gen: GenerationConfig, seed: int) -> dict:
        ck = load_policy(sft_dir, device=self.device())
        self.model = ck.model.eval().requires_grad_(False)
        self.vocab, self.gen, self.seed = ck.vocab, gen, seed
        self.version = 0
        return {"params": sum(p.numel() for p in self.model.parameters())}

    def load_weights(self, state: dict) -> int:
        """Load the policy's consolidated weights; returns the number of loads so far.

        On CPU the state arrives through the object store (the controller passes one
        ObjectRef to every rollout actor); a GPU collective broadcast would replace
        this method's transport, not its contract."""
        from rlhf_ray.stages.common import load_lm_state

        dev = next(self.model.parameters()).device
        load_lm_state(self.model, {k: v.to(dev) for k, v in state.items()})
        self.version += 1
        return self.version

    @torch.no_grad()
    def generate(self, batch: PromptBatch, iteration: int) -> Rollout:
        """Sampled pages (b, K) and their log-probs for this rank's rows of ``batch``."""
        from rlhf_ray.generation import generate_pages

        g = torch.Generator(device=next(self.model.parameters()).device).manual_seed(
            derive_seed(self.seed, "rollout", iteration, self.rank))
        pages = generate_pages(self.model, self.vocab, batch.prompts(self.vocab), self.gen, generator=g)
        return Rollout(pages.items.cpu(), pages.logprobs.float().cpu(), pages.shortlist)

    @torch.no_grad()
    def evaluate(self, prepared, gen: GenerationConfig, split: str = "valid", max_users: int = 0,
                 prefix: str = "val/", per_user: tuple = ()) -> dict:
        """evaluation.evaluate on ``split`` with the current weights (greedy pages by default).

        ``per_user``: metric names (prefixed, e.g. "val/ndcg@10") whose per-user values come back
        too, under ``"per_user"`` (name -> list in user order; NaN where undefined)."""
        from rlhf_ray.evaluation import evaluate

        metrics, frame = evaluate(self.model, self.vocab, prepared, split, gen, ks=(10, 20), max_users=max_users,
                                  prefix=prefix)
        if per_user:
            metrics["per_user"] = {n: frame[n[len(prefix):]].astype(float).tolist() for n in per_user
                                   if n.startswith(prefix) and n[len(prefix):] in frame}
        return metrics
