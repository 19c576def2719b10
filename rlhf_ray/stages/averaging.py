"""An exponential moving average of a model's weights, validated and exported in their place.

    avg = WeightAverage(model, decay=0.999)
    ...  optimizer step ...
    avg.update(model)                  # theta_avg <- d theta_avg + (1 - d) theta, every step
    with avg.swapped_in(model):        # the model holds theta_avg; its own weights come back after
        metrics = validate(model)

The average starts at the first step's weights and uses the bias-free warm-up decay
``min(d, (1 + n) / (10 + n))`` after n updates, so a short run is not dominated by its
initial weights. Floating-point parameters only (buffers are kept as trained). Every rank
keeps a full copy, so a sharded model (ZeRO-3, where a rank holds a slice of each weight) is
refused by the config; ZeRO-1/2 and plain DDP hold full weights on every rank.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.params = {n: p.detach().float().clone() for n, p in model.named_parameters()
                       if p.requires_grad and p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in model.named_parameters():
            avg = self.params.get(n)
            if avg is not None:
                avg.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its trained ones after."""
        own = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self.params:
                    own[n] = p.detach().clone()
                    p.copy_(self.params[n].to(p.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in own:
                        p.copy_(own[n])
