"""Hand-computed values for every metric in rlhf_ray.metrics.

Discounts used throughout: d(i) = 1/log2(i+1), so d(1) = 1, d(2) = 0.63093,
d(3) = 0.5, d(4) = 0.43068.
"""
import math
import warnings

import numpy as np
import pytest

from rlhf_ray import metrics as M

NAN = np.nan
D1, D2, D3, D4 = 1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- topk_from_scores


def test_topk_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7],
                       [3.0, -1.0, 2.0, 0.0]])
    top = M.topk_from_scores(scores, 2)
    assert top.dtype == np.int64
    close(top, [[1, 3], [0, 2]])


def test_topk_ties_break_by_lower_index():
    # 3 at indices 1, 2, 4: the lower indices win and keep index order
    close(M.topk_from_scores(np.array([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2), [[1, 2]])
    close(M.topk_from_scores(np.array([[1.0, 3.0, 3.0, 2.0, 3.0]]), 4), [[1, 2, 4, 3]])
    close(M.topk_from_scores(np.full((1, 6), 5.0), 3), [[0, 1, 2]])


def test_topk_exclude_mask_respected():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    exclude = np.array([[False, True, False, False]])
    # 0.9 at index 1 is excluded: next best 0.7 (3) then 0.5 (2)
    close(M.topk_from_scores(scores, 2, exclude), [[3, 2]])


def test_topk_k_larger_than_items_and_too_few_allowed():
    close(M.topk_from_scores(np.array([[0.2, 0.1]]), 5), [[0, 1]])  # k = N = 2
    # two of four allowed, k = 3: third slot is padding
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    exclude = np.array([[True, True, False, False]])
    close(M.topk_from_scores(scores, 3, exclude), [[2, 3, -1]])
    # a -inf score that is allowed still beats an excluded item
    close(M.topk_from_scores(np.array([[-np.inf, 1.0, 0.0]]), 3, np.array([[False, False, True]])), [[1, 0, -1]])


def test_topk_matches_full_stable_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(float)  # many ties
    exclude = rng.random((50, 30)) < 0.5
    idx = np.broadcast_to(np.arange(30), scores.shape)
    for k in (1, 5, 17, 30):
        # reference: sort by (excluded, -score, index), excluded slots -> -1
        ref = np.lexsort((idx, -scores, exclude), axis=1)[:, :k]
        ref = np.where(np.take_along_axis(exclude, ref, 1), -1, ref)
        close(M.topk_from_scores(scores, k, exclude), ref)
        close(M.topk_from_scores(scores, k), np.lexsort((idx, -scores), axis=1)[:, :k])


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="scores.*NaN"):
        M.topk_from_scores(np.array([[1.0, NAN]]), 1)
    with pytest.raises(ValueError, match=r"exclude.*\(1, 3\)"):
        M.topk_from_scores(np.zeros((1, 2)), 1, np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match=r"scores.*\(4,\)"):
        M.topk_from_scores(np.zeros(4), 1)
    with pytest.raises(ValueError, match="k"):
        M.topk_from_scores(np.zeros((1, 2)), 0)


# --------------------------------------------------------------------------- ranking metrics

# row 0: hits at ranks 2 (7) and 4 (9), |T| = 2
# row 1: hit at rank 3 (2), |T| = 3
# row 2: no hit, |T| = 1
# row 3: no targets -> NaN everywhere
TOPK = np.array([[3, 7, 1, 9],
                 [5, 6, 2, 8],
                 [0, 1, 2, 3],
                 [0, 1, 2, 3]])
TARGETS = np.array([[7, 9, -1],
                    [2, 4, 11],
                    [10, -1, -1],
                    [-1, -1, -1]])


def test_hit_rate():
    close(M.hit_rate(TOPK, TARGETS), [1, 1, 0, NAN])


def test_recall():
    # 2/2, 1/3, 0/1, no targets
    close(M.recall(TOPK, TARGETS), [1.0, 1 / 3, 0.0, NAN])
    assert M.mean(M.recall(TOPK, TARGETS)) == pytest.approx((1 + 1 / 3 + 0) / 3)  # NaN row left out


def test_ndcg():
    # row 0: DCG = d(2) + d(4) = 0.63093 + 0.43068; IDCG = d(1) + d(2) = 1.63093 -> 0.65092
    # row 1: DCG = d(3) = 0.5; IDCG = d(1) + d(2) + d(3) = 2.13093 -> 0.23464
    close(M.ndcg(TOPK, TARGETS), [(D2 + D4) / (D1 + D2), D3 / (D1 + D2 + D3), 0.0, NAN])
    assert M.ndcg(TOPK, TARGETS)[0] == pytest.approx(0.65092, abs=1e-5)


def test_mrr():
    # first hit at rank 2 -> 1/2 (the hit at rank 4 does not count); rank 3 -> 1/3
    close(M.mrr(TOPK, TARGETS), [0.5, 1 / 3, 0.0, NAN])


def test_more_targets_than_k():
    # |T| = 5 > K = 2, both slots hit: recall 2/5; IDCG over min(5, 2) = 2 slots -> NDCG 1
    topk, targets = np.array([[1, 2]]), np.array([[1, 2, 3, 4, 5]])
    close(M.recall(topk, targets), [0.4])
    close(M.ndcg(topk, targets), [1.0])


def test_duplicates_count_once():
    # item 4 twice in topk and twice in targets: |T| = 1, one hit at rank 1
    topk, targets = np.array([[4, 4, 1]]), np.array([[4, 4, -1]])
    close(M.recall(topk, targets), [1.0])  # not 2
    close(M.ndcg(topk, targets), [1.0])  # DCG = d(1) only, IDCG = d(1)
    close(M.hit_rate(topk, targets), [1.0])


def test_padding_never_matches_padding():
    # -1 in topk (slot with nothing to show) must not hit the -1 pad in targets
    topk, targets = np.array([[-1, 5]]), np.array([[5, -1]])
    close(M.mrr(topk, targets), [0.5])
    close(M.ndcg(topk, targets), [D2 / D1])


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"topk.*\(2, 4\).*float"):
        M.ndcg(np.zeros((2, 4)), TARGETS[:2])
    with pytest.raises(ValueError, match=r"targets.*\(3, 3\)"):
        M.recall(TOPK, TARGETS[:3])
    with pytest.raises(ValueError, match="targets.*-2"):
        M.hit_rate(TOPK[:1], np.array([[-2]]))


