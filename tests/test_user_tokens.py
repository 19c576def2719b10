"""User tokens (``model.user_tokens``) are used alike everywhere a prompt is built: SFT's
next-item windows and page prompts, pre-training's rating prompts, LPO batches, PPO rollout
prompts, validation, test evaluation and Serve put each row's own ``<user_u>`` at position 1;
SFT's steps train exactly the user rows they show. With user tokens off nothing carries one."""
import random

import numpy as np
import pytest
import torch

from rlhf_ray.checkpoint import load_checkpoint
from rlhf_ray.config import GenerationConfig, SFTConfig
from rlhf_ray.evaluation import evaluate_full, score_lists
from rlhf_ray.generation import build_prompts, generate_pages, prompt_user, score_items
from rlhf_ray.metrics import topk_from_scores
from rlhf_ray.stages.common import init_policy, open_data, ranking_validator
from rlhf_ray.stages.sft import IGNORE, SFTModule, build_spec, training_sequences
from tests.conftest import TINY_MODEL, tiny_sft_config

MAX_HISTORY = 20


def user_config(on: bool = True, **train) -> SFTConfig:
    base = tiny_sft_config(**train)
    return base.replace(model={**TINY_MODEL, "user_tokens": on})


@pytest.fixture(scope="module")
def prepared(synth_data):
    return open_data(synth_data)


@pytest.fixture(scope="module")
def own_items(prepared) -> dict[int, list[int]]:
    """user_idx -> every item of the user's sequence (training part and beyond), in time order."""
    s = prepared.sequences
    return {int(u): list(map(int, it)) for u, it in zip(s["user_idx"], s["items"])}


@pytest.fixture(scope="module")
def user_sft(synth_data, tmp_path_factory):
    """A tiny SFT checkpoint trained with user tokens on."""
    from rlhf_ray.stages import sft

    out = tmp_path_factory.mktemp("user-sft") / "sft"
    sft.run(user_config(), str(synth_data), str(out))
    return out


def is_slice(part, whole) -> bool:
    """Whether ``part`` is a run of consecutive entries of ``whole``."""
    part, n = list(part), len(part)
    return any(whole[i: i + n] == part for i in range(len(whole) - n + 1))


