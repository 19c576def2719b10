"""Constrained decoding: pages hold only allowed, distinct item tokens, and the log-probs
decoding records are the ones page_logprobs recomputes."""
import pytest
import torch

from rlhf_ray.config import GenerationConfig, ModelConfig
from rlhf_ray.generation import build_prompts, generate_pages, page_logprobs, score_items
from rlhf_ray.model import build_model
from rlhf_ray.tokens import train_tokenizer

N_ITEMS = 40


@pytest.fixture(scope="module")
def lm():
    tok, vocab = train_tokenizer(["Toy Story | Animation, Comedy", "Heat | Action, Crime"] * 20,
                                 n_items=N_ITEMS, vocab_size=300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, dropout=0.0, text_vocab_size=300), vocab)
    return model.eval(), vocab


HISTORIES = [[1, 2, 3], [], [5, 6, 7, 8, 9, 10, 11, 12], list(range(0, 36)), [39, 38]]


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_pages_are_distinct_unseen_items(lm, strategy):
    model, vocab = lm
    prompts = build_prompts(HISTORIES, vocab, max_history=50)
    cfg = GenerationConfig(page_size=8, strategy=strategy, num_beams=3)
    pages = generate_pages(model, vocab, prompts, cfg, generator=torch.Generator().manual_seed(0)).items
    assert pages.shape == (len(HISTORIES), 8)
    for hist, row in zip(HISTORIES, pages.tolist()):
        items = [i for i in row if i >= 0]
        assert len(items) == len(set(items)), f"repeat in {row}"
        assert not set(items) & set(hist), f"seen item recommended: {row} vs {hist}"
        assert all(0 <= i < N_ITEMS for i in items)
        # padding only when fewer than K items are allowed
        assert len(items) == min(8, N_ITEMS - len(set(hist)))
        assert all(i == -1 for i in row[len(items):])


def test_exclude_and_candidates_are_respected(lm):
    model, vocab = lm
    cands = [list(range(10, 20)), None]
    prompts = build_prompts([[1], [2]], vocab, 50, exclude=[[11, 12], list(range(20, 40))], candidates=cands)
    pages = generate_pages(model, vocab, prompts, GenerationConfig(page_size=10)).items.tolist()
    assert set(i for i in pages[0] if i >= 0) == set(range(10, 20)) - {11, 12}
    assert pages[0].count(-1) == 2
    assert all(i < 20 and i != 2 for i in pages[1])


def test_seen_items_can_be_allowed(lm):
    model, vocab = lm
    prompts = build_prompts([list(range(N_ITEMS))], vocab, 50, exclude_seen=False)
    pages = generate_pages(model, vocab, prompts, GenerationConfig(page_size=5, exclude_seen=False)).items
    assert (pages >= 0).all()


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_recorded_logprobs_match_recomputation(lm, strategy):
    model, vocab = lm
    prompts = build_prompts(HISTORIES, vocab, 50)
    pages = generate_pages(model, vocab, prompts, GenerationConfig(page_size=6, strategy=strategy),
                           generator=torch.Generator().manual_seed(1))
    again = page_logprobs(model, vocab, prompts, pages.items)
    torch.testing.assert_close(again["logprobs"], pages.logprobs, atol=1e-4, rtol=0)
    assert (again["mask"] == (pages.items >= 0)).all()
    assert (pages.logprobs <= 0).all()


