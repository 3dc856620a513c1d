"""Statistics for eval reports: bootstrap intervals, paired comparisons, pass@k and maj@k.

All functions are deterministic given their `seed`. Items are the unit of resampling: a checkpoint's
score on an item is its mean over that item's samples, and two checkpoints are compared on the same
items (paired), which is far tighter than comparing two independent means.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000  # enough for stable 95 % percentile intervals at 2 decimals


def finite_number(value: Any) -> bool:
    """A real int or float that is neither NaN nor infinite (a logged metric worth using)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per item)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(BOOTSTRAP_RESAMPLES, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of b - a over the same items, its bootstrap interval, and the share of resamples where b <= a."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs the same items: {x.shape} vs {y.shape}")
    diff = y - x
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(BOOTSTRAP_RESAMPLES, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {
        "diff": float(diff.mean()),
        "ci_low": float(np.quantile(means, alpha)),
        "ci_high": float(np.quantile(means, 1 - alpha)),
        "p_not_better": float((means <= 0).mean()),
    }


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired right/wrong outcomes; two-sided p-value."""
    wrong_to_right = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if not a and b)
    right_to_wrong = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    n = wrong_to_right + right_to_wrong
    if n == 0:
        p = 1.0
    else:
        k = min(wrong_to_right, right_to_wrong)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        p = min(1.0, 2 * tail)
    return {"wrong_to_right": wrong_to_right, "right_to_wrong": right_to_wrong, "p_value": p}


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """maj@k: whether the most common extracted answer among the first k samples is correct.

    Unreadable answers (None) do not vote; ties go to the answer seen first.
    """
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return False
    best = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == best)
    return any(c for a, c in zip(answers[:k], correct[:k], strict=True) if a == winner)


def bootstrap_ratio_ci(
    numerators: Sequence[float], denominators: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators), resampling items.

    For per-token means over items of different lengths (KL per token, NLL per token): the
    statistic weighs every token alike, while the resampling unit stays the item.
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"ratio needs one denominator per numerator: {num.shape} vs {den.shape}")
    if num.size == 0 or den.sum() == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(BOOTSTRAP_RESAMPLES, num.size))
    totals = den[picks].sum(axis=1)
    ratios = np.where(totals > 0, num[picks].sum(axis=1) / np.maximum(totals, 1e-300), np.nan)
    alpha = (1 - confidence) / 2
    return (float(np.nanquantile(ratios, alpha)), float(np.nanquantile(ratios, 1 - alpha)))
