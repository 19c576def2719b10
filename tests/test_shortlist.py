"""Shortlist decoding (``GenerationConfig.shortlist``): a page decoded among the first slot's M best
allowed items is exactly the page whole-catalogue decoding writes when each row's candidates are
those M items (an independent route to the same restricted distribution), on the GPT-2 step and
the HF fallback, with several length buckets; its log-probs are the ones page_logprobs recomputes
from ``Pages.prompts``; the full ranking (``first_scores``) does not change."""
import pytest
import torch

import decode_cases as dc
from rlhf_ray.config import ConfigError, GenerationConfig
from rlhf_ray.generation import build_prompts, generate_pages, page_logprobs, score_items

M = 12


@pytest.fixture(scope="module")
def lm():
    return dc.tiny_lm()



def top_allowed(model, vocab, m: int) -> list[list[int]]:
    """Each row's m best allowed items by the first slot's scores (fewer where fewer are allowed)."""
    scores = score_items(model, vocab, dc.prompts(vocab))
    out = []
    for row in scores:
        order = row.argsort(descending=True)[:m]
        out.append([int(i) for i in order if torch.isfinite(row[i])])
    return out


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_shortlist_pages_equal_whole_catalogue_decoding_with_those_candidates(lm, decode_path, strategy):
    model, vocab = lm
    cfg = GenerationConfig(page_size=8, strategy=strategy, num_beams=3)
    short = generate_pages(model, vocab, dc.prompts(vocab), cfg.replace(shortlist=M))
    cands = build_prompts(dc.HISTORIES, vocab, max_history=50, exclude=dc.EXCLUDE,
                          candidates=top_allowed(model, vocab, M))
    full = generate_pages(model, vocab, cands, cfg)
    assert short.items.tolist() == full.items.tolist(), (decode_path, strategy)
    torch.testing.assert_close(short.logprobs, full.logprobs, atol=1e-5, rtol=0)
    # a row with fewer allowed items than M (row 8: 3 of its 4 candidates unseen) fills as many slots
    # as without a shortlist
    plain = generate_pages(model, vocab, dc.prompts(vocab), cfg)
    assert (short.items[8] >= 0).sum() == (plain.items[8] >= 0).sum() == 3
    # with these wide weights the shortlist moves pages (else the test could not tell the two apart)
    assert (plain.items != short.items).any(dim=1).sum() >= 3


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_recorded_logprobs_are_recomputed_from_the_returned_prompts(lm, strategy):
    model, vocab = lm
    cfg = GenerationConfig(page_size=8, strategy=strategy, num_beams=3, shortlist=M)
    pages = generate_pages(model, vocab, dc.prompts(vocab), cfg, generator=torch.Generator().manual_seed(3))
    again = page_logprobs(model, vocab, pages.prompts, pages.items)
    torch.testing.assert_close(again["logprobs"], pages.logprobs, atol=1e-4, rtol=0)
    allowed = top_allowed(model, vocab, M)
    for b, (row, ok) in enumerate(zip(pages.items.tolist(), allowed)):
        assert {i for i in row if i >= 0} <= set(ok)
        assert set(torch.nonzero(~pages.prompts.blocked[b]).flatten().tolist()) == set(ok)


def test_full_ranking_and_a_whole_catalogue_shortlist_change_nothing(lm):
    model, vocab = lm
    cfg = GenerationConfig(page_size=8)
    plain = generate_pages(model, vocab, dc.prompts(vocab), cfg)
    short = generate_pages(model, vocab, dc.prompts(vocab), cfg.replace(shortlist=M))
    torch.testing.assert_close(short.first_scores, plain.first_scores)
    whole = generate_pages(model, vocab, dc.prompts(vocab), cfg.replace(shortlist=vocab.n_items))
    assert whole.items.tolist() == plain.items.tolist()
    torch.testing.assert_close(whole.logprobs, plain.logprobs)
    # the first slot's item is the same (its argmax is in any shortlist); later slots may move
    assert short.items[:, 0].tolist() == plain.items[:, 0].tolist()


def test_shortlist_shorter_than_the_page_is_refused():
    with pytest.raises(ConfigError, match="shortlist.*page_size=10"):
        GenerationConfig(page_size=10, shortlist=5)
