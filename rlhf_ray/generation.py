"""Constrained page decoding and page log-probabilities: written once, used by
evaluation, SFT, PPO rollouts/updates, LPO and Serve.

A prompt is ``<bos> [<user_u>] <hist> h_1 ... h_L <page>``; a page is K item
tokens after it. At every slot the distribution is restricted to item tokens
that are not *blocked*: blocked = seen history (optional) | caller exclusions |
outside the caller's candidates | already on the page. Decoding (greedy,
sampling, beam) and :func:`page_logprobs` apply exactly the same restriction,
so the log-probs a rollout records are the ones PPO recomputes.

With ``GenerationConfig.shortlist`` = M, decoding works in M columns per row: the M allowed
items the first slot scores highest (candidate retrieval by the model's own full-catalogue
ranking), and the page's distribution is restricted to them at every slot. The returned
``Pages.prompts`` then blocks every item outside the row's shortlist, so
:func:`page_logprobs` recomputes exactly the recorded log-probs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlhf_ray.config import GenerationConfig
from rlhf_ray.kvdecode import Decoder, item_logits
from rlhf_ray.model import backbone_hidden, positions
from rlhf_ray.tokens import Vocab

NEG_INF = float("-inf")


@dataclass
class Prompts:
    input_ids: torch.Tensor  # (B, L) left-padded prompt token ids
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens
    blocked: torch.Tensor  # (B, n_items) bool: items that may never be on the page


@dataclass
class Pages:
    items: torch.Tensor  # (B, K) item_idx, -1 where no item was allowed
    logprobs: torch.Tensor  # (B, K) log pi(item_k | prompt, items_<k) under the restricted distribution
    prompts: Prompts  # as given; with a shortlist, blocked also holds each row's items outside it
    first_scores: torch.Tensor  # (B, n_items) first-slot item logits, blocked = -inf (= score_items), on the model device
    shortlist: torch.Tensor | None = None  # (B, M) the items each row's page was decoded among (None: all)


def prompt_user(vocab: Vocab, user_idx: int | None) -> int | None:
    """The user whose token a sequence about ``user_idx`` carries: the user when the vocabulary
    has user tokens, None when it has none or the user is unknown (an anonymous history).

    The one place that decides, so SFT, pre-training, LPO, the reward model, PPO, validation,
    evaluation and Serve all build the same prompt for the same user. A user index without a
    token is an error (data and checkpoint from different user tables), not a silent omission."""
    if user_idx is None or not vocab.n_users:
        return None
    u = int(user_idx)
    if not 0 <= u < vocab.n_users:
        raise ValueError(f"user_idx {u} has no user token: the vocabulary has {vocab.n_users} "
                         f"(<user_0>..<user_{vocab.n_users - 1}>); the data's users differ from the checkpoint's")
    return u


def prompt_head(vocab: Vocab, user_idx: int | None = None) -> list[int]:
    """``<bos> [<user_u>]``: how every sequence about a user starts (prompts, SFT's next-item
    windows, pre-training's rating prompts); the user token per :func:`prompt_user`."""
    u = prompt_user(vocab, user_idx)
    return [vocab.bos] if u is None else [vocab.bos, vocab.user_token(u)]


def prompt_tokens(history: Sequence[int], vocab: Vocab, max_history: int, user_idx: int | None = None) -> list[int]:
    """Token ids of one prompt (most recent ``max_history`` items)."""
    hist = list(history)[-max_history:] if max_history else []
    return prompt_head(vocab, user_idx) + [vocab.hist] + [vocab.item_token(int(i)) for i in hist] + [vocab.page]


def prompt_length(histories: Sequence[Sequence[int]], vocab: Vocab, max_history: int,
                  user_idx: Sequence[int] | None = None) -> int:
    """L of :func:`build_prompts` for these histories: the longest prompt's token count."""
    return max(len(prompt_tokens(h, vocab, max_history, None if user_idx is None else user_idx[b]))
               for b, h in enumerate(histories))


def left_pad(seqs: Sequence[Sequence[int]], pad: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``(B, L)`` ids and attention mask; ``L`` = the longest list, or ``length``
    (>= it: shards of one batch padded like the whole batch)."""
    L = max((len(s) for s in seqs), default=0)
    if length is not None:
        if length < L:
            raise ValueError(f"left_pad: a sequence of {L} tokens does not fit length {length}")
        L = length
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s):
            ids[b, L - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[b, L - len(s):] = 1
    return ids, mask


def build_prompts(
    histories: Sequence[Sequence[int]],
    vocab: Vocab,
    max_history: int,
    *,
    exclude_seen: bool = True,
    exclude: Sequence[Sequence[int]] | None = None,
    candidates: Sequence[Sequence[int] | None] | None = None,
    user_idx: Sequence[int | None] | None = None,
    length: int | None = None,
) -> Prompts:
    """Tokenise a batch of histories and compute each row's blocked-item mask.

    ``user_idx``: each row's user (None for an anonymous row); its token goes into the prompt
    when the vocabulary has user tokens (:func:`prompt_user`), so callers pass the users they
    know whatever the vocabulary. ``length``: pad to that many tokens (:func:`prompt_length` of
    the whole batch) instead of this batch's longest prompt."""
    seqs = [
        prompt_tokens(h, vocab, max_history, None if user_idx is None else user_idx[b])
        for b, h in enumerate(histories)
    ]
    ids, mask = left_pad(seqs, vocab.pad, length)
    blocked = torch.zeros((len(histories), vocab.n_items), dtype=torch.bool)
    for b, h in enumerate(histories):
        if exclude_seen and len(h):
            blocked[b, torch.as_tensor(list(h), dtype=torch.long)] = True  # all history, not only the prompt window
        if exclude is not None and len(exclude[b]):
            blocked[b, torch.as_tensor(list(exclude[b]), dtype=torch.long)] = True
        if candidates is not None and candidates[b] is not None:
            allow = torch.zeros(vocab.n_items, dtype=torch.bool)
            allow[torch.as_tensor(list(candidates[b]), dtype=torch.long)] = True
            blocked[b] |= ~allow
    return Prompts(ids, mask, blocked)


def _to(model: torch.nn.Module, *ts: torch.Tensor):
    dev = next(model.parameters()).device
    return [t.to(dev) for t in ts]


@torch.no_grad()
def score_items(model, vocab: Vocab, prompts: Prompts, mask_blocked: bool = True) -> torch.Tensor:
    """Full-catalogue scores of the first page slot: ``(B, n_items)`` logits, blocked = -inf.

    The scores :func:`generate_pages` returns as ``first_scores`` (one prefill, no page)."""
    ids, am, blocked = _to(model, prompts.input_ids, prompts.attention_mask, prompts.blocked)
    scores = Decoder(model, vocab, ids, am, steps=0).first
    return scores.masked_fill(blocked, NEG_INF) if mask_blocked else scores


@torch.no_grad()
def generate_pages(
    model,
    vocab: Vocab,
    prompts: Prompts,
    cfg: GenerationConfig,
    generator: torch.Generator | None = None,
) -> Pages:
    """Decode a page of ``cfg.page_size`` distinct, allowed items per prompt.

    The prompt runs once (:class:`rlhf_ray.kvdecode.Decoder`); its last position's
    scores are the first slot's and are returned as ``Pages.first_scores`` (the
    full-catalogue ranking of :func:`score_items`, without a second forward).
    """
    ids, am, blocked = _to(model, prompts.input_ids, prompts.attention_mask, prompts.blocked)
    if cfg.strategy == "beam" and cfg.num_beams > 1:
        return _beam_pages(model, vocab, prompts, cfg, ids, am, blocked)
    B, K = ids.shape[0], cfg.page_size
    items = torch.full((B, K), -1, dtype=torch.long, device=ids.device)
    logps = torch.zeros((B, K), device=ids.device)
    dec = Decoder(model, vocab, ids, am, steps=K - 1)
    cols, logits, blocked = _columns(dec, blocked, cfg.shortlist)
    blocked = blocked.clone()
    for k in range(K):
        scores = logits.masked_fill(blocked, NEG_INF)  # (B, n_items)
        alive = ~blocked.all(dim=1)  # rows with at least one allowed item
        logp = torch.log_softmax(scores, dim=-1)
        if cfg.strategy == "sample":
            samp = scores / cfg.temperature
            if cfg.top_k:
                kth = samp.topk(min(cfg.top_k, samp.shape[1]), dim=-1).values[:, -1:]
                samp = samp.masked_fill(samp < kth, NEG_INF)
            probs = torch.softmax(samp.masked_fill(~alive[:, None], 0.0), dim=-1)
            choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            choice = scores.argmax(dim=-1)
        choice = torch.where(alive, choice, torch.full_like(choice, -1))
        item = _item(cols, choice)
        items[:, k] = item
        logps[:, k] = torch.where(alive, logp.gather(1, choice.clamp(min=0)[:, None]).squeeze(1), 0.0)
        blocked[alive, choice[alive]] = True
        if k == K - 1:
            break
        step_ids = torch.where(alive, vocab.item_token(item.clamp(min=0)), torch.full_like(item, vocab.pad))
        logits = dec.step(step_ids, alive)
    return Pages(items.cpu(), logps.cpu(), restrict_to(prompts, cols), _first(dec.first, prompts.blocked),
                 None if cols is None else cols.cpu())


def _first(logits: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(blocked.to(logits.device), NEG_INF)


def _columns(dec: Decoder, blocked: torch.Tensor, shortlist: int):
    """What decoding chooses among: ``(None, first-slot logits (B, n_items), blocked)``, or with a
    shortlist M below the catalogue, each row's M best allowed items by the first slot's logits:
    ``(cols (B, M) item indices, their logits, their blocked flags)``; the decoder then scores only
    those columns. A row with fewer than M allowed items keeps blocked ones in its last columns."""
    first = dec.first
    if not shortlist or shortlist >= first.shape[1]:
        return None, first, blocked
    cols = first.masked_fill(blocked, NEG_INF).topk(shortlist, dim=-1).indices
    dec.restrict(cols)
    return cols, first.gather(1, cols), blocked.gather(1, cols)


def _item(cols: torch.Tensor | None, choice: torch.Tensor) -> torch.Tensor:
    """Item indices of chosen columns (-1 stays -1)."""
    if cols is None:
        return choice
    return torch.where(choice >= 0, cols.gather(1, choice.clamp(min=0)[:, None]).squeeze(1), choice)


def restrict_to(prompts: Prompts, cols: torch.Tensor | None) -> Prompts:
    """``prompts`` with every item outside each row's shortlist ``cols`` ((B, M) item indices,
    ``Pages.shortlist``) blocked: the prompts under which :func:`page_logprobs` gives a shortlisted
    page's recorded log-probs (``prompts`` unchanged when ``cols`` is None)."""
    if cols is None:
        return prompts
    cols = cols.to(prompts.blocked.device)
    blocked = torch.ones_like(prompts.blocked)
    blocked.scatter_(1, cols, prompts.blocked.gather(1, cols))
    return Prompts(prompts.input_ids, prompts.attention_mask, blocked)


def _beam_pages(model, vocab: Vocab, prompts: Prompts, cfg: GenerationConfig, ids, am, blocked) -> Pages:
    """Beam search over restricted item distributions; returns the best beam per prompt."""
    B, K, W = ids.shape[0], cfg.page_size, cfg.num_beams
    rep = lambda t: t.repeat_interleave(W, dim=0)  # noqa: E731  (B, ...) -> (B*W, ...)
    ids, am, blocked = rep(ids), rep(am), rep(blocked)
    items = torch.full((B * W, K), -1, dtype=torch.long, device=ids.device)
    step_logp = torch.zeros((B * W, K), device=ids.device)
    total = torch.zeros(B, W, device=ids.device)
    total[:, 1:] = NEG_INF  # all beams start identical: keep only the first alive at step 0
    dec = Decoder(model, vocab, ids, am, steps=K - 1)
    cols, logits, blocked = _columns(dec, blocked, cfg.shortlist)  # a prompt's beams share its shortlist
    blocked, N = blocked.clone(), logits.shape[1]
    for k in range(K):
        logp = torch.log_softmax(logits.masked_fill(blocked, NEG_INF), dim=-1)
        logp = torch.nan_to_num(logp, nan=NEG_INF)  # rows with nothing allowed
        cand = (total.reshape(B * W, 1) + logp).reshape(B, W * N)
        best, flat = cand.topk(W, dim=-1)  # (B, W)
        src_beam = flat // N
        choice = flat % N
        dead = ~torch.isfinite(best).any(dim=1, keepdim=True)  # (B, 1) no beam can extend: keep beams as they are
        src_beam = torch.where(dead, torch.arange(W, device=ids.device).expand(B, W), src_beam)
        src = (torch.arange(B, device=ids.device)[:, None] * W + src_beam).reshape(-1)  # (B*W,)
        choice = choice.reshape(-1)
        alive = torch.isfinite(best).reshape(-1)
        items, step_logp, blocked = items[src], step_logp[src], blocked[src].clone()
        item = torch.where(alive, _item(cols, choice), torch.full_like(choice, -1))
        items[:, k] = item
        step_logp[:, k] = torch.where(alive, logp[src, choice], torch.zeros_like(best.reshape(-1)))
        blocked[alive, choice[alive]] = True
        total = torch.where(torch.isfinite(best), best, total.gather(1, src_beam))
        if k == K - 1:
            break
        dec.reorder(src)
        step_ids = torch.where(alive, vocab.item_token(item.clamp(min=0)), torch.full_like(choice, vocab.pad))
        logits = dec.step(step_ids, alive)
    top = total.argmax(dim=-1)  # (B,)
    pick = torch.arange(B, device=ids.device) * W + top
    cols = None if cols is None else cols[::W].cpu()
    return Pages(items[pick].cpu(), step_logp[pick].cpu(), restrict_to(prompts, cols),
                 _first(dec.first[::W], prompts.blocked), cols)


def page_logprobs(
    model,
    vocab: Vocab,
    prompts: Prompts,
    pages: torch.Tensor,
    *,
    logits_out: bool = False,
    history_nll: bool = False,
):
    """Log-probs of given pages under the restricted distribution, in one forward pass.

    Returns a dict: ``logprobs (B, K)`` (0 at padding), ``mask (B, K)`` (slot holds an
    item), optionally ``logits (B, K, n_items)`` (restricted, for entropy) and, with
    ``history_nll``, ``history_nll`` (scalar): SFT's next-item cross-entropy over the prompt's
    history (each history item predicted from the tokens before it, over all items, as
    ``L_next`` trains it; :func:`history_next_item_nll`), from the same forward.
    Differentiable. Heads that need only the states emitting each slot (value, reward) use
    :func:`page_states`, which skips the vocabulary projection.
    """
    ids, am, blocked, pages = _to(model, prompts.input_ids, prompts.attention_mask, prompts.blocked, pages)
    K, L = pages.shape[1], ids.shape[1]
    slot = pages >= 0  # (B, K)
    full_ids, full_am = _with_page(ids, am, pages, vocab)
    # only the K positions that emit page slots need the vocabulary projection: keep the last K + 1
    # (all positions when the history's next-item loss is wanted too)
    out = model(input_ids=full_ids, attention_mask=full_am, position_ids=positions(full_am),
                use_cache=False, logits_to_keep=0 if history_nll else K + 1)
    page_rows = out.logits[:, L - 1: L + K - 1] if history_nll else out.logits[:, :K]
    step_logits = item_logits(page_rows, vocab).float()  # (B, K, n_items): positions L-1 .. L+K-2
    allowed = ~(blocked[:, None, :] | on_page_before(pages, vocab.n_items))
    restricted = step_logits.masked_fill(~allowed, NEG_INF)
    logp_all = torch.log_softmax(restricted, dim=-1)
    logp = logp_all.gather(2, pages.clamp(min=0)[..., None]).squeeze(2)
    logp = torch.where(slot, logp, torch.zeros_like(logp))
    res = {"logprobs": logp, "mask": slot}
    if logits_out:
        res["logits"] = restricted
    if history_nll:
        res["history_nll"] = history_next_item_nll(out.logits[:, :L], ids, am, vocab)
    return res


def history_next_item_nll(logits: torch.Tensor, ids: torch.Tensor, am: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """Mean next-item cross-entropy over a prompt's history: position t predicts the item at t + 1
    wherever that token is an item (``<hist>`` predicts the first, the last item predicts
    ``<page>`` and is left out), over all items, unrestricted (SFT's ``L_next``).

    ``logits`` (B, L, V) of the prompt's positions, ``ids``/``am`` (B, L) the prompt. 0 when no
    position has a next item."""
    nxt, live = ids[:, 1:], am[:, 1:] > 0
    is_item = live & (nxt >= vocab.item_offset) & (nxt < vocab.item_offset + vocab.n_items)
    if not bool(is_item.any()):
        return logits.sum() * 0.0
    rows = item_logits(logits[:, :-1], vocab)[is_item].float()  # (P, n_items)
    return torch.nn.functional.cross_entropy(rows, nxt[is_item] - vocab.item_offset)


def on_page_before(pages: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, K, n_items) bool: item i already stands on the page before slot k (``pages`` (B, K),
    -1 = empty slot). Built from each item's first slot on the page, (B, n_items), and one
    comparison, not a cumulative sum over a (B, K, n_items) one-hot."""
    B, K = pages.shape
    order = torch.arange(K, device=pages.device)
    first = torch.full((B, n_items), K, dtype=torch.long, device=pages.device)
    first.scatter_reduce_(1, pages.clamp(min=0), torch.where(pages >= 0, order, K).expand(B, K), reduce="amin")
    return first[:, None, :] < order[None, :, None]


def _with_page(ids: torch.Tensor, am: torch.Tensor, pages: torch.Tensor, vocab: Vocab):
    """Prompt ids/mask (B, L) followed by the page's item tokens (B, K), padding where pages is -1."""
    slot = pages >= 0
    full_ids = torch.cat([ids, torch.where(slot, vocab.item_token(pages.clamp(min=0)), vocab.pad)], dim=1)
    return full_ids, torch.cat([am, slot.long()], dim=1)


def page_states(model, vocab: Vocab, prompts: Prompts, pages: torch.Tensor):
    """The final hidden states that emit each page slot, without the vocabulary projection.

    Returns ``(hidden (B, K, H), pages (B, K), blocked (B, n_items))`` on the model's device:
    the same forward and positions as :func:`page_logprobs` (row k of ``hidden`` is the state
    whose projection gives slot k's logits), for losses that score only some items
    (sampled softmax). Differentiable.
    """
    ids, am, blocked, pages = _to(model, prompts.input_ids, prompts.attention_mask, prompts.blocked, pages)
    L, K = ids.shape[1], pages.shape[1]
    full_ids, full_am = _with_page(ids, am, pages, vocab)
    h = backbone_hidden(model, full_ids, full_am)  # (B, L + K, H)
    return h[:, L - 1: L + K - 1], pages, blocked
