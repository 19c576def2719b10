"""Bootstrap intervals, paired differences and seed summaries (rlhf_ray.stats), by hand."""
import math

import numpy as np
import pytest

from rlhf_ray import stats


def test_bootstrap_interval_brackets_the_mean_and_skips_nan():
    v = np.array([0.0, 1.0] * 200 + [np.nan] * 50)
    ci = stats.bootstrap_ci(v, n_boot=4000, seed=1)
    assert ci["n"] == 400 and ci["mean"] == pytest.approx(0.5)
    # mean of 400 Bernoulli(0.5): sd 0.025, so the 95% interval is about 0.5 +- 0.049
    assert 0.44 < ci["lo"] < 0.47 and 0.53 < ci["hi"] < 0.56
    assert stats.bootstrap_ci(v, n_boot=500, seed=1) == stats.bootstrap_ci(v, n_boot=500, seed=1)  # seeded


def test_bootstrap_degenerate_inputs():
    assert stats.bootstrap_ci([np.nan, np.nan]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert stats.bootstrap_ci([0.3]) == {"mean": 0.3, "lo": 0.3, "hi": 0.3, "n": 1}
    with pytest.raises(ValueError, match="1-D"):
        stats.bootstrap_ci(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0], level=1.5)


def test_paired_difference_is_called_only_outside_the_interval():
    rng = np.random.default_rng(0)
    base = rng.random(500)
    better = base + 0.05  # every user gains 0.05: the interval is [0.05, 0.05]
    d = stats.paired_diff(better, base)
    assert d["verdict"] == "higher" and d["diff"] == pytest.approx(0.05) and d["n"] == 500
    assert d["rel"] == pytest.approx(better.mean() / base.mean())
    noise = base + rng.normal(0, 0.3, 500)  # no true difference, lots of noise
    n = stats.paired_diff(noise, base)
    assert n["lo"] < 0 < n["hi"] and n["verdict"] == "within interval"
    assert stats.paired_diff(base - 0.05, base)["verdict"] == "lower"
    with pytest.raises(ValueError, match="same users"):
        stats.paired_diff(base, base[:10])


def test_paired_difference_uses_users_defined_in_both():
    a = np.array([1.0, np.nan, 0.0, 1.0])
    b = np.array([0.0, 1.0, np.nan, 0.0])
    d = stats.paired_diff(a, b)
    assert d["n"] == 2 and d["diff"] == 1.0 and d["rel"] is None  # mean(b) over users 0, 3 is 0


def test_seed_summary():
    s = stats.seed_summary([0.1, 0.2, 0.3, None])
    assert s["n_seeds"] == 3 and s["mean"] == pytest.approx(0.2)
    assert s["std"] == pytest.approx(0.1) and (s["min"], s["max"]) == (0.1, 0.3)
    assert stats.seed_summary([0.5])["std"] is None
    assert stats.seed_summary([float("nan")])["n_seeds"] == 0
    assert math.isclose(stats.seed_summary([1, 3])["std"], math.sqrt(2))
