"""The KV-cache decoder against pages recorded from the previous one (tests/decode_cases.py):
every strategy, fixed seeds, on the GPT-2 fast path, with one bucket per prompt length and
through the HF fallback. Pages must be identical; log-probs equal to float32 rounding."""
import json

import pytest
import torch

import decode_cases as dc
from rlhf_ray import kvdecode
from rlhf_ray.generation import build_prompts, generate_pages, score_items

REFERENCE = json.loads(dc.REFERENCE.read_text())
ATOL = 1e-5  # measured: 0 on one bucket, at most 1.5e-6 with a bucket per length


@pytest.fixture(scope="module")
def lm():
    return dc.tiny_lm()



@pytest.mark.parametrize("case", list(dc.CASES))
def test_pages_and_logprobs_equal_the_previous_decoder(lm, decode_path, case):
    model, vocab = lm
    pages = dc.run_case(model, vocab, case)
    ref = REFERENCE[case]
    assert pages.items.tolist() == ref["items"], (decode_path, case)
    torch.testing.assert_close(pages.logprobs, torch.tensor(ref["logprobs"]), atol=ATOL, rtol=0)


def test_the_paths_really_differ(lm, monkeypatch):
    """The fixture's modes reach the code they name: GPT-2 step vs HF, one vs several buckets."""
    model, vocab = lm
    seen = []
    real_init = kvdecode.Decoder.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen.append((type(self.parts[0]).__name__, len(self.groups)))

    monkeypatch.setattr(kvdecode.Decoder, "__init__", spy)
    dc.run_case(model, vocab, "greedy")
    monkeypatch.setattr(kvdecode, "BUCKET_PREFILL_COST", 0)
    monkeypatch.setattr(kvdecode, "BUCKET_STEP_COST", 0)
    monkeypatch.setattr(kvdecode, "fast_path", lambda m: False)
    dc.run_case(model, vocab, "greedy")
    n_lengths = len(set(dc.prompts(vocab).attention_mask.sum(1).tolist()))
    assert seen == [("_GPT2Rows", 1), ("_HFRows", n_lengths)]


def test_first_scores_are_the_full_ranking(lm):
    """generate_pages' first_scores = score_items = an uncached HF forward's last position (to float
    rounding: the batch shapes differ)."""
    model, vocab = lm
    prompts = dc.prompts(vocab)
    first = dc.run_case(model, vocab, "greedy").first_scores
    torch.testing.assert_close(score_items(model, vocab, prompts), first, atol=ATOL, rtol=0)
    torch.testing.assert_close(dc.run_case(model, vocab, "beam3").first_scores, first, atol=ATOL, rtol=0)
    from rlhf_ray.model import positions

    am = prompts.attention_mask
    full = model(input_ids=prompts.input_ids, attention_mask=am, position_ids=positions(am)).logits[:, -1]
    plain = kvdecode.item_logits(full, vocab).masked_fill(prompts.blocked, float("-inf"))
    torch.testing.assert_close(first, plain, atol=ATOL, rtol=0)


def test_buckets_group_equal_lengths_and_cover_every_row():
    lengths = [5, 53, 53, 10, 53, 5, 30, 53] * 40
    for cost in (0, 64, 256, 10**9):
        groups = kvdecode.buckets(lengths, cost)
        assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
        spans = [(min(lengths[r] for r in g), max(lengths[r] for r in g)) for g in groups]
        assert all(hi < lo for (_, hi), (lo, _) in zip(spans, spans[1:])), spans  # disjoint, increasing
    assert len(kvdecode.buckets(lengths, 0)) == 4 and len(kvdecode.buckets(lengths, 10**9)) == 1
    # one long prompt among short ones is worth its own call when calls are cheap
    assert kvdecode.buckets([3] * 100 + [50], 64) == [list(range(100)), [100]]


def test_empty_and_full_histories_through_the_step(lm):
    """Rows with nothing allowed keep decoding padding without disturbing the others."""
    model, vocab = lm
    prompts = build_prompts([list(range(dc.N_ITEMS)), [1], []], vocab, max_history=50)
    from rlhf_ray.config import GenerationConfig

    pages = generate_pages(model, vocab, prompts, GenerationConfig(page_size=4))
    assert pages.items[0].tolist() == [-1] * 4 and (pages.items[1:] >= 0).all()
    assert torch.isinf(pages.first_scores[0]).all()