# --------------------------------------------------------------------------- WAS


def test_was_perfect_page_is_one_and_reversed_is_less():
    pages = np.array([[10, 11, 12]])
    ideal = np.array([[1.0, 5.0, 3.0, NAN]])  # ideal page 5, 3, 1: 5 + 3 d(2) + 1 d(3) = 7.39279
    close(M.was(pages, np.array([[5.0, 3.0, 1.0]]), ideal), [1.0])
    # reversed: 1 + 3 d(2) + 5 d(3) = 5.39279 -> 5.39279 / 7.39279 = 0.72947
    rev = M.was(pages, np.array([[1.0, 3.0, 5.0]]), ideal)
    close(rev, [(1 + 3 * D2 + 5 * D3) / (5 + 3 * D2 + 1 * D3)])
    assert rev[0] == pytest.approx(0.72947, abs=1e-5)


def test_was_unknown_rating_and_padding_count_zero():
    # unknown middle: (5 + 0 + 3 d(3)) / (5 + 4 d(2) + 3 d(3)) = 6.5 / 9.02372
    close(M.was(np.array([[10, 11, 12]]), np.array([[5.0, NAN, 3.0]]), np.array([[5.0, 4.0, 3.0, NAN]])),
          [6.5 / (5 + 4 * D2 + 3 * D3)])
    # padded slots count 0 even if a rating is given; ideal has M = 2 < K = 3 known
    # ratings: 4 / (4 + 2 d(2)) = 4 / 5.26186
    close(M.was(np.array([[10, -1, -1]]), np.array([[4.0, 9.0, NAN]]), np.array([[4.0, 2.0]])),
          [4 / (4 + 2 * D2)])


def test_was_ideal_uses_top_k_of_more_known_ratings():
    # M = 5 > K = 2: ideal page is 5, 4 -> 5 + 4 d(2) = 7.52372
    ideal = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    close(M.was(np.array([[0, 1]]), np.array([[5.0, 4.0]]), ideal), [1.0])
    close(M.was(np.array([[0, 1]]), np.array([[4.0, 5.0]]), ideal), [(4 + 5 * D2) / (5 + 4 * D2)])


def test_was_nan_when_ideal_empty_or_zero():
    pages, r = np.array([[0, 1], [0, 1]]), np.array([[1.0, 0.0], [0.0, 0.0]])
    close(M.was(pages, r, np.array([[NAN, NAN], [0.0, 0.0]])), [NAN, NAN])