def test_history_nll_is_sfts_next_item_loss_on_the_prompt(lm):
    """PPO-ptx's term: the same forward as the page log-probs, and exactly SFT's L_next on windows
    holding each prompt's history (left padding, the empty history and max_history cuts included)."""
    from rlhf_ray.losses import token_nll
    from rlhf_ray.stages.sft import Window, window_batch

    model, vocab = lm
    H = 12
    prompts = build_prompts(HISTORIES, vocab, max_history=H)
    pages = generate_pages(model, vocab, prompts, GenerationConfig(page_size=4)).items
    out = page_logprobs(model, vocab, prompts, pages, history_nll=True)
    torch.testing.assert_close(out["logprobs"], page_logprobs(model, vocab, prompts, pages)["logprobs"],
                               atol=1e-5, rtol=0)
    w = window_batch([Window(h[-H:], None) for h in HISTORIES if h], vocab)
    logits = model(input_ids=w["ids"], attention_mask=w["mask"], use_cache=False).logits
    want, _ = token_nll(logits[..., vocab.item_offset: vocab.item_offset + vocab.n_items], w["labels"])
    torch.testing.assert_close(out["history_nll"], want, atol=1e-4, rtol=1e-4)
    # differentiable, and 0 (not NaN) for prompts without a history
    empty = build_prompts([[]], vocab, max_history=H)
    e = page_logprobs(model, vocab, empty, pages[:1], history_nll=True)["history_nll"]
    assert float(e.detach()) == 0.0 and e.requires_grad == out["history_nll"].requires_grad


def test_beam_finds_at_least_greedy_likelihood(lm):
    model, vocab = lm
    prompts = build_prompts(HISTORIES, vocab, 50)
    g = generate_pages(model, vocab, prompts, GenerationConfig(page_size=5)).logprobs.sum(1)
    b = generate_pages(model, vocab, prompts, GenerationConfig(page_size=5, strategy="beam", num_beams=4)).logprobs.sum(1)
    assert (b >= g - 1e-4).all()


def test_full_ranking_scores_block_seen_items(lm):
    model, vocab = lm
    prompts = build_prompts(HISTORIES, vocab, 50)
    scores = score_items(model, vocab, prompts)
    assert scores.shape == (len(HISTORIES), N_ITEMS)
    for b, hist in enumerate(HISTORIES):
        assert torch.isinf(scores[b, hist]).all()
        assert torch.isfinite(scores[b]).sum() == N_ITEMS - len(set(hist))


def test_on_page_before_is_the_exclusive_running_union_of_the_page():
    """Each item's first slot, compared with the slot index, is the exclusive cumulative
    one-hot over slots the restriction is defined by (empty slots, -1, put nothing on the page)."""
    from rlhf_ray.generation import on_page_before

    g = torch.Generator().manual_seed(0)
    pages = torch.randint(-1, 12, (64, 7), generator=g)  # repeats and empty slots included
    onehot = torch.zeros((64, 7, 12), dtype=torch.long)
    onehot.scatter_(2, pages.clamp(min=0)[..., None], (pages >= 0).long()[..., None])
    expected = (onehot.cumsum(dim=1) - onehot) > 0
    assert torch.equal(on_page_before(pages, 12), expected)
    assert not on_page_before(pages, 12)[:, 0].any()  # nothing stands before the first slot


def test_fused_gelu_is_gpt2s_gelu_new_and_survives_a_save(tmp_path):
    """build_model swaps GPT-2's python gelu_new for the fused tanh GELU (same function to
    float rounding), records it in the config, and a model saved with gelu_new is converted
    on load."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import GELUTanh, NewGELUActivation

    from rlhf_ray.model import fast_activations

    torch.manual_seed(0)
    old = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)).eval()
    assert old.config.activation_function == "gelu_new"
    ids = torch.randint(0, 50, (3, 10))
    before = old(input_ids=ids).logits
    old.save_pretrained(tmp_path / "old")
    new = fast_activations(old)
    assert not any(isinstance(m, NewGELUActivation) for m in new.modules())
    assert sum(isinstance(m, GELUTanh) for m in new.modules()) == 2
    assert new.config.activation_function == "gelu_pytorch_tanh"
    torch.testing.assert_close(new(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    new.save_pretrained(tmp_path / "new")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "new")
    assert any(isinstance(m, GELUTanh) for m in again.modules())
    model, vocab = _built_lm()
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())


def _built_lm():
    tok, vocab = train_tokenizer(["Heat | Action"] * 10, n_items=5, vocab_size=300)
    return build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, text_vocab_size=300), vocab), vocab
