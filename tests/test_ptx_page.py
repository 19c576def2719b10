"""PPO-ptx's page term without Ray: the held-out page of each rollout prompt is the page SFT
teaches (its own definition, the training range only), it travels with the prompt batch's
rows, and the config refuses it without held-out interactions."""
import numpy as np
import pytest
import torch

from actors.batching import take
from actors.experience import held_out_pages, holdout_cut, rollout_prompts
from rlhf_ray.config import ConfigError, PPOConfig
from rlhf_ray.data.pages import ground_truth_page, next_positives, page_after


def test_next_positives_time_order_new_items_only():
    items = np.array([1, 2, 3, 4, 2, 5, 6, 7])
    ratings = np.array([5, 5, 1, 5, 5, 2, 4, 5])
    # cut at 3: item 2 was had before the cut, 5 is not a positive (threshold 3)
    assert next_positives(items, ratings, 3, 3.0, 10) == [4, 6, 7]
    assert next_positives(items, ratings, 3, 3.0, 2) == [4, 6]
    assert next_positives(items, ratings, 8, 3.0, 10) == []


def test_page_after_dispatches_and_refuses_unknown_order():
    items, ratings = np.array([1, 2, 3, 4, 5]), np.array([5, 4, 5, 5, 4])
    cats = np.zeros(6, dtype=np.int64)
    assert page_after(items, ratings, 1, 3.0, 10, "time") == [2, 3, 4, 5]
    assert page_after(items, ratings, 1, 3.0, 10, "ground_truth", cats, 0, 10) == \
        ground_truth_page(items, ratings, 1, cats, 3.0, 10, 0, 10) == [3, 4, 2, 5]  # by rating, then recency
    with pytest.raises(ValueError, match="order"):
        page_after(items, ratings, 1, 3.0, 10, "rating")
    with pytest.raises(ValueError, match="categories"):
        page_after(items, ratings, 1, 3.0, 10, "ground_truth")


def test_held_out_pages_come_from_the_training_range_after_the_cut(synth_data):
    from rlhf_ray.data.prepared import load_prepared

    prepared = load_prepared(synth_data)
    train = prepared.histories("train")
    pages = held_out_pages(prepared, train.user_idx, 4, 10, {"page_order": "time"})
    s = prepared.sequences
    row = {int(u): i for i, u in enumerate(s["user_idx"])}
    nonempty = 0
    for u, hist, page in zip(train.user_idx, train.histories, pages):
        i = row[int(u)]
        cut = holdout_cut(len(hist), 4)
        held = np.asarray(s["items"][i])[cut:len(hist)]
        held_r = np.asarray(s["ratings"][i])[cut:len(hist)]
        positives = [int(x) for x, r in zip(held, held_r) if r > prepared.positive_threshold]
        assert page == [x for x in dict.fromkeys(positives) if x not in set(hist[:cut])][:10]
        assert not set(page) & set(hist[:cut])  # never what the prompt holds
        nonempty += bool(page)
    assert nonempty > len(pages) // 2  # the fixture's users do hold out positives


def test_targets_travel_with_the_rows(synth_data):
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.tokens import Vocab

    prepared = load_prepared(synth_data)
    train = prepared.histories("train")
    users = train.user_idx[:6]
    targets = held_out_pages(prepared, users, 4, 5, {})
    targets[2] = []  # a user who held out no positive
    n = prepared.n_items
    vocab = Vocab(n_text=8, item_offset=8, n_items=n, user_offset=8 + n, n_users=0, pad=0, bos=1, eos=2, hist=3,
                  page=4, sep=5, meta=6)
    batch = rollout_prompts(train.histories[:6], users, vocab, 20, holdout=4, targets=targets)
    pages = batch.target_pages()
    assert pages.shape == (6, max(len(t) for t in targets))
    assert bool((pages[2] == -1).all())
    for b, t in enumerate(targets):
        assert pages[b, : len(t)].tolist() == t and bool((pages[b, len(t):] == -1).all())
    part = take(batch, [4, 1])
    assert part.targets == [targets[4], targets[1]] and torch.equal(part.target_pages()[0, :len(targets[4])],
                                                                    torch.tensor(targets[4]))
    with pytest.raises(ValueError, match="no target pages"):
        rollout_prompts(train.histories[:2], users[:2], vocab, 20).target_pages()


def test_config_needs_holdout():
    with pytest.raises(ConfigError, match="ptx_page_coef.*holdout"):
        PPOConfig.from_dict({"policy": {"ptx_page_coef": 0.5}})
    assert PPOConfig.from_dict({"holdout": 3, "policy": {"ptx_page_coef": 0.5}}).policy.ptx_page_coef == 0.5
    with pytest.raises(ConfigError, match="ptx_page_coef"):
        PPOConfig.from_dict({"holdout": 3, "policy": {"ptx_page_coef": -1}})


def test_policy_loss_page_term_reads_the_first_n_slots(tiny_sft, synth_data):
    """The policy's page term is SFT's page loss on the target pages (``ptx_page_slots``: their first N
    slots): computed here against page_logprobs on the same model, and blind to later slots at N = 1."""
    from types import SimpleNamespace

    from actors.models import load_policy
    from actors.policy import PolicyActor
    from rlhf_ray.config import PPOPolicyConfig
    from rlhf_ray.data.prepared import load_prepared
    from rlhf_ray.generation import page_logprobs

    ck = load_policy(str(tiny_sft))
    prepared = load_prepared(synth_data)
    train = prepared.histories("train")
    users = train.user_idx[:8]
    targets = held_out_pages(prepared, users, 6, 5, {})
    targets = [t if t else [0] for t in targets]  # every row holds a target here
    batch = rollout_prompts(train.histories[:8], users, ck.vocab, 20, holdout=6, targets=targets)
    prompts, pages = batch.prompts(ck.vocab), batch.target_pages()
    zeros = torch.zeros(pages.shape[0], 2)
    m = SimpleNamespace(pages=torch.zeros(pages.shape[0], 2, dtype=torch.long) + 1, logprobs=zeros,
                        advantages=zeros, mask=torch.ones(pages.shape[0], 2, dtype=torch.bool), shortlist=None)
    actor = PolicyActor("policy", 0, 1)
    actor.vocab, actor.engine = ck.vocab, SimpleNamespace(module=ck.model)

    def page_nll(slots: int, p=pages) -> float:
        actor.cfg = PPOPolicyConfig(ptx_page_coef=1.0, ptx_page_slots=slots)
        with torch.no_grad():
            return actor._loss((prompts, p), m)[1]["ptx_page_nll"]

    def expected(n: int) -> float:
        with torch.no_grad():
            out = page_logprobs(ck.model, ck.vocab, prompts, pages[:, :n])
        return float(-(out["logprobs"].sum() / out["mask"].sum()))

    assert page_nll(0) == pytest.approx(expected(pages.shape[1]), rel=1e-5)
    assert page_nll(1) == pytest.approx(expected(1), rel=1e-5) and page_nll(1) != pytest.approx(page_nll(0))
    later = pages.clone()
    later[:, 1:] = -1  # drop every slot after the first: the first-slot term does not move
    assert page_nll(1, later) == pytest.approx(page_nll(1), rel=1e-6)
