"""ReferenceActor: the frozen SFT policy; per-slot log pi_ref(a_t | s_t) for the KL penalty.

Reads its rows of the prompt batch and of the rollout from the object store and builds the
prompts (with the seen-item mask) here; returns (b, K) log-probs."""
from __future__ import annotations

import torch

from actors.experience import PromptBatch, RefLogprobs, Rollout
from actors.group import BaseActor
from actors.models import load_policy
from rlhf_ray.generation import page_logprobs, restrict_to


class ReferenceActor(BaseActor):
    def setup(self, sft_dir: str) -> dict:
        ck = load_policy(sft_dir, device=self.device())
        self.model = ck.model.eval().requires_grad_(False)
        self.vocab = ck.vocab
        return {"params": sum(p.numel() for p in self.model.parameters())}

    @torch.no_grad()
    def logprobs(self, batch: PromptBatch, rollout: Rollout) -> RefLogprobs:
        """log pi_ref(a_t | s_t) of this rank's pages, under the same restricted distribution as the policy
        (the rollout's shortlist included)."""
        prompts = restrict_to(batch.prompts(self.vocab), rollout.shortlist)
        logp = page_logprobs(self.model, self.vocab, prompts, rollout.pages)["logprobs"]
        return RefLogprobs(logp.float().cpu())
