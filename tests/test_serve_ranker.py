"""The serving logic without Ray or HTTP: pages, batching equivalence, popularity fallback,
request checks, and the HTTP body schema."""
import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from rlhf_ray.checkpoint import load_checkpoint
from rlhf_ray.errors import CheckpointError
from rlhf_ray.serve.ranker import Page, Ranker, RankRequest, RequestError, UserHistories
from rlhf_ray.serve.schemas import RankBody


@pytest.fixture(scope="module")
def users(synth_data):
    return UserHistories.load(synth_data)


@pytest.fixture(scope="module")
def ranker(tiny_sft, users):
    return Ranker.load(tiny_sft, users, max_k=20)


def _check_page(page, k, forbidden=(), allowed=None):
    assert isinstance(page, Page), page
    assert len(page.items) == k == len(page.titles) == len(page.scores)
    assert len(set(page.items)) == k, f"repeated item in {page.items}"
    assert not set(page.items) & set(forbidden), f"forbidden item on the page: {page.items}"
    if allowed is not None:
        assert set(page.items) <= set(allowed)
    assert all(s <= 0 and math.isfinite(s) for s in page.scores)


def test_known_user_page_excludes_the_whole_history(ranker, users):
    uid, (_, hist) = next(iter(users.by_user.items()))
    seen = {ranker.item_ids[i] for i in hist}
    assert len(hist) > ranker.max_history or len(seen) > 0
    [page] = ranker.rank([RankRequest(user_id=uid, k=12)])
    _check_page(page, 12, forbidden=seen)
    assert page.source == "user_history"
    assert page.titles == [ranker.titles[ranker.index[i]] for i in page.items]
    assert page.checkpoint_id == ranker.id and page.stage == "sft"


def test_request_history_exclude_and_candidates(ranker):
    ids = ranker.item_ids
    hist, excl, cands = ids[:5], ids[5:8], ids[3:20]
    [page] = ranker.rank([RankRequest(history=hist, k=6, exclude=excl, candidates=cands)])
    _check_page(page, 6, forbidden=hist + excl, allowed=cands)
    assert page.source == "request_history"
    # fewer allowed than asked: a shorter page and a note, never a repeat or a padding id
    [short] = ranker.rank([RankRequest(history=hist, k=10, candidates=ids[:8])])
    assert sorted(short.items) == sorted(ids[5:8]) and short.notes


def test_batched_greedy_equals_one_at_a_time(ranker, users):
    rnd = random.Random(0)
    ids, uids = ranker.item_ids, list(users.by_user)
    reqs = []
    for i in range(30):
        if i % 3 == 0:
            reqs.append(RankRequest(user_id=rnd.choice(uids), k=rnd.randint(1, 20), exclude=rnd.sample(ids, 3)))
        else:
            reqs.append(RankRequest(history=rnd.sample(ids, rnd.randint(1, 40)), k=rnd.randint(1, 20),
                                    candidates=rnd.sample(ids, 30) if i % 3 == 2 else None))
    batched = ranker.rank(reqs)
    for req, got in zip(reqs, batched):
        [alone] = ranker.rank([req])
        assert got.items == alone.items
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
        assert len(got.items) == req.k or (len(got.items) < req.k and got.notes)


def test_seeded_sampling_ignores_batch_company(ranker):
    ids = ranker.item_ids
    req = RankRequest(history=ids[:4], k=8, strategy="sample", temperature=1.5, top_k=30, seed=11)
    [alone] = ranker.rank([req])
    company = [RankRequest(history=ids[i:i + 3], k=5, strategy="sample", temperature=1.5, top_k=30, seed=i)
               for i in range(5)]
    batched = ranker.rank(company + [req] + company)
    assert batched[5].items == alone.items
    _check_page(alone, 8, forbidden=ids[:4])
    others = {tuple(ranker.rank([RankRequest(history=ids[:4], k=8, strategy="sample", temperature=1.5,
                                             top_k=30, seed=s)])[0].items) for s in range(6)}
    assert len(others) > 1, "different seeds should give different pages"


def test_popularity_fallback(ranker):
    pop = ranker.popularity
    order = [ranker.item_ids[i] for i in np.argsort(-pop, kind="stable")]
    [empty, stranger] = ranker.rank([RankRequest(history=[], k=5), RankRequest(user_id="no-such-user", k=5)])
    for page in (empty, stranger):
        assert page.source == "popularity" and page.items == order[:5]
    assert stranger.notes and "no-such-user" in stranger.notes[0]
    w = pop + 1.0
    assert empty.scores[0] == pytest.approx(math.log(w.max() / w.sum()))
    [restricted] = ranker.rank([RankRequest(history=[], k=3, exclude=order[:1], candidates=order[:4])])
    assert restricted.items == order[1:4]
    # renormalised over what is left: the last allowed item is certain
    assert restricted.scores[-1] == pytest.approx(0.0)


