"""The models PPO roles hold: the SFT policy (dropout off) and the critic.

Critic (value model): the SFT backbone plus a value head on the hidden state that
*emits* each page slot (:func:`rlhf_ray.generation.page_states`: row k is the state that
predicts item k, so row 0 is the prompt's last token; the backbone alone, no vocabulary
projection):

    V(s_k) = w . h_k + b,    h_k = hidden state emitting slot k,   V: (B, K)
"""
from __future__ import annotations

import torch
from torch import nn

from rlhf_ray.generation import Prompts, page_states
from rlhf_ray.model import ScalarHead, hidden_size
from rlhf_ray.tokens import Vocab


def disable_dropout(model: nn.Module) -> nn.Module:
    """Dropout p = 0 everywhere (PPO ratios and resume need deterministic forwards)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def load_policy(sft_dir: str, device: str = "cpu"):
    """The SFT checkpoint's LM with dropout off; returns the loaded :class:`Checkpoint`."""
    from rlhf_ray.checkpoint import load_checkpoint

    ck = load_checkpoint(sft_dir, device=device)
    disable_dropout(ck.model)
    return ck


class CriticModel(nn.Module):
    """SFT backbone + value head: ``forward(prompts, pages) -> values (B, K)``."""

    def __init__(self, lm: nn.Module, vocab: Vocab, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.vocab = vocab
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # every rank starts from the same head
            self.value_head = ScalarHead(hidden_size(lm))

    def forward(self, prompts: Prompts, pages: torch.Tensor) -> torch.Tensor:
        h, pages, _ = page_states(self.lm, self.vocab, prompts, pages)  # (B, K, H) state emitting each slot
        return self.value_head(h).float() * (pages >= 0)  # (B, K), 0 at padding
