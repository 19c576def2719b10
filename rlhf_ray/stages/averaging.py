"""An exponential moving average of a model's weights, validated and exported in their place.

    avg = WeightAverage(model, decay=0.999)
    ...  optimizer step ...
    avg.update(model)                  # theta_avg <- d theta_avg + (1 - d) theta, every step
    with avg.swapped_in(model):        # the model holds theta_avg; its own weights come back after
        metrics = validate(model)

The average starts at the initial weights and its n-th update (n = 0, 1, ...) uses the decay
``min(d, (1 + n) / (10 + n))`` (TensorFlow's ``num_updates`` warm-up), so the initial weights
are forgotten at once (0.1 of them is left after the first update). The warm-up is long: the
cap d binds only from n = (10 d - 1) / (1 - d) on (890 updates for d = 0.99, 8990 for 0.999);
before that the average spans roughly the last n / 9 steps, after it the last 1 / (1 - d).
Floating-point parameters only (buffers are kept as trained).

Memory: one fp32 copy of the trainable weights per rank (4 bytes a parameter, on the weights'
device), and while the average is swapped in, a copy of the trained weights in their own dtype
(the loop's best-state snapshot is a further copy, average or not). Every rank keeps the full copy, so
a sharded model (ZeRO-3, where a rank holds a slice of each weight) is refused by the config;
ZeRO-1/2 and plain DDP hold full weights on every rank.
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
