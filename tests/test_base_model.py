"""``model.base_model``: a pretrained model keeps its own tokenizer and embedding rows; the
project's specials, item and user tokens are appended after them, and every stage, the
checkpoint and page generation work on the combined vocabulary.

The "pretrained" model is a tiny GPT-2 with a byte-level BPE trained here (nothing is
downloaded), both written with ``save_pretrained`` as a real base-model directory is.
"""
from pathlib import Path

import pytest
import torch

from rlhf_ray.config import ConfigError, GenerationConfig, PretrainConfig, SFTConfig
from rlhf_ray.stages.common import init_policy, open_data
from rlhf_ray.tokens import SPECIALS, meta_texts

ENGLISH = ["the quick brown fox jumps over the lazy dog", "a story of love and war in the old town",
           "comedy drama action thriller romance documentary"]
BASE_POSITIONS = 64


def save_base(directory: Path, texts: list[str], *, specials=("<|endoftext|>",), n_positions=BASE_POSITIONS,
              tokenizer: bool = True) -> Path:
    """A tiny GPT-2 + its own byte-level BPE (``specials`` first), saved as a base-model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts + ENGLISH * 20, trainer=trainer)
    eos = specials[0]
    hf = GPT2TokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos)
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf), n_positions=n_positions, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=hf.eos_token_id, eos_token_id=hf.eos_token_id))
    model.save_pretrained(str(directory))
    if tokenizer:
        hf.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def prepared(synth_data):
    return open_data(synth_data)


@pytest.fixture(scope="module")
def catalogue_texts(prepared):
    items = prepared.items
    return meta_texts(items["title"].astype(str).tolist(), [list(c) for c in items["categories"]])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, catalogue_texts) -> Path:
    return save_base(tmp_path_factory.mktemp("base") / "gpt2-tiny", catalogue_texts)


def load_base(base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir)), AutoModelForCausalLM.from_pretrained(str(base_dir))


def base_config(cls, base_dir, user_tokens=False, **train):
    t = {"epochs": 1, "batch_size": 16, "progress": False, "tensorboard": False, "max_steps": 3, **train}
    return cls.from_dict({"model": {"base_model": str(base_dir), "user_tokens": user_tokens}, "train": t,
                          "max_history": 20, **({"page_size": 5} if cls is SFTConfig else {})})


def assert_base_tokens_kept(tok, base_tok, texts):
    """Every base id names the same string, and text encodes to the same ids."""
    n_base = len(base_tok)
    assert tok.convert_ids_to_tokens(list(range(n_base))) == base_tok.convert_ids_to_tokens(list(range(n_base)))
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    assert enc == base_tok(texts, add_special_tokens=False)["input_ids"]
    assert max(max(e) for e in enc) < n_base  # text never reaches the appended tokens


def assert_layout(tok, vocab, n_base, n_items, n_users):
    """Specials the base lacked right after it, then contiguous items, then users: all of the tokenizer."""
    assert vocab.n_text == n_base + len(SPECIALS) == vocab.item_offset
    assert sorted([vocab.pad, vocab.bos, vocab.eos, vocab.hist, vocab.page, vocab.sep, vocab.meta]) == \
        [tok.convert_tokens_to_ids(s) for s in SPECIALS if s != "<unk>"]
    assert min(vocab.pad, vocab.bos, vocab.eos, vocab.hist, vocab.page, vocab.sep, vocab.meta) >= n_base
    assert vocab.n_items == n_items and vocab.n_users == n_users
    assert tok.convert_tokens_to_ids([f"<item_{i}>" for i in range(n_items)]) == \
        list(range(vocab.item_offset, vocab.item_offset + n_items))
    assert vocab.user_offset == vocab.item_offset + n_items
    assert tok.convert_tokens_to_ids([f"<user_{u}>" for u in range(n_users)]) == \
        list(range(vocab.user_offset, vocab.user_offset + n_users))
    assert len(tok) == vocab.size


def test_build_keeps_base_rows_and_starts_new_rows_at_the_mean(base_dir, prepared, catalogue_texts):
    base_tok, base_lm = load_base(base_dir)
    n_base = len(base_tok)
    lm, tok, vocab, _, parent = init_policy(None, base_config(SFTConfig, base_dir).model, prepared)
    assert parent is None
    assert_base_tokens_kept(tok, base_tok, catalogue_texts)
    assert_layout(tok, vocab, n_base, len(prepared.items), 0)
    old = base_lm.get_input_embeddings().weight.detach()
    emb = lm.get_input_embeddings().weight.detach()
    assert emb.shape == (vocab.size, old.shape[1]) and lm.config.vocab_size == vocab.size
    torch.testing.assert_close(emb[:n_base], old, rtol=0, atol=0)  # bit-identical pretrained rows
    assert lm.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    new = emb[n_base:]
    # mean of the pretrained rows + 0.1 x their per-dimension spread: near the mean, all different
    torch.testing.assert_close(new.mean(0), old.mean(0), rtol=0, atol=0.05 * float(old.std(0).max()))
    assert float((new - old.mean(0)).abs().max()) < float(old.std(0).max())
    assert torch.unique(new, dim=0).shape[0] == new.shape[0]
    for name, p in base_lm.named_parameters():  # the transformer itself is the pretrained one
        if "wte" not in name:
            torch.testing.assert_close(dict(lm.named_parameters())[name], p, rtol=0, atol=0)


@pytest.mark.parametrize("user_tokens", [False, True], ids=["users-off", "users-on"])
def test_sft_from_base_model_round_trips_and_generates(base_dir, synth_data, prepared, catalogue_texts,
                                                       tmp_path, user_tokens):
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.generation import build_prompts, generate_pages
    from rlhf_ray.stages import sft

    base_tok, base_lm = load_base(base_dir)
    n_base = len(base_tok)
    # SFT's losses read item logits only and its inputs hold no text token, so without weight
    # decay the pretrained rows get no update at all: the checkpoint must hold them unchanged.
    cfg = base_config(SFTConfig, base_dir, user_tokens=user_tokens, weight_decay=0.0)
    out = tmp_path / "sft"
    metrics = sft.run(cfg, str(synth_data), str(out))
    assert metrics["checkpoint"]
    ck = load_checkpoint(out)
    n_users = len(prepared.users) if user_tokens else 0
    assert_base_tokens_kept(ck.tokenizer, base_tok, catalogue_texts)
    assert_layout(ck.tokenizer, ck.vocab, n_base, len(prepared.items), n_users)
    emb = ck.model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == ck.vocab.size
    torch.testing.assert_close(emb[:n_base], base_lm.get_input_embeddings().weight.detach(), rtol=0, atol=0)
    assert ck.manifest["config"]["model"]["base_model"] == str(base_dir)

    h = prepared.histories("test", max_history=20)
    users = h.user_idx[:4] if user_tokens else None
    prompts = build_prompts(h.histories[:4], ck.vocab, 20, user_idx=users)
    if user_tokens:
        assert all(ck.vocab.user_token(int(u)) in row.tolist() for u, row in zip(users, prompts.input_ids))
    pages = generate_pages(ck.model.eval(), ck.vocab, prompts, GenerationConfig(max_history=20, page_size=5))
    for hist, page in zip(h.histories[:4], pages.items.tolist()):
        assert len(set(page)) == 5 and all(0 <= i < ck.vocab.n_items and i not in hist for i in page)


def test_pretrain_from_base_model_reads_text_with_the_base_tokenizer(base_dir, synth_data, prepared,
                                                                     catalogue_texts, tmp_path):
    from rlhf_ray.checkpoint import load_checkpoint
    from rlhf_ray.generation import build_prompts, generate_pages
    from rlhf_ray.stages import pretrain, sft
    from rlhf_ray.stages.pretrain import text_examples

    base_tok, _ = load_base(base_dir)
    pre = tmp_path / "pretrain"
    pretrain.run(base_config(PretrainConfig, base_dir), str(synth_data), str(pre))
    ck = load_checkpoint(pre)
    assert_base_tokens_kept(ck.tokenizer, base_tok, catalogue_texts)
    assert_layout(ck.tokenizer, ck.vocab, len(base_tok), len(prepared.items), 0)
    ex = text_examples(prepared, ck.tokenizer, ck.vocab, BASE_POSITIONS)
    want = base_tok(catalogue_texts[0], add_special_tokens=False)["input_ids"][: BASE_POSITIONS - 4]
    assert ex[0] == [ck.vocab.bos, ck.vocab.item_token(0), ck.vocab.meta] + want + [ck.vocab.eos]
    assert max(len(e) for e in ex) <= BASE_POSITIONS  # truncated to the base model's context

    out = tmp_path / "sft"
    sft.run(base_config(SFTConfig, base_dir, max_steps=2), str(synth_data), str(out), init=str(pre))
    ck2 = load_checkpoint(out)
    assert ck2.vocab == ck.vocab and ck2.manifest["parent"]["id"] == ck.id
    h = prepared.histories("test", max_history=20)
    pages = generate_pages(ck2.model.eval(), ck2.vocab, build_prompts(h.histories[:2], ck2.vocab, 20),
                           GenerationConfig(max_history=20, page_size=5))
    assert (pages.items >= 0).all() and (pages.items < ck2.vocab.n_items).all()


def test_specials_the_base_already_has_keep_their_ids(tmp_path, prepared, catalogue_texts):
    d = save_base(tmp_path / "with-pad", catalogue_texts, specials=("<|endoftext|>", "<pad>"))
    base_tok, _ = load_base(d)
    _, tok, vocab, _, _ = init_policy(None, base_config(SFTConfig, d).model, prepared)
    assert vocab.pad == base_tok.convert_tokens_to_ids("<pad>") < len(base_tok)
    assert vocab.n_text == len(base_tok) + len(SPECIALS) - 1 == vocab.item_offset
    assert tok.convert_tokens_to_ids(f"<item_{vocab.n_items - 1}>") == vocab.size - 1


def test_base_model_without_a_tokenizer_is_refused(tmp_path, prepared, catalogue_texts):
    d = save_base(tmp_path / "no-tok", catalogue_texts, tokenizer=False)
    with pytest.raises(ConfigError, match=r"model.base_model .*no-tok: no tokenizer in the directory"):
        init_policy(None, base_config(SFTConfig, d).model, prepared)
    with pytest.raises(ConfigError, match=r"model.base_model .*missing: not a directory"):
        init_policy(None, base_config(SFTConfig, tmp_path / "missing").model, prepared)


def test_base_tokenizer_with_item_named_tokens_is_refused(tmp_path, prepared, catalogue_texts):
    d = save_base(tmp_path / "clash", catalogue_texts, specials=("<|endoftext|>", "<item_3>"))
    with pytest.raises(ConfigError, match=r"already has 1 token\(s\) named like .*'<item_3>'.*not get contiguous"):
        init_policy(None, base_config(SFTConfig, d).model, prepared)


@pytest.mark.parametrize("stage", ["sft", "pretrain"])
def test_base_model_with_too_short_context_is_refused(tmp_path, synth_data, catalogue_texts, stage):
    from rlhf_ray.stages import pretrain, sft

    d = save_base(tmp_path / "short", catalogue_texts, n_positions=16)
    mod, cls = (sft, SFTConfig) if stage == "sft" else (pretrain, PretrainConfig)
    with pytest.raises(ConfigError, match=r"max_history: .*20 history items.*the model has 16"):
        mod.run(base_config(cls, d), str(synth_data), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