def real(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """One row's tokens without its padding."""
    return ids[mask.bool()].tolist()


def user_of(row: list[int], vocab) -> int | None:
    """The user whose token is at position 1 of a row, else None."""
    t = row[1]
    return t - vocab.user_offset if vocab.user_offset <= t < vocab.user_offset + vocab.n_users else None


def items_of(row: list[int], vocab) -> list[int]:
    return [t - vocab.item_offset for t in row if vocab.item_offset <= t < vocab.item_offset + vocab.n_items]


def sft_batches(prepared, on: bool, tmp_path, n: int):
    cfg = user_config(on)
    lm, tok, vocab, catalog, _ = init_policy(None, cfg.model, prepared)
    spec = build_spec(cfg, prepared, lm, tok, vocab, catalog, tmp_path)
    batches = []
    for b in spec.batches(0, 0, 1):
        batches.append(b)
        if len(batches) == n:
            break
    return spec, vocab, batches


def window_rows(batch) -> list[list[int]]:
    w = batch["windows"]
    return [real(w["ids"][b], w["mask"][b]) for b in range(len(w["ids"]))]


def prompt_rows(prompts) -> list[list[int]]:
    return [real(prompts.input_ids[b], prompts.attention_mask[b]) for b in range(len(prompts.input_ids))]


# --------------------------------------------------------------------------- SFT


def test_sft_windows_and_page_prompts_carry_their_own_user(prepared, own_items, tmp_path):
    _, vocab, batches = sft_batches(prepared, True, tmp_path, 2)
    assert vocab.n_users == prepared.n_users > 0
    n_windows = n_prompts = 0
    for batch in batches:
        w = batch["windows"]
        for b, row in enumerate(window_rows(batch)):
            u = user_of(row, vocab)
            assert row[0] == vocab.bos and u is not None and row[2] == vocab.hist, row[:3]
            items = items_of(row, vocab)
            assert is_slice(items, own_items[u]), (u, items)  # the window is the token's user's own items
            labels = w["labels"][b].tolist()
            assert labels[:2] == [IGNORE, IGNORE] and labels[2: 2 + len(items)] == items  # <hist> predicts i_1
            n_windows += 1
        pages = batch["pages"]
        for b, row in enumerate(prompt_rows(pages["prompts"])):
            u = user_of(row, vocab)
            assert row[0] == vocab.bos and u is not None and row[2] == vocab.hist and row[-1] == vocab.page
            hist = items_of(row, vocab)
            assert is_slice(hist, own_items[u]), (u, hist)
            page = [i for i in pages["pages"][b].tolist() if i >= 0]
            assert set(page) <= set(own_items[u])  # the golden page is the same user's future positives
            n_prompts += 1
    assert n_windows >= 16 and n_prompts >= 1


def test_sft_steps_train_the_user_rows_they_show_and_no_other(prepared, tmp_path):
    torch.manual_seed(0)
    spec, vocab, batches = sft_batches(prepared, True, tmp_path, 2)
    shown = {user_of(r, vocab) for b in batches for r in window_rows(b) + prompt_rows(b["pages"]["prompts"])}
    unseen = set(range(vocab.n_users)) - shown
    assert shown and unseen and None not in shown
    module: SFTModule = spec.module
    emb = module.lm.get_input_embeddings().weight
    before = emb.detach().clone()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.0)
    for batch in batches:
        loss, _ = module(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = lambda us: torch.as_tensor(sorted(us)) + vocab.user_offset  # noqa: E731
    delta = (emb.detach() - before).abs().amax(dim=1)  # (V,) largest change per row
    assert bool((delta[rows(shown)] > 0).all()), "a shown user's row was not trained"
    assert bool((delta[rows(unseen)] == 0).all()), "a user never shown was trained"


# --------------------------------------------------------------------------- pre-training, LPO, PPO


def test_pretrain_rating_prompts_carry_their_own_user(prepared, own_items):
    from rlhf_ray.stages.pretrain import _valid_ratings, rating_examples

    _, _, vocab, _, _ = init_policy(None, user_config().model, prepared)
    train = rating_examples(training_sequences(prepared), vocab, MAX_HISTORY, 2, random.Random(0))
    for ids, _ in train + _valid_ratings(prepared, vocab, MAX_HISTORY):
        u = user_of(ids, vocab)
        assert ids[0] == vocab.bos and u is not None and ids[2] == vocab.hist and ids[-2] == vocab.sep
        assert is_slice(items_of(ids, vocab), own_items[u])  # history and the rated item: the user's own


def test_lpo_batch_prompts_carry_their_own_user(prepared, own_items):
    from rlhf_ray.stages import lpo

    _, _, vocab, _, _ = init_policy(None, user_config().model, prepared)
    seqs = training_sequences(prepared)
    examples = lpo.lpo_examples(seqs, prepared.positive_threshold, 2, random.Random(0))[:40]
    batch = lpo.example_batch(examples, vocab, MAX_HISTORY, prepared.is_tail)
    for e, row, pos in zip(examples, prompt_rows(batch["prompts"]), batch["pos"].tolist()):
        u = user_of(row, vocab)
        assert u == e.user is not None and row[2] == vocab.hist
        assert is_slice(items_of(row, vocab) + [pos], own_items[u])  # history then the positive


def test_ppo_rollout_prompts_carry_their_own_user(user_sft, synth_data, prepared, tmp_path):
    """The orchestrator's prompt batch (built without starting Ray) for two iterations."""
    from actors.orchestrator import PPOOrchestrator
    from test_ppo_common import ppo_config

    orch = PPOOrchestrator(ppo_config(holdout=1), sft=str(user_sft), reward="rule", data=str(synth_data),
                           out=str(tmp_path / "ppo"), log=lambda s: None)
    train = prepared.histories("train")
    by_user = dict(zip(train.user_idx.tolist(), train.histories))
    for it in (0, 1):
        pb = orch.prompt_batch(it)
        for u, hist, row in zip(pb.user_idx.tolist(), pb.histories, prompt_rows(pb.prompts(orch.vocab))):
            assert user_of(row, orch.vocab) == u and row[2] == orch.vocab.hist
            full = by_user[u]
            assert hist == full[:max(1, len(full) - 1)]  # the user's own history less the holdout
            assert items_of(row, orch.vocab) == hist[-MAX_HISTORY:]


# --------------------------------------------------------------------------- validation, evaluation, Serve


def explicit_ranking(model, vocab, h, k: int) -> np.ndarray:
    """Top-k of the first-slot scores of prompts built here, each with its user."""
    prompts = build_prompts(h.histories, vocab, MAX_HISTORY, user_idx=h.user_idx)
    for row, u in zip(prompt_rows(prompts), h.user_idx.tolist()):
        assert user_of(row, vocab) == u
    return topk_from_scores(score_items(model, vocab, prompts).numpy(), k)


def test_validation_and_test_evaluation_build_the_user_prompt(user_sft, prepared):
    ck = load_checkpoint(user_sft)
    model, vocab = ck.model.eval(), ck.vocab
    cfg = user_config()
    gen = GenerationConfig(max_history=MAX_HISTORY, page_size=5)
    for split in ("valid", "test"):
        h = prepared.histories(split)
        want = explicit_ranking(model, vocab, h, 20)
        ev = evaluate_full(model, vocab, prepared, split, gen, ks=(10, 20), pages=False)
        assert np.array_equal(np.stack(ev.per_user["ranking"].to_numpy()), want), split
        anonymous = build_prompts(h.histories, vocab, MAX_HISTORY)  # the same histories without the user
        assert not np.array_equal(topk_from_scores(score_items(model, vocab, anonymous).numpy(), 20), want)
    # the stage validator (SFT, LPO) scores the valid split on these same user prompts
    h = prepared.histories("valid")
    scored = score_lists(explicit_ranking(model, vocab, h, 20), None, h.targets, h.target_ratings, prepared,
                         ev.protocol, (10, 20))
    got = ranking_validator(prepared, vocab, cfg, 0)(SFTModule(model, vocab, cfg))
    assert got["val/ndcg@10"] == pytest.approx(float(np.nanmean(scored.per_user["ndcg@10"])), abs=1e-12)
    assert got["val/recall@20"] == pytest.approx(float(np.nanmean(scored.per_user["recall@20"])), abs=1e-12)


def test_serve_gives_a_known_user_its_token_and_a_history_none(user_sft, synth_data):
    from rlhf_ray.serve.ranker import Ranker, RankRequest, UserHistories

    users = UserHistories.load(synth_data)
    ranker = Ranker.load(user_sft, users, max_k=20)
    vocab, H, k = ranker.vocab, ranker.max_history, 8
    gen = GenerationConfig(page_size=k, strategy="greedy", max_history=H)

    def decode(hist, user):
        prompts = build_prompts([hist], vocab, H, user_idx=[user])
        return [ranker.item_ids[i] for i in generate_pages(ranker.model, vocab, prompts, gen).items[0].tolist()]

    differ = 0
    for uid, (u, hist) in list(users.by_user.items())[:10]:
        hist = hist.tolist()
        [known, anon] = ranker.rank([RankRequest(user_id=uid, k=k),
                                     RankRequest(history=[ranker.item_ids[i] for i in hist], k=k)])
        assert known.items == decode(hist, u)  # the known user's page: prompt with <user_u>
        assert anon.items == decode(hist, None)  # the same history, anonymous: no user token
        differ += known.items != anon.items
    assert differ > 0  # the token is in effect: some user's page moves with it


# --------------------------------------------------------------------------- user tokens off


def test_without_user_tokens_no_prompt_carries_one(prepared, tmp_path):
    from actors.experience import rollout_prompts
    from rlhf_ray.stages import lpo

    _, vocab, batches = sft_batches(prepared, False, tmp_path, 2)
    assert vocab.n_users == 0 and vocab.size == vocab.user_offset  # no user rows at all
    assert prompt_user(vocab, 3) is None
    for batch in batches:
        for row in window_rows(batch) + prompt_rows(batch["pages"]["prompts"]):
            assert row[:2] == [vocab.bos, vocab.hist]
    examples = lpo.lpo_examples(training_sequences(prepared), prepared.positive_threshold, 2, random.Random(0))[:20]
    assert all(e.user is not None for e in examples)  # users are known, and still no token
    for row in prompt_rows(lpo.example_batch(examples, vocab, MAX_HISTORY, prepared.is_tail)["prompts"]):
        assert row[:2] == [vocab.bos, vocab.hist]
    train = prepared.histories("train")
    pb = rollout_prompts(train.histories[:16], train.user_idx[:16], vocab, MAX_HISTORY)
    plain = build_prompts(train.histories[:16], vocab, MAX_HISTORY)
    got = pb.prompts(vocab)
    assert torch.equal(got.input_ids, plain.input_ids) and torch.equal(got.blocked, plain.blocked)


def test_a_user_without_a_token_is_an_error(prepared):
    _, _, vocab, _, _ = init_policy(None, user_config().model, prepared)
    with pytest.raises(ValueError, match=f"user_idx {vocab.n_users} has no user token"):
        build_prompts([[1, 2]], vocab, MAX_HISTORY, user_idx=[vocab.n_users])
