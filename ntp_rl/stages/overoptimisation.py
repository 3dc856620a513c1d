"""Reward over-optimisation monitor: a learned (proxy) reward rising while the gold reward falls.

RL against a learned reward model optimises the model's proxy of the objective; past some point the
policy finds what the proxy over-rates, and the proxy keeps rising while the true objective falls
(Gao et al. 2022, "Scaling laws for reward model overoptimization"). When an rl stage has both a
learned reward (`reward_model:`) and a gold one (`gold: true`, or `math_accuracy`), TRL already logs
both per step (`rewards/<name>/mean` in metrics.jsonl; for a reward model whose scores are normalised,
its raw mean `<name>/raw_mean`); `OveroptimisationMonitor` watches the two
series and warns once, at the first moving window over which they diverge, and the stage records
`overoptimisation: {detected, since_step}` in its results.

`detect_divergence` is the test, a pure function: over each window of `window` consecutive logged
steps, the least-squares slope of each series against the step, and its t statistic (slope over its
standard error). Divergence = the proxy's t >= `min_t` and the gold's t <= -`min_t`: both trends
clear of their own noise, in opposite directions. `since_step` is where the gold peaked within the
first such window (its last maximum there): the step the decline began, as well as a window can
tell. With min_t = 3 and 10 points (8 degrees of freedom) one window of pure noise passes one side
with probability ~0.9 % and both with ~0.007 %.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from ntp_rl.rewards.learned import RAW_MEAN_SUFFIX

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 10  # logged steps per window
DEFAULT_MIN_T = 3.0  # t statistic each slope must clear


def slope_t(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(least-squares slope of ys on xs, its t statistic); t is +-inf for a noiseless non-zero trend."""
    n = len(xs)
    if n < 3:
        raise ValueError("a slope's t statistic needs at least 3 points")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    standard_error = math.sqrt(residual / (n - 2) / sxx)
    scale = max(abs(y) for y in ys) or 1.0
    if standard_error <= 1e-12 * scale:  # an exact line, up to rounding
        return slope, 0.0 if abs(slope) <= 1e-12 * scale else math.copysign(math.inf, slope)
    return slope, slope / standard_error


def detect_divergence(
    steps: Sequence[float],
    proxy: Sequence[float],
    gold: Sequence[float],
    window: int = DEFAULT_WINDOW,
    min_t: float = DEFAULT_MIN_T,
) -> int | None:
    """Where the gold began to fall in the first window where the proxy rises and the gold falls, else None."""
    if not len(steps) == len(proxy) == len(gold):
        raise ValueError("steps, proxy and gold must have the same length")
    if window < 3:
        raise ValueError("window must be at least 3 points")
    for end in range(window, len(steps) + 1):
        xs = steps[end - window : end]
        _, t_proxy = slope_t(xs, proxy[end - window : end])
        _, t_gold = slope_t(xs, gold[end - window : end])
        if t_proxy >= min_t and t_gold <= -min_t:
            golds = gold[end - window : end]
            peak = max(i for i, value in enumerate(golds) if value == max(golds))
            return int(xs[peak])
    return None


class OveroptimisationMonitor(TrainerCallback):
    """Watch `rewards/<proxy>/mean` against `rewards/<gold>/mean` in the trainer's logs; warn once."""

    def __init__(self, proxy: str, gold: str, window: int = DEFAULT_WINDOW, min_t: float = DEFAULT_MIN_T):
        self.proxy, self.gold = proxy, gold
        self.window, self.min_t = window, min_t
        self.steps: list[int] = []
        self.proxy_values: list[float] = []
        self.gold_values: list[float] = []
        self.since_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        # A normalised learned reward's own mean is ~0 by construction; its raw mean is logged beside it.
        proxy = logs.get(f"{self.proxy}/{RAW_MEAN_SUFFIX}", logs.get(f"rewards/{self.proxy}/mean"))
        gold = logs.get(f"rewards/{self.gold}/mean")
        if not isinstance(proxy, (int, float)) or not isinstance(gold, (int, float)):
            return
        if not (math.isfinite(proxy) and math.isfinite(gold)):
            return
        self.steps.append(state.global_step)
        self.proxy_values.append(float(proxy))
        self.gold_values.append(float(gold))
        if self.since_step is not None or len(self.steps) < self.window:
            return
        since = detect_divergence(
            self.steps[-self.window :],
            self.proxy_values[-self.window :],
            self.gold_values[-self.window :],
            self.window,
            self.min_t,
        )
        if since is not None:
            self.since_step = since
            logger.warning(
                "reward over-optimisation: the learned reward %s has risen while the gold reward %s has "
                "fallen since step %d (last %d logged steps); the policy may be exploiting the reward model. "
                "Consider a larger KL coefficient (trainer.beta), fewer steps, or a better reward model.",
                self.proxy,
                self.gold,
                since,
                self.window,
            )

    def result(self) -> dict[str, Any]:
        return {
            "detected": self.since_step is not None,
            "since_step": self.since_step,
            "proxy": self.proxy,
            "gold": self.gold,
            "window": self.window,
        }


def monitor_for(specs: Sequence[Any], reward_funcs: Sequence[Any]) -> OveroptimisationMonitor | None:
    """A monitor for an rl stage's rewards, when it has a learned reward and a gold one.

    The proxy is the first `reward_model:` reward; the gold is the first reward flagged `gold: true`,
    else `math_accuracy` (a verifier of the data's `answer` column).
    """
    names = [fn.__name__ for fn in reward_funcs]
    proxies = [n for n, s in zip(names, specs, strict=True) if s.reward_model is not None]
    golds = [n for n, s in zip(names, specs, strict=True) if s.gold] or [
        n for n, s in zip(names, specs, strict=True) if s.name == "math_accuracy"
    ]
    if not proxies or not golds:
        return None
    return OveroptimisationMonitor(proxies[0], golds[0])