def test_was_rejects_bad_input():
    with pytest.raises(ValueError, match="ratings must be >= 0"):
        M.was(np.array([[0]]), np.array([[-1.0]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match=r"true_ratings.*\(1, 3\)"):
        M.was(np.array([[0, 1]]), np.zeros((1, 3)), np.ones((1, 2)))


# --------------------------------------------------------------------------- PWKT


def test_pwkt_perfect_and_reversed():
    close(M.pwkt(np.array([[5.0, 4.0, 3.0, 2.0], [2.0, 3.0, 4.0, 5.0]])), [1.0, -1.0])


def test_pwkt_hand_value_is_position_weighted():
    # ratings 3, 5, 1 at positions 1, 2, 3:
    #   (1,2) 3<5 discordant, w = d(1)+d(2) = 1.63093
    #   (1,3) 3>1 concordant, w = d(1)+d(3) = 1.5
    #   (2,3) 5>1 concordant, w = d(2)+d(3) = 1.13093
    # (-1.63093 + 1.5 + 1.13093) / 4.26186 = 1 / 4.26186 = 0.23464 (unweighted tau: 1/3)
    close(M.pwkt(np.array([[3.0, 5.0, 1.0]])), [1 / (2 * D1 + 2 * D2 + 2 * D3)])
    # a swap at the top costs more than the same swap at the bottom
    top_swap, bottom_swap = M.pwkt(np.array([[4.0, 5.0, 3.0, 2.0], [5.0, 4.0, 2.0, 3.0]]))
    assert top_swap < bottom_swap < 1.0


def test_pwkt_ties_and_unknown_left_out():
    # [1, 5, 5]: (1,2) and (1,3) discordant, (2,3) a tie -> left out of both sums -> -1
    # [NaN, 2, 1]: only (2,3) counts, concordant -> 1
    # [NaN, 1, NaN], [3, 3, NaN]: no comparable pair -> NaN
    r = np.array([[1.0, 5.0, 5.0], [NAN, 2.0, 1.0], [NAN, 1.0, NAN], [3.0, 3.0, NAN]])
    close(M.pwkt(r), [-1.0, 1.0, NAN, NAN])


# --------------------------------------------------------------------------- diversity and coverage

CATS = np.array([0, 0, 1, 2, 1])  # item -> category


def test_ild_categories():
    pages = np.array([[0, 1, 2, 3],     # cats 0,0,1,2: 5 of 6 pairs differ -> 5/6
                      [2, 4, 3, -1],    # cats 1,1,2 (pad ignored): 2 of 3 -> 2/3 (5/6 if pad read as item 0)
                      [0, 1, -1, -1],   # cats 0,0 -> 0
                      [1, -1, -1, -1]])  # one item -> NaN
    close(M.ild(pages, item_categories=CATS), [5 / 6, 2 / 3, 0.0, NAN])


def test_ild_embeddings():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [-1.0, 0.0]])
    # [0,1,2]: cos = 0, 1/sqrt2, 1/sqrt2 -> (1 + 2 (1 - 0.70711)) / 3 = 0.52860 (scale of item 2 ignored)
    # [0,3]: cos = -1 -> distance 2
    pages = np.array([[0, 1, 2], [0, 3, -1]])
    close(M.ild(pages, item_embeddings=emb), [(1 + 2 * (1 - 1 / math.sqrt(2))) / 3, 2.0])


def test_ild_needs_exactly_one_source_and_valid_ids():
    with pytest.raises(ValueError, match="exactly one"):
        M.ild(np.array([[0, 1]]))
    with pytest.raises(ValueError, match="exactly one"):
        M.ild(np.array([[0, 1]]), item_categories=CATS, item_embeddings=np.eye(5))
    with pytest.raises(ValueError, match="pages.*5.*out of range"):
        M.ild(np.array([[0, 5]]), item_categories=CATS)


def test_category_entropy():
    pages = np.array([[0, 1, 2, 3],     # p = 1/2, 1/4, 1/4 -> 0.5 ln2 + 0.5 ln4 = 1.03972
                      [2, 4, 3, -1],    # p = 2/3, 1/3 -> 0.63651
                      [0, 1, -1, -1],   # one category -> 0
                      [-1, -1, -1, -1]])  # empty -> NaN
    h = M.category_entropy(pages, CATS)
    close(h, [1.5 * math.log(2), -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3), 0.0, NAN])
    assert h[0] == pytest.approx(1.03972, abs=1e-5)


def test_coverage():
    # items {0, 1, 2} of 10; -1 not counted (would give 0.4)
    assert M.coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="pages.*10.*out of range"):
        M.coverage(np.array([[10]]), 10)


# --------------------------------------------------------------------------- aggregation and reports


def test_mean_skips_nan_without_warning():
    assert M.mean([1.0, NAN, 3.0]) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.mean([NAN, NAN]))
        assert math.isnan(M.mean([]))


