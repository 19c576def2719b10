"""Uncertainty of offline metrics: bootstrap intervals over users, paired differences, seeds.

Pure numpy (no torch, Ray or pandas), like :mod:`rlhf_ray.metrics`. A headline figure is a
mean over users of a per-user metric (``(U,)`` arrays from ``rlhf_ray.metrics``; NaN = the
metric is undefined for that user and the user is left out), so its sampling uncertainty is
the spread of that mean when the users are resampled with replacement:

* :func:`bootstrap_ci`: percentile interval of the mean over ``n_boot`` resamples of the
  users with a defined value;
* :func:`paired_diff`: the same for the per-user difference ``a - b`` of two methods scored
  on the same users (paired: users common to both, a user's own difficulty cancels), and
  whether the interval excludes 0; only then is a difference called a gain or a loss;
* :func:`seed_summary`: mean, sample standard deviation and range of one figure over
  training seeds (the other source of spread: a trained method is run with >= 3 seeds).

Resampling is seeded, so the same inputs always give the same interval.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


def _values(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D (U,) array of per-user values, got shape {a.shape}")
    return a


def _check(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot: expected an int >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")


def _boot_means(v: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of ``v`` resampled with replacement (chunked to bound memory)."""
    rng = np.random.default_rng(seed)
    n = v.size
    out = np.empty(n_boot)
    step = max(1, (1 << 22) // max(n, 1))  # about 4M indices per chunk
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        out[s: s + m] = v[rng.integers(0, n, size=(m, n))].mean(axis=1)
    return out


def bootstrap_ci(values: Any, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """Mean of the non-NaN per-user values with a percentile bootstrap interval.

    ``values`` (U,) float, NaN = undefined for that user (left out). Returns
    ``{"mean", "lo", "hi", "n"}``: ``n`` users counted; lo/hi the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means. With no defined user every field but
    ``n`` (= 0) is None; with one user lo = hi = mean.
    """
    _check(n_boot, level)
    v = _values(values, "values")
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    means = _boot_means(v, n_boot, seed)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [q, 1.0 - q])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def paired_diff(a: Any, b: Any, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """Mean per-user difference ``a - b`` over users where both are defined, with its interval.

    ``a``, ``b`` (U,) per-user values of two methods on the same users, same order.
    Returns ``{"diff", "lo", "hi", "n", "rel", "verdict"}``: ``rel`` = mean(a) / mean(b)
    over those users (None when mean(b) is 0); ``verdict`` is "higher" or "lower" when the
    interval excludes 0, else "within interval" (no difference can be claimed).
    """
    va, vb = _values(a, "a"), _values(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"b: expected shape {va.shape} like a (the same users), got {vb.shape}")
    both = ~np.isnan(va) & ~np.isnan(vb)
    ci = bootstrap_ci(va[both] - vb[both], n_boot, level, seed)
    if ci["n"] == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0, "rel": None, "verdict": "n/a"}
    mb = float(vb[both].mean())
    verdict = "higher" if ci["lo"] > 0 else "lower" if ci["hi"] < 0 else "within interval"
    return {"diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"],
            "rel": float(va[both].mean()) / mb if mb else None, "verdict": verdict}


def seed_summary(per_seed: Sequence[float]) -> dict:
    """``{"mean", "std", "min", "max", "n_seeds", "values"}`` of one figure over seeds.

    ``std`` is the sample standard deviation (ddof 1; None with a single seed). None
    entries (a figure undefined for a seed) are left out.
    """
    vals = [float(x) for x in per_seed if x is not None and not np.isnan(x)]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n_seeds": 0, "values": []}
    a = np.asarray(vals)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
            "min": float(a.min()), "max": float(a.max()), "n_seeds": int(a.size), "values": vals}
