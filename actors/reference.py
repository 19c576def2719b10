"""ReferenceActor: the frozen SFT policy; per-slot log pi_ref(a_t | s_t) for the KL penalty."""
from __future__ import annotations

import torch

from actors.group import BaseActor
from actors.models import load_policy
from rlhf_ray.generation import Prompts, page_logprobs


class ReferenceActor(BaseActor):
    def setup(self, sft_dir: str) -> dict:
        ck = load_policy(sft_dir, device=self.device())
        self.model = ck.model.eval().requires_grad_(False)
        self.vocab = ck.vocab
        return {"params": sum(p.numel() for p in self.model.parameters())}

    @torch.no_grad()
    def logprobs(self, prompts: Prompts, pages: torch.Tensor) -> torch.Tensor:
        """(b, K) log pi_ref(a_t | s_t) under the same restricted distribution as the policy."""
        return page_logprobs(self.model, self.vocab, prompts, pages)["logprobs"].float().cpu()
