"""Prefill once, then one token per row per step with a KV cache: the model side of page decoding.

:class:`Decoder` runs a batch of left-padded prompts and hands back item logits: those
at the end of each prompt (the first page slot, also the full-catalogue ranking), then
those after each token fed with :meth:`Decoder.step`. What is chosen at each slot is
the caller's business (:mod:`rlhf_ray.generation`).

* **Buckets.** Rows are grouped by prompt length (:func:`buckets`) and each group runs
  with its own padding only, so a short prompt does not pay for the longest one. The
  grouping trades padded positions against one more call per step.
* **Plain GPT-2** (``GPT2LMHeadModel`` with SDPA attention, no adapters, eval mode) decodes with
  :class:`_GPT2Rows`: the model's own modules, a KV cache allocated once for prompt +
  page, and item logits only (the output projection's ``n_items`` item rows, not the
  whole vocabulary). Any other model decodes through its HF forward
  with ``past_key_values`` (:class:`_HFRows`).
* **Shortlists.** After :meth:`Decoder.restrict`, steps return logits of each row's own
  columns (item indices) only. The GPT-2 path then projects onto those M item rows, so a
  step costs M dot products per row instead of ``n_items``: candidate retrieval from the
  model's own first-slot scores (``GenerationConfig.shortlist``) for large catalogues.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_ray.model import positions, unwrap
from rlhf_ray.tokens import Vocab

# What one more bucket costs, in prompt positions (rows x padded length) it must save to pay:
# its prefill call plus one call per decode step. Measured on the 2-core CPU box with the
# ml-100k model (2 x 128): a prefill call ~1 ms + ~12 us per position, a decode-step call ~0.5 ms.
BUCKET_PREFILL_COST, BUCKET_STEP_COST = 88, 44


def buckets(lengths: list[int], call_cost: int) -> list[list[int]]:
    """Group rows by prompt length so that sum(call_cost + rows * longest) is least.

    Groups are runs of the distinct lengths in increasing order (dynamic programming over
    them), so rows of equal length always share a group; each lists its row indices in
    their original order.
    """
    distinct = sorted(set(lengths))
    count = [lengths.count(n) for n in distinct]
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: least cost of the j shortest lengths
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):  # group = distinct[i:j]
            rows += count[i]
            c = best[i] + call_cost + rows * distinct[j - 1]
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], len(distinct)
    while j > 0:
        keep = set(distinct[cut[j]: j])
        groups.append([r for r, n in enumerate(lengths) if n in keep])
        j = cut[j]
    return groups[::-1]


def item_logits(logits: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """The item tokens' columns of vocabulary logits."""
    return logits[..., vocab.item_offset: vocab.item_offset + vocab.n_items]


def fast_path(model) -> bool:
    """Whether ``model`` decodes with the hand-written GPT-2 step (in eval mode: it has no dropout)."""
    from transformers import GPT2LMHeadModel

    m = unwrap(model)
    return (type(m) is GPT2LMHeadModel and not m.training and not m.config.add_cross_attention
            and m.config._attn_implementation == "sdpa")


class _HFRows:
    """Rows of one bucket decoded through the model's HF forward and its cache object."""

    def __init__(self, model, vocab: Vocab, ids: torch.Tensor, am: torch.Tensor, steps: int):
        self.model, self.vocab, self.am = model, vocab, am
        out = model(input_ids=ids, attention_mask=am, position_ids=positions(am), use_cache=True, logits_to_keep=1)
        self.past, self.pos = out.past_key_values, positions(am)[:, -1]
        self.first = item_logits(out.logits[:, -1], vocab)
        self.cols: torch.Tensor | None = None

    def restrict(self, cols: torch.Tensor) -> None:
        self.cols = cols

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        self.am = torch.cat([self.am, alive.long()[:, None]], dim=1)
        self.pos = self.pos + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.am, position_ids=self.pos[:, None],
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        logits = item_logits(out.logits[:, -1], self.vocab)
        return logits if self.cols is None else logits.gather(1, self.cols)

    def reorder(self, src: torch.Tensor) -> None:
        self.past.reorder_cache(src)
        self.am, self.pos = self.am[src], self.pos[src]
        self.cols = None if self.cols is None else self.cols[src]