def test_bad_requests_are_reported_one_by_one(ranker):
    good = RankRequest(history=ranker.item_ids[:2], k=3)
    out = ranker.rank([
        RankRequest(history=["nope", ranker.item_ids[0]], exclude=["also-nope"], k=3),
        good,
        RankRequest(history=ranker.item_ids[:2], k=21),
        RankRequest(history=ranker.item_ids[:2], k=0),
        RankRequest(user_id="1", history=[], k=3),
        RankRequest(k=3),
        RankRequest(history=[], k=3, strategy="beam"),
    ])
    assert isinstance(out[0], RequestError) and out[0].items == ["also-nope", "nope"]
    assert "nope" in str(out[0])
    assert isinstance(out[1], Page) and len(out[1].items) == 3
    assert all(isinstance(e, RequestError) for e in out[2:])
    assert out[2].field == out[3].field == "k"


def test_history_window_fits_the_model_positions(tiny_sft, users):
    ck = load_checkpoint(tiny_sft)
    n_pos = ck.model.config.n_positions
    r = Ranker(ck, users, max_k=20, max_history=500)
    assert r.max_history == n_pos - 3 - 20
    assert Ranker(ck, users, max_k=20).max_history == ck.manifest["config"]["max_history"]
    ck.model.config.n_positions = 20
    with pytest.raises(CheckpointError, match="positions"):
        Ranker(ck, users, max_k=20)


def test_user_data_must_match_the_catalogue(tiny_sft, users):
    ck = load_checkpoint(tiny_sft)
    other = UserHistories(users.item_ids[::-1], users.by_user, "elsewhere")
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        Ranker(ck, other)


def test_describe_is_json_safe(tiny_sft):
    import json

    ck = load_checkpoint(tiny_sft)
    ck.manifest["metrics"] = {"val/ndcg@10": float("nan"), "ok": 1.5}
    info = Ranker(ck).describe()
    assert info["metrics"] == {"val/ndcg@10": None, "ok": 1.5}
    json.dumps(info, allow_nan=False)


@pytest.mark.parametrize("body", [
    {"user_id": "1", "history": ["2"]}, {}, {"history": ["1"], "k": 0}, {"history": ["1"], "k": "ten"},
    {"history": ["1"], "k": 2.5}, {"history": [1.5]}, {"history": [True]}, {"history": "1"},
    {"history": ["1"], "strategy": "beam"}, {"history": ["1"], "temperature": 0},
    {"history": ["1"], "candidates": []}, {"history": ["1"], "top_k": -1}, {"history": ["1"], "typo": 1},
])
def test_body_schema_rejects(body):
    with pytest.raises(ValidationError):
        RankBody.model_validate(body)


def test_body_schema_converts_ids_to_strings():
    req = RankBody.model_validate({"history": [1, "2"], "exclude": [3], "candidates": ["4", 5]}).to_request(7)
    assert req.history == ["1", "2"] and req.exclude == ["3"] and req.candidates == ["4", "5"] and req.k == 7


def test_shortlist_decodes_among_the_first_slots_best_items(tiny_sft, users):
    """``ServeConfig.shortlist``: pages come from the M items the first slot ranks highest (raised to
    the request's k when smaller), and the first item is the whole-catalogue page's first item."""
    from rlhf_ray.generation import build_prompts, score_items

    whole = Ranker.load(tiny_sft, users, max_k=20)
    short = Ranker(whole.ckpt, users, max_k=20, shortlist=15)
    assert short.describe()["shortlist"] == 15
    uid, (uidx, hist) = next(iter(users.by_user.items()))
    for k in (6, 18):  # 18 > 15: the shortlist is raised to the page
        [page] = short.rank([RankRequest(user_id=uid, k=k)])
        [plain] = whole.rank([RankRequest(user_id=uid, k=k)])
        _check_page(page, k, forbidden={short.item_ids[i] for i in hist})
        prompts = build_prompts([hist.tolist()], short.vocab, short.max_history, exclude_seen=True,
                                user_idx=[uidx])
        top = score_items(short.model, short.vocab, prompts)[0].topk(max(15, k)).indices.tolist()
        assert {short.index[i] for i in page.items} <= set(top)
        assert page.items[0] == plain.items[0]
