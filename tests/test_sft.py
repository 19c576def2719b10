"""SFT learns: loss falls and weights move on a fixed batch; examples are built as documented."""
import random

import numpy as np
import pytest
import torch

from rlhf_ray.stages.common import init_policy, open_data
from rlhf_ray.stages.sft import (SFTModule, Sequence, Window, golden_pages, next_item_windows, page_batch,
                                 training_sequences, window_batch)
from tests.conftest import tiny_sft_config


def test_windows_cover_the_newest_items_and_respect_length():
    seq = Sequence(np.arange(12), np.full(12, 5.0), user=4)
    wins = next_item_windows([seq], max_history=5, stride=3)
    assert wins[0].items.tolist() == [7, 8, 9, 10, 11]  # newest window ends at the last item
    assert all(len(w.items) == 5 and w.user == 4 for w in wins)
    assert wins[-1].items.tolist() == [0, 1, 2, 3, 4]  # oldest window starts at the first item
    short = next_item_windows([Sequence(np.arange(3), np.ones(3))], max_history=5, stride=3)
    assert [w.items.tolist() for w in short] == [[0, 1, 2]] and short[0].user is None


def test_golden_pages_are_future_positives_in_time_order():
    items = np.array([10, 11, 12, 13, 14, 15])
    ratings = np.array([5, 2, 4, 1, 5, 4.0])
    pages = golden_pages([Sequence(items, ratings)], K=2, cuts=10, threshold=3.0, rng=random.Random(0))
    by_cut = {len(e.history): e.page for e in pages}
    assert by_cut[2] == [12, 14]  # after [10, 11]: positives 12, 14, 15 -> first two
    assert by_cut[4] == [14, 15]
    assert 0 not in by_cut  # no cut before the first item (empty history)


def test_ground_truth_pages_rank_by_rating_then_recency_and_spread_categories():
    items = np.array([10, 11, 12, 13, 14, 15, 16])
    ratings = np.array([5, 2, 4, 5, 5, 4.0, 5])
    cats = np.zeros(20, dtype=np.int64)
    cats[[13, 14]] = 1  # 13 and 14 share category 1, the rest category 0
    pages = golden_pages([Sequence(items, ratings)], K=3, cuts=10, threshold=3.0, rng=random.Random(0),
                         order="ground_truth", categories=cats, window=4, max_per_category=2)
    by_cut = {len(e.history): e.page for e in pages}
    # after [10, 11], window 12..15: rated 5 first (13, 14), then 4 in time order (12, 15)
    assert by_cut[2] == [13, 14, 12]
    # after [10, 11, 12], window 13..16: all three rated 5 are taken; category 1 holds 2 of them (cap 2)
    assert by_cut[3] == [13, 14, 16]
    capped = golden_pages([Sequence(items, ratings)], K=2, cuts=10, threshold=3.0, rng=random.Random(0),
                          order="ground_truth", categories=cats, window=4, max_per_category=1)
    # cap 1: 14 (the second of category 1) gives way to 16, also rated 5
    assert {len(e.history): e.page for e in capped}[3] == [13, 16]
    with pytest.raises(ValueError, match="categories"):
        golden_pages([Sequence(items, ratings)], K=3, cuts=1, threshold=3.0, rng=random.Random(0),
                     order="ground_truth")


def test_window_batch_labels_are_next_items(synth_data):
    prepared = open_data(synth_data)
    _, _, vocab, _, _ = init_policy(None, tiny_sft_config().model, prepared)
    b = window_batch([Window(np.array([3, 4, 5]), 0), Window(np.array([7]), 1)], vocab)  # no user tokens here
    assert b["ids"][0].tolist() == [vocab.bos, vocab.hist] + [vocab.item_token(i) for i in (3, 4, 5)]
    assert b["labels"][0].tolist() == [-100, 3, 4, 5, -100]  # <hist> predicts 3, item 3 predicts 4, ...
    assert b["labels"][1].tolist() == [-100, 7, -100, -100, -100]
    assert b["mask"][1].tolist() == [1, 1, 1, 0, 0]


def test_sft_loss_falls_and_parameters_change(synth_data):
    torch.manual_seed(0)
    cfg = tiny_sft_config()
    prepared = open_data(synth_data)
    lm, _, vocab, _, _ = init_policy(None, cfg.model, prepared)
    seqs = training_sequences(prepared)
    windows = next_item_windows(seqs, cfg.max_history, cfg.window_stride)[:16]
    pages = golden_pages(seqs, cfg.page_size, 2, prepared.positive_threshold, random.Random(0))[:8]
    batch = {"windows": window_batch(windows, vocab), "pages": page_batch(pages, vocab, cfg.max_history)}
    module = SFTModule(lm, vocab, cfg)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, stats = module(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert {"l_next", "l_rank"} <= set(stats)
    assert losses[-1] < losses[0] - 0.5, losses
    changed = [k for k, v in module.named_parameters() if not torch.equal(v, before[k])]
    assert any("wte" in k for k in changed) and any("attn" in k for k in changed)