class _GPT2Rows:
    """Rows of one bucket decoded by GPT-2's modules with a cache sized for prompt + page."""

    def __init__(self, model, vocab: Vocab, ids: torch.Tensor, am: torch.Tensor, steps: int):
        self.lm = unwrap(model)
        tf = self.lm.transformer
        B, L = ids.shape
        first = tf.h[0].attn
        shape = (B, first.num_heads, L + steps, first.head_dim)
        self.k = [torch.empty(shape, dtype=tf.wte.weight.dtype, device=ids.device) for _ in tf.h]
        self.v = [torch.empty_like(k) for k in self.k]
        self.keys = torch.zeros((B, L + steps), dtype=torch.bool, device=ids.device)  # cache slot holds a real token
        self.keys[:, :L] = am.bool()
        self.t, self.pos = 0, positions(am)
        self.w_items = self.lm.lm_head.weight[vocab.item_offset: vocab.item_offset + vocab.n_items]
        self.w_rows: torch.Tensor | None = None  # (B, M, H): each row's shortlisted item rows (restrict)
        eye = torch.eye(L, dtype=torch.bool, device=ids.device)
        causal = torch.ones((L, L), dtype=torch.bool, device=ids.device).tril()
        # a padding query attends to itself only, so no row of the softmax is empty
        mask = (causal & self.keys[:, None, :L]) | eye
        self.first = self._run(ids, self.pos, mask[:, None])
        self.pos = self.pos[:, -1]

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` (B, T) at cache slots t..t+T-1; item logits of the last position."""
        tf, T = self.lm.transformer, ids.shape[1]
        h = tf.wte(ids) + tf.wpe(pos)
        end = self.t + T
        for layer, block in enumerate(tf.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(h)).split(attn.split_size, dim=2)
            heads = (h.shape[0], T, -1, attn.head_dim)
            self.k[layer][:, :, self.t: end] = k.view(heads).transpose(1, 2)
            self.v[layer][:, :, self.t: end] = v.view(heads).transpose(1, 2)
            a = F.scaled_dot_product_attention(q.view(heads).transpose(1, 2), self.k[layer][:, :, :end],
                                               self.v[layer][:, :, :end], attn_mask=mask, scale=attn.scaling)
            h = attn.c_proj(a.transpose(1, 2).reshape(h.shape[0], T, -1)) + h
            h = h + block.mlp(block.ln_2(h))
        self.t = end
        x = tf.ln_f(h[:, -1])
        return x @ self.w_items.T if self.w_rows is None else torch.bmm(self.w_rows, x[:, :, None]).squeeze(2)

    def restrict(self, cols: torch.Tensor) -> None:
        self.w_rows = self.w_items[cols]

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        self.keys[:, self.t] = alive
        self.pos = self.pos + 1
        return self._run(tokens[:, None], self.pos[:, None], self.keys[:, None, None, : self.t + 1])

    def reorder(self, src: torch.Tensor) -> None:
        self.k = [k[src] for k in self.k]
        self.v = [v[src] for v in self.v]
        self.keys, self.pos = self.keys[src], self.pos[src]
        self.w_rows = None if self.w_rows is None else self.w_rows[src]


class Decoder:
    """A batch of prompts prefilled once (:attr:`first`: item logits of the first slot, ``(B, n_items)``
    float32), advanced one token per row by :meth:`step` for up to ``steps`` steps."""

    def __init__(self, model, vocab: Vocab, ids: torch.Tensor, am: torch.Tensor, steps: int,
                 call_cost: int | None = None):
        rows_cls = _GPT2Rows if fast_path(model) else _HFRows
        B, L = ids.shape
        lengths = am.sum(dim=1).tolist()
        cost = BUCKET_PREFILL_COST + steps * BUCKET_STEP_COST if call_cost is None else call_cost
        self.groups = [torch.as_tensor(g, device=ids.device) for g in buckets(lengths, cost)]
        self.parts = []
        for g in self.groups:
            width = max(int(max(lengths[i] for i in g.tolist())), 1)
            self.parts.append(rows_cls(model, vocab, ids[g, L - width:], am[g, L - width:], steps))
        self.first = self._gather([p.first for p in self.parts])

    def _gather(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if len(outs) == 1:
            return outs[0].float()
        full = torch.empty((sum(o.shape[0] for o in outs), outs[0].shape[1]), dtype=torch.float32,
                           device=outs[0].device)
        for g, o in zip(self.groups, outs):
            full[g] = o.float()
        return full

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``alive`` False: a padding token the row's later steps ignore).
        Item logits ``(B, n_items)``, or ``(B, M)`` of each row's columns after :meth:`restrict`."""
        return self._gather([p.step(tokens[g], alive[g]) for g, p in zip(self.groups, self.parts)])

    def restrict(self, cols: torch.Tensor) -> None:
        """From the next step on, score only row i's items ``cols[i]`` (``(B, M)`` item indices)."""
        for g, p in zip(self.groups, self.parts):
            p.restrict(cols[g])

    def reorder(self, src: torch.Tensor) -> None:
        """Row i continues from row ``src[i]``; ``src`` must keep each row in its bucket (beams of one prompt)."""
        local = torch.empty_like(src)
        for g in self.groups:
            local[g] = torch.arange(len(g), device=src.device)
        for g, p in zip(self.groups, self.parts):
            p.reorder(local[src[g]])