def test_by_group():
    # all: (1 + 0 + 0.5) / 3 = 0.5; tail: [1, NaN] -> 1; head: [0, 0.5] -> 0.25
    out = M.by_group(np.array([1.0, 0.0, NAN, 0.5]), np.array([True, False, True, False]))
    assert out == pytest.approx({"all": 0.5, "tail": 1.0, "head": 0.25})
    with pytest.raises(ValueError, match="groups.*int"):
        M.by_group(np.array([1.0, 0.0]), np.array([1, 0]))


def test_ranking_report_cutoffs_and_groups():
    tail = np.array([True, False, False, True])
    rep = M.ranking_report(TOPK, TARGETS, ks=(2, 4), is_tail_target=tail)
    assert set(rep) == {f"{g}{m}@{k}" for g in ("", "tail_", "head_")
                        for m in ("ndcg", "recall", "hr", "mrr") for k in (2, 4)}
    # @2 only the first two columns: row 0 hits at rank 2, rows 1-2 miss, row 3 NaN
    assert rep["recall@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert rep["hr@2"] == pytest.approx(1 / 3)
    assert rep["ndcg@2"] == pytest.approx(D2 / (D1 + D2) / 3)
    assert rep["tail_recall@2"] == pytest.approx(0.5)  # rows 0, 3 -> row 3 is NaN
    assert rep["head_recall@2"] == pytest.approx(0.0)
    # @4: mrr rows = 1/2, 1/3, 0
    assert rep["mrr@4"] == pytest.approx((0.5 + 1 / 3) / 3)
    assert rep["head_mrr@4"] == pytest.approx((1 / 3 + 0) / 2)
    assert rep["ndcg@4"] == pytest.approx(((D2 + D4) / (D1 + D2) + D3 / (D1 + D2 + D3)) / 3)
    plain = M.ranking_report(TOPK, TARGETS, ks=(4,))
    assert set(plain) == {"ndcg@4", "recall@4", "hr@4", "mrr@4"}


def test_ranking_report_needs_enough_columns():
    with pytest.raises(ValueError, match=r"topk.*20.*\(4, 4\)"):
        M.ranking_report(TOPK, TARGETS)  # default ks = (10, 20)
    with pytest.raises(ValueError, match="is_tail_target"):
        M.ranking_report(TOPK, TARGETS, ks=(2,), is_tail_target=np.array([True]))


def test_page_report():
    pages = np.array([[0, 1, 2, 3], [2, 4, 3, -1]])
    rep = M.page_report(pages, CATS, n_items=10)
    # ild (5/6 + 2/3) / 2 = 0.75; entropy (1.03972 + 0.63651) / 2; coverage {0..4} / 10
    h1, h2 = 1.5 * math.log(2), -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    n_cat = len(set(CATS.tolist()))
    assert rep == pytest.approx({
        "ild": 0.75,
        "cat_entropy": (h1 + h2) / 2,
        "cat_coverage": (3 / min(4, n_cat) + 2 / min(3, n_cat)) / 2,
        "redundancy": (math.log(min(4, n_cat)) - h1 + math.log(min(3, n_cat)) - h2) / 2,
        "coverage": 0.5,
    })


def test_redundancy_and_category_coverage_by_hand():
    cats = np.array([0, 0, 1, 2, 3])  # 4 categories
    pages = np.array([[0, 1, 2, 3],     # categories 0 0 1 2: H = 1.5 ln 2, 3 distinct of 4
                      [0, 2, 3, 4],     # four distinct: redundancy 0, coverage 1
                      [0, 1, -1, -1],   # one category for 2 items: redundancy ln 2, coverage 1/2
                      [-1, -1, -1, -1]])
    close(M.redundancy(pages, cats), [math.log(4) - 1.5 * math.log(2), 0.0, math.log(2), NAN])
    close(M.category_coverage(pages, cats), [0.75, 1.0, 0.5, NAN])


def test_directions_are_declared_for_every_report_key():
    assert M.direction("ndcg@10") == "max"
    assert M.direction("val/tail_page_recall@20") == "max"
    assert M.direction("page_redundancy") == "min"
    assert M.direction("test/page_cat_entropy") == "max"
    with pytest.raises(KeyError, match="no direction declared for metric 'loss'"):
        M.direction("val/loss")


def test_tensor_like_inputs_are_converted():
    class FakeTensor:  # what a torch tensor offers: .detach().cpu() then __array__
        def __init__(self, a):
            self.a = np.asarray(a)

        def detach(self):
            return self

        def cpu(self):
            return self

        def __array__(self, dtype=None, copy=None):
            return self.a

    close(M.recall(FakeTensor(TOPK), FakeTensor(TARGETS)), [1.0, 1 / 3, 0.0, NAN])
