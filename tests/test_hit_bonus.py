"""HitBonus: a learned reward plus hits on the training positives a PPO prompt held out."""
import numpy as np
import torch

from rlhf_ray.data.prepared import load_prepared
from rlhf_ray.rewards import HitBonus, RewardOutput, mix


class Fixed:
    """A mixed-grained stand-in: page = 1 per page, items = slot index + 1."""

    alpha = 0.3

    def __call__(self, histories, pages, user_idx=None):
        B, K = pages.shape
        mask = pages >= 0
        items = torch.arange(1, K + 1, dtype=torch.float32).repeat(B, 1) * mask
        page = torch.ones(B)
        return RewardOutput(page, items, mix(page, items, mask, self.alpha))


def test_hits_pay_for_held_out_training_positives_only(synth_data):
    prepared = load_prepared(synth_data)
    s = prepared.sequences
    thr = prepared.positive_threshold
    # a user whose training range ends in at least two positives: hold them out of the prompt
    for u, items, ratings, vs in zip(s["user_idx"], s["items"], s["ratings"], s["valid_start"]):
        items, ratings = np.asarray(items[:vs]), np.asarray(ratings[:vs])
        if len(items) > 5 and (ratings[-2:] > thr).all() and items[-1] not in items[:-1] and items[-2] not in items[:-2]:
            break
    history, held = items[:-2].tolist(), items[-2:].tolist()
    never = next(i for i in range(prepared.n_items) if i not in set(items.tolist()))
    pages = torch.tensor([[held[0], history[-1], never, held[1], held[0]],  # 2 new hits, a seen item, a repeat
                          [never, -1, -1, -1, -1]])
    base = Fixed()
    fn = HitBonus(base, prepared, weight=2.0, page_coef=base.alpha, item_coef=1 - base.alpha)
    out = fn([history, history], pages, user_idx=[int(u), int(u)])
    ref = base([history, history], pages)
    hits = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(out.total, ref.total + 2.0 * hits.sum(-1))
    torch.testing.assert_close(out.page + out.items.sum(-1), out.total)  # the parts add up (plain sum)
    mask = pages >= 0
    # each slot keeps the base's share of the total and a hit adds its weight on its own slot
    torch.testing.assert_close(out.items - 2.0 * hits, 0.7 * ref.items * mask / mask.sum(-1, keepdim=True))
    assert (out.items[1, 1:] == 0).all()  # padding earns nothing


def test_diversity_term_pays_the_normalised_category_entropy(synth_data):
    from rlhf_ray.metrics import category_entropy

    prepared = load_prepared(synth_data)
    cats = np.asarray(prepared.item_categories)
    one = np.flatnonzero(cats == cats[0])[:4].tolist()  # four items of one category
    spread = [int(np.flatnonzero(cats == c)[0]) for c in np.unique(cats)[:4]]  # four categories
    pages = torch.tensor([one, spread])
    base = Fixed()
    plain = HitBonus(base, prepared, weight=0.0, page_coef=base.alpha, item_coef=1 - base.alpha)
    fn = HitBonus(base, prepared, weight=0.0, page_coef=base.alpha, item_coef=1 - base.alpha, diversity=1.5)
    h = [[], []]
    out, ref = fn(h, pages, user_idx=[0, 0]), plain(h, pages, user_idx=[0, 0])
    ent = torch.as_tensor(category_entropy(pages.numpy(), prepared.item_categories), dtype=torch.float32)
    torch.testing.assert_close(out.page - ref.page, 1.5 * ent / np.log(4))
    assert float(out.page[1] - ref.page[1]) > float(out.page[0] - ref.page[0])  # the spread page earns more
    torch.testing.assert_close(out.items, ref.items)
    torch.testing.assert_close(out.page + out.items.sum(-1), out.total)


def test_slot_credit_pays_each_slot_the_entropy_it_adds_and_keeps_the_total(synth_data):
    from rlhf_ray.rewards import entropy_steps

    prepared = load_prepared(synth_data)
    cats = np.asarray(prepared.item_categories)
    a = np.flatnonzero(cats == cats[0])[:3].tolist()  # three items of one category
    b = int(np.flatnonzero(cats != cats[0])[0])  # one of another
    pages = torch.tensor([[a[0], a[1], b, a[2]], [a[0], b, -1, -1]])
    steps = entropy_steps(pages, cats)
    assert steps[0, 0] == 0 and steps[0, 1] == 0  # one item, then a second of the same category: no entropy
    assert steps[0, 2] > 0 > steps[0, 3]  # a new category adds entropy, a third of the first takes some back
    assert (steps[1, 2:] == 0).all()  # padding earns nothing
    from rlhf_ray.metrics import category_entropy
    ent = torch.as_tensor(category_entropy(pages.numpy(), cats), dtype=torch.float32)
    torch.testing.assert_close(steps.sum(-1), ent / torch.log(torch.tensor([4.0, 2.0])))
    base = Fixed()
    kw = dict(weight=2.0, page_coef=base.alpha, item_coef=1 - base.alpha, diversity=1.5)
    h = [[], []]
    page_fn = HitBonus(base, prepared, **kw)
    slot_fn = HitBonus(base, prepared, **kw, diversity_slots=True)
    at_page, at_slot = page_fn(h, pages, user_idx=[0, 0]), slot_fn(h, pages, user_idx=[0, 0])
    torch.testing.assert_close(at_slot.total, at_page.total)  # the same reward, credited elsewhere
    torch.testing.assert_close(at_page.page - at_slot.page, 1.5 * steps.sum(-1))
    torch.testing.assert_close(at_slot.items - at_page.items, 1.5 * steps)
    torch.testing.assert_close(at_slot.page + at_slot.items.sum(-1), at_slot.total)
