"""Reward over-optimisation monitor: a learned (proxy) reward rising while the gold reward falls.

RL against a learned reward model optimises the model's proxy of the objective; past some point the
policy finds what the proxy over-rates, and the proxy keeps rising while the true objective falls
(Gao et al. 2022, "Scaling laws for reward model overoptimization"). When an rl stage has both a
learned reward (`reward_model:`) and a gold one (`gold: true`, or `math_accuracy`), TRL already logs
both per step (`rewards/<name>/mean` in metrics.jsonl; for a reward model whose scores are normalised,
its raw mean `<name>/raw_mean`); `OveroptimisationMonitor` watches the two
series and warns once, at the first moving window over which they diverge, and the stage records
`overoptimisation: {detected, since_step}` in its results.

With `eval_examples` on the rl stage, TRL's own evaluation loop also samples and scores the policy on
held-out prompts (before the first step and every `eval_steps`; `eval_rewards/<name>/mean` and `/std`
in the logs) and logs `eval_kl`, the mean per-token KL from the policy to its start on those
completions (heldout_kl.py: for any beta). Per-step means of a few dozen training samples move a lot
from step to step; the held-out ones are the same prompts every time. At each evaluation two
questions are asked of the held-out series, each against the gold's best value so far, and each
warns once:
- **stall** (`heldout_stall`): the proxy has risen since the gold's best by more than
  `HELDOUT_MIN_Z` combined standard errors and the gold is no higher than that best: optimising the
  proxy has stopped paying in the gold. The first sign of a turn, and a noisy one: a gold that still
  rises by less than its own noise per evaluation trips it too (docs/rlhf.md has the rates).
- **fall** (`heldout_peak_fall`): the gold is below its best by more than `HELDOUT_MIN_Z` combined
  standard errors (each from its logged spread over the samples) while the proxy is not below its
  value at that best: the gold has turned, beyond its noise.
The best so far is the largest of several noisy means, and the tests are repeated at every
evaluation: the 2 standard errors of a single comparison would flag a flat gold too often
(docs/rlhf.md has the false-alarm rates).

Both tests are **paired by prompt** where the trainer kept each held-out completion's scores
(`HeldoutKl.heldout_rows`; read back from `heldout_samples.jsonl` on resume): the change is the
mean over the held-out prompts of each prompt's change in its mean score, and its standard error
the spread of those changes over sqrt(prompts). What a prompt itself does to a score (one product
a reward model likes more than another) then cancels between the two evaluations instead of
counting as noise, as in the eval stage's paired comparisons. The threshold is Student's t
quantile with prompts - 1 degrees of freedom at the normal tail of `HELDOUT_MIN_Z`, so a paired test
is as often wrong on noise as an unpaired one. Without per-prompt scores (a normalised reward
model's per-completion values are not its raw scores; a series logged before they were kept) a
test compares the two means, with the combined standard error of the samples' spreads.

The monitor records each warning (`warnings`: kind, the step of the gold's best it refers to, the
step that warned, the test's statistic, threshold and paired prompts) and the first of them
(`flagged_kind`, `flagged_peak_step`, `flagged_at_step`). `curve` holds, per evaluation, the step,
KL and sqrt(KL), and the gold and proxy means with their 95 % intervals: Gao et al.'s Figure 1,
which the eval report plots.

`detect_divergence` is the per-step test, a pure function: over each window of `window` consecutive logged
steps, the least-squares slope of each series against the step, and its t statistic (slope over its
standard error). Divergence = the proxy's t >= `min_t` and the gold's t <= -`min_t`: both trends
clear of their own noise, in opposite directions. `since_step` is where the gold peaked within the
first such window (its last maximum there): the step the decline began, as well as a window can
tell. With min_t = 3 and 10 points (8 degrees of freedom) one window of pure noise passes one side
with probability ~0.9 % and both with ~0.007 %.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import TrainerCallback

from ntp_rl.evaluation.overoptimisation_curve import read_heldout_rows
from ntp_rl.rewards.learned import RAW_MEAN_SUFFIX, RAW_STD_SUFFIX
from ntp_rl.stats import finite_number

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 10  # logged steps per window
DEFAULT_MIN_T = 3.0  # t statistic each slope must clear
HELDOUT_MIN_Z = 3.0  # combined standard errors by which the held-out gold must fall below its best
INTERVAL_Z = 1.96  # the curve's intervals: normal 95 % intervals of each held-out mean
PAIRED_MIN_PROMPTS = 6  # fewer held-out prompts: the means are compared unpaired (t_quantile's range)
TOP_Z = INTERVAL_Z  # the gold's top: evaluations not below its best beyond this (95 %, as the intervals)


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


PromptMeans = dict[str, float]  # held-out prompt -> mean score of its completions at one evaluation
Change = tuple[float, float, float, int | None]  # change_beyond_noise's (change, error, threshold, prompts)


def prompt_means(rows: Sequence[dict[str, Any]], name: str) -> PromptMeans | None:
    """Per prompt, the mean of reward `name` over its completions in `rows` (`HeldoutKl.heldout_rows`).

    Completions the reward did not score (None) are left out; None when no row has a score.
    """
    scores: dict[str, list[float]] = {}
    for row in rows:
        value = (row.get("rewards") or {}).get(name)
        if finite_number(value):
            scores.setdefault(str(row.get("prompt")), []).append(float(value))
    return {prompt: sum(values) / len(values) for prompt, values in scores.items()} or None


def t_quantile(z: float, dof: int) -> float:
    """Student's t quantile at the upper-tail probability of the standard normal's `z`, for `dof` >= 1.

    Cornish-Fisher expansion in 1/dof (Abramowitz & Stegun 26.7.5), four terms: for z = 3 within
    0.02 of the exact quantile from 5 degrees of freedom on (`PAIRED_MIN_PROMPTS`), low below that.
    """
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def paired_change(earlier: PromptMeans, later: PromptMeans) -> tuple[float, float, int] | None:
    """(mean over the prompts in both of later - earlier, its standard error, how many prompts).

    None with fewer than `PAIRED_MIN_PROMPTS` prompts in common.
    """
    common = [p for p in earlier if p in later]
    if len(common) < PAIRED_MIN_PROMPTS:
        return None
    changes = [later[p] - earlier[p] for p in common]
    mean = sum(changes) / len(changes)
    spread = math.sqrt(sum((c - mean) ** 2 for c in changes) / (len(changes) - 1))
    return mean, spread / math.sqrt(len(changes)), len(changes)


def _best_earlier(gold: Sequence[float]) -> int:
    earlier = gold[:-1]
    return max(i for i, value in enumerate(earlier) if value == max(earlier))  # the last of equal bests


def change_beyond_noise(
    values: Sequence[float],
    stds: Sequence[float | None],
    by_prompt: Sequence[PromptMeans | None] | None,
    earlier: int,
    samples: int,
    min_z: float = HELDOUT_MIN_Z,
    later: int = -1,
) -> Change | None:
    """The change of value `later` (the last, by default) since `earlier`: (change, standard error,
    threshold on change / error, prompts paired or None).

    Paired by prompt where both evaluations have per-prompt means (threshold: Student's t at min_z's
    normal tail), else the difference of the two means with the combined standard error
    sqrt((std_earlier^2 + std_later^2) / samples) (threshold min_z). None where neither is known.
    """
    pair = None
    if by_prompt is not None and by_prompt[earlier] is not None and by_prompt[later] is not None:
        pair = paired_change(by_prompt[earlier], by_prompt[later])
    if pair is not None:
        change, standard_error, prompts = pair
        return change, standard_error, t_quantile(min_z, prompts - 1), prompts
    if samples < 2 or not (finite_number(stds[earlier]) and finite_number(stds[later])):
        return None
    standard_error = math.sqrt((stds[earlier] ** 2 + stds[later] ** 2) / samples)
    return values[later] - values[earlier], standard_error, min_z, None


def _beyond(change: float, standard_error: float, threshold: float) -> bool:
    return change > threshold * standard_error


def _fall_test(
    gold: Sequence[float],
    gold_std: Sequence[float],
    proxy: Sequence[float],
    samples: int,
    min_z: float = HELDOUT_MIN_Z,
    gold_by_prompt: Sequence[PromptMeans | None] | None = None,
) -> tuple[int, Change] | None:
    """`heldout_peak_fall`, with the test that decided it (for the monitor's record)."""
    if len(gold) < 2:
        return None
    best = _best_earlier(gold)  # where the fall began
    found = change_beyond_noise(gold, gold_std, gold_by_prompt, best, samples, min_z)
    if found is None:
        return None
    change, standard_error, threshold, _ = found
    fell = _beyond(-change, standard_error, threshold) and proxy[-1] >= proxy[best]
    return (best, found) if fell else None


def heldout_peak_fall(
    gold: Sequence[float],
    gold_std: Sequence[float],
    proxy: Sequence[float],
    samples: int,
    min_z: float = HELDOUT_MIN_Z,
    gold_by_prompt: Sequence[PromptMeans | None] | None = None,
) -> int | None:
    """Index of the gold's best earlier value when the last is below it beyond its noise, else None.

    `change_beyond_noise` decides, paired by prompt where `gold_by_prompt` has both evaluations.
    Not flagged when the proxy's last value is below its value at the gold's best: both falling is
    not the proxy being exploited.
    """
    found = _fall_test(gold, gold_std, proxy, samples, min_z, gold_by_prompt)
    return found[0] if found is not None else None


def _stall_test(
    gold: Sequence[float],
    proxy: Sequence[float],
    proxy_std: Sequence[float | None],
    samples: int,
    min_z: float = HELDOUT_MIN_Z,
    proxy_by_prompt: Sequence[PromptMeans | None] | None = None,
) -> tuple[int, Change] | None:
    """`heldout_stall`, with the test that decided it (for the monitor's record)."""
    if len(gold) < 2:
        return None
    best = _best_earlier(gold)
    if gold[-1] > gold[best]:
        return None
    found = change_beyond_noise(proxy, proxy_std, proxy_by_prompt, best, samples, min_z)
    if found is None:
        return None
    change, standard_error, threshold, _ = found
    return (best, found) if _beyond(change, standard_error, threshold) else None


def heldout_stall(
    gold: Sequence[float],
    proxy: Sequence[float],
    proxy_std: Sequence[float | None],
    samples: int,
    min_z: float = HELDOUT_MIN_Z,
    proxy_by_prompt: Sequence[PromptMeans | None] | None = None,
) -> int | None:
    """Index of the gold's best earlier value when the proxy has since risen beyond its noise and the
    last gold is no higher than that best, else None.

    `change_beyond_noise` decides, paired by prompt where `proxy_by_prompt` has both evaluations;
    None where neither per-prompt means nor the proxy's spreads are known.
    """
    found = _stall_test(gold, proxy, proxy_std, samples, min_z, proxy_by_prompt)
    return found[0] if found is not None else None


def gold_top(
    gold: Sequence[float],
    gold_std: Sequence[float],
    by_prompt: Sequence[PromptMeans | None] | None,
    best: int,
    samples: int,
    z: float = TOP_Z,
) -> list[int]:
    """Indices of the evaluations before the last whose gold is not below `gold[best]` beyond its
    noise at `z` (`change_beyond_noise`, paired by prompt where both have per-prompt means).

    A noisy gold seldom has one clear peak: a flat top of several evaluations, any of which could be
    the best, is where the turn may have begun. An evaluation that cannot be compared is left out.
    """
    top = []
    for i in range(len(gold) - 1):
        if i == best:
            top.append(i)
            continue
        found = change_beyond_noise(gold, gold_std, by_prompt, min(i, best), samples, z, later=max(i, best))
        if found is None:
            continue
        change, standard_error, threshold, _ = found
        below = change if i < best else -change  # how far evaluation i is below the best
        if not _beyond(below, standard_error, threshold):
            top.append(i)
    return top


def proxy_drops(
    steps: Sequence[int],
    proxy: Sequence[float],
    proxy_std: Sequence[float | None],
    by_prompt: Sequence[PromptMeans | None] | None,
    samples: int,
    z: float = TOP_Z,
) -> list[dict[str, Any]]:
    """The evaluations at which the proxy was below its best so far beyond its noise at `z`.

    Gao et al.'s picture has the proxy rising throughout while the gold turns; this says whether the
    held-out proxy did, by the same test as the gold's top (`change_beyond_noise`, paired by prompt
    where both evaluations have per-prompt means): one entry per evaluation whose proxy is below the
    largest earlier one beyond its 95 % noise, with the step of that best and the change. An empty list
    means no such drop, not that every evaluation was higher than the one before it (a dip within the
    noise is no drop). Evaluations that cannot be compared (no spread, no per-prompt means) are left out.
    """
    drops = []
    for i in range(1, len(proxy)):
        best = _best_earlier(proxy[: i + 1])
        found = change_beyond_noise(proxy, proxy_std, by_prompt, best, samples, z, later=i)
        if found is None:
            continue
        change, standard_error, threshold, _ = found
        if _beyond(-change, standard_error, threshold):
            drops.append({"step": steps[i], "best_step": steps[best], "change": change})
    return drops


def heldout_curve(heldout: dict[str, list[Any]], samples: int) -> list[dict[str, Any]]:
    """Per held-out evaluation: step, KL and sqrt(KL), gold and proxy means with 95 % interval half-widths.

    A first-order KL estimate (RLOO's) can come out below zero over a few tokens; its square root is
    taken as 0. A value that was not logged (no KL, a proxy without a spread) is None.
    """

    def interval(std: float | None) -> float | None:
        return INTERVAL_Z * std / math.sqrt(samples) if std is not None and samples > 0 else None

    rows = []
    for i, step in enumerate(heldout["step"]):
        kl = heldout["kl"][i]
        rows.append(
            {
                "step": step,
                "kl": kl,
                "sqrt_kl": math.sqrt(max(kl, 0.0)) if kl is not None else None,
                "gold": heldout["gold"][i],
                "gold_interval": interval(heldout["gold_std"][i]),
                "proxy": heldout["proxy"][i],
                "proxy_interval": interval(heldout["proxy_std"][i]),
            }
        )
    return rows


class OveroptimisationMonitor(TrainerCallback):
    """Watch `rewards/<proxy>/mean` against `rewards/<gold>/mean` in the trainer's logs; warn once."""

    def __init__(
        self,
        proxy: str,
        gold: str,
        window: int = DEFAULT_WINDOW,
        min_t: float = DEFAULT_MIN_T,
        heldout_samples: int = 0,
        kl_estimator: str = "k3",
    ):
        self.proxy, self.gold = proxy, gold
        self.window, self.min_t = window, min_t
        self.steps: list[int] = []
        self.proxy_values: list[float] = []
        self.gold_values: list[float] = []
        self.since_step: int | None = None
        # Held-out evaluations (TRL's eval loop): completions scored per evaluation, and the series.
        self.heldout_samples, self.kl_estimator = heldout_samples, kl_estimator
        self.heldout: dict[str, list[Any]] = {
            key: [] for key in ("step", "gold", "gold_std", "proxy", "proxy_std", "kl")
        }
        # Per evaluation, each held-out prompt's mean gold and proxy (None where not known): the
        # tests are paired by prompt. From the trainer's `heldout_rows`, or `replay`'s file.
        self.trainer: Any = None
        self.by_prompt: dict[str, list[PromptMeans | None]] = {"gold": [], "proxy": []}
        self._replayed_rows: dict[int, list[dict[str, Any]]] = {}
        # Held-out warnings, each kind once: {"kind": "stall" | "fall", "peak_step", "at_step"}.
        self.warnings: list[dict[str, Any]] = []

    def _heldout_rows(self, step: int) -> list[dict[str, Any]] | None:
        if step in self._replayed_rows:
            return self._replayed_rows[step]
        rows = getattr(self.trainer, "heldout_rows", None)
        return rows if isinstance(rows, list) and rows else None

    def _on_heldout(self, step: int, logs: dict[str, Any]) -> None:
        # A normalised learned reward's own mean is ~0 by construction; its raw mean and spread are
        # logged beside it. Mean and spread are taken from the same source.
        raw = f"eval_{self.proxy}/{RAW_MEAN_SUFFIX}" in logs
        proxy = logs.get(f"eval_{self.proxy}/{RAW_MEAN_SUFFIX}" if raw else f"eval_rewards/{self.proxy}/mean")
        proxy_std = logs.get(
            f"eval_{self.proxy}/{RAW_STD_SUFFIX}" if raw else f"eval_rewards/{self.proxy}/std"
        )
        gold = logs.get(f"eval_rewards/{self.gold}/mean")
        gold_std = logs.get(f"eval_rewards/{self.gold}/std", 0.0)
        if not all(finite_number(v) for v in (proxy, gold, gold_std)):
            return
        kl = logs.get("eval_kl")
        h = self.heldout
        if h["step"] and int(step) <= h["step"][-1]:
            return  # a resumed run evaluates again at its checkpoint's step: the first one stands
        h["step"].append(int(step))
        for key, value in (("gold", gold), ("gold_std", gold_std), ("proxy", proxy)):
            h[key].append(float(value))
        h["proxy_std"].append(float(proxy_std) if finite_number(proxy_std) else None)
        h["kl"].append(float(kl) if finite_number(kl) else None)
        rows = self._heldout_rows(int(step))
        self.by_prompt["gold"].append(prompt_means(rows, self.gold) if rows else None)
        # A normalised reward model's per-completion values are not its raw scores: unpaired.
        self.by_prompt["proxy"].append(prompt_means(rows, self.proxy) if rows and not raw else None)
        warned = {w["kind"] for w in self.warnings}
        if "fall" not in warned:
            fall = _fall_test(
                h["gold"],
                h["gold_std"],
                h["proxy"],
                self.heldout_samples,
                gold_by_prompt=self.by_prompt["gold"],
            )
            if fall is not None:
                peak, found = fall
                test = self._warn("fall", peak, int(step), found)
                logger.warning(
                    "reward over-optimisation on held-out prompts: the gold reward %s fell from %.3f at step "
                    "%d (its best so far) to %.3f at step %d, %s, while the learned reward %s went from "
                    "%.3f to %.3f. Consider a larger KL coefficient (trainer.beta), fewer steps, or a "
                    "better reward model.",
                    self.gold,
                    h["gold"][peak],
                    h["step"][peak],
                    h["gold"][-1],
                    step,
                    test,
                    self.proxy,
                    h["proxy"][peak],
                    h["proxy"][-1],
                )
                return  # a fall says more than a stall at the same evaluation
        if not warned:
            stall = _stall_test(
                h["gold"],
                h["proxy"],
                h["proxy_std"],
                self.heldout_samples,
                proxy_by_prompt=self.by_prompt["proxy"],
            )
            if stall is not None:
                peak, found = stall
                test = self._warn("stall", peak, int(step), found)
                logger.warning(
                    "possible reward over-optimisation on held-out prompts: the learned reward %s rose from "
                    "%.3f at step %d to %.3f at step %d, %s, while the gold reward %s did not rise above "
                    "its best so far (%.3f at step %d; %.3f now). Optimising the reward model has stopped "
                    "improving the gold here; a fall beyond its noise will be reported if it follows. "
                    "Consider the checkpoint nearest step %d, a larger KL coefficient (trainer.beta), or a "
                    "better reward model.",
                    self.proxy,
                    h["proxy"][peak],
                    h["step"][peak],
                    h["proxy"][-1],
                    step,
                    test,
                    self.gold,
                    h["gold"][peak],
                    h["step"][peak],
                    h["gold"][-1],
                    h["step"][peak],
                )

    def _warn(self, kind: str, peak: int, step: int, found: Change) -> str:
        """Record a warning with the test that gave it; return the test in words, for the log line."""
        change, standard_error, threshold, prompts = found
        # No spread (every prompt, or every sample, changed alike): any change is beyond it; no t.
        statistic = change / standard_error if standard_error > 0 else None
        h = self.heldout
        top = gold_top(h["gold"], h["gold_std"], self.by_prompt["gold"], peak, self.heldout_samples)
        self.warnings.append(
            {
                "kind": kind,
                "peak_step": h["step"][peak],
                "at_step": step,
                "statistic": statistic,
                "threshold": threshold,
                "paired_prompts": prompts,
                # The evaluations before this one whose gold was within its noise of that best.
                "top_steps": [h["step"][i] for i in top],
            }
        )
        if statistic is None:
            return f"by {abs(change):.3f}, with no spread to measure it against ({self.heldout_samples} samples alike)"
        if prompts is not None:
            return f"paired by prompt over {prompts} held-out prompts: t = {statistic:+.1f} (threshold {threshold:.2f})"
        return (
            f"{abs(statistic):.1f} combined standard errors of {self.heldout_samples} samples each "
            f"(threshold {threshold:g})"
        )

    @property
    def peak_step(self) -> int | None:
        """The gold's best that the first held-out warning referred to."""
        return self.warnings[0]["peak_step"] if self.warnings else None

    @property
    def flagged_at_step(self) -> int | None:
        """The evaluation step of the first held-out warning."""
        return self.warnings[0]["at_step"] if self.warnings else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if f"eval_rewards/{self.gold}/mean" in logs:
            self._on_heldout(state.global_step, logs)
            return
        # A normalised learned reward's own mean is ~0 by construction; its raw mean is logged beside it.
        proxy = logs.get(f"{self.proxy}/{RAW_MEAN_SUFFIX}", logs.get(f"rewards/{self.proxy}/mean"))
        gold = logs.get(f"rewards/{self.gold}/mean")
        if not isinstance(proxy, (int, float)) or not isinstance(gold, (int, float)):
            return
        if not (math.isfinite(proxy) and math.isfinite(gold)):
            return
        if self.steps and state.global_step <= self.steps[-1]:
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

    def replay(self, metrics: Path, until_step: int, heldout_rows: Path | None = None) -> None:
        """Read back what an interrupted run logged (`metrics.jsonl`, and the held-out completions'
        scores in `heldout_rows`) up to the checkpoint it resumes from.

        The series then holds the evaluations and steps from before the interruption, as an
        uninterrupted run's would; a warning already given is given again.
        """
        if heldout_rows is not None:
            self._replayed_rows = read_heldout_rows(heldout_rows, until_step)
        if not metrics.is_file():
            return
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by the interruption
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, int) and step <= until_step:
                self.on_log(None, SimpleNamespace(global_step=step), None, logs=record)

    def result(self) -> dict[str, Any]:
        return {
            "detected": self.since_step is not None,
            "since_step": self.since_step,
            "proxy": self.proxy,
            "gold": self.gold,
            "window": self.window,
            # Held-out evaluations (rl stage `eval_examples`): the series, the gold's peak, the warning.
            "heldout": self.heldout_result() if self.heldout["step"] else None,
        }

    def summary(self) -> str | None:
        """The warnings in a few lines, for the run's closing summary; None when there were none."""
        lines = []
        if self.warnings:
            h = self.heldout
            for warning in self.warnings:
                best, at = h["step"].index(warning["peak_step"]), h["step"].index(warning["at_step"])
                what = (
                    f"the proxy {self.proxy} rose {h['proxy'][best]:.3f} -> {h['proxy'][at]:.3f}, the gold "
                    f"{self.gold} not above its best"
                    if warning["kind"] == "stall"
                    else f"the gold {self.gold} fell below its best beyond its noise"
                )
                top = warning.get("top_steps") or []
                flat = (
                    f"; the gold's top, within its noise: steps {', '.join(map(str, top))}"
                    if len(top) > 1
                    else ""
                )
                lines.append(
                    f"over-optimisation ({warning['kind']}, held-out) at step {warning['at_step']}: {what} "
                    f"({h['gold'][best]:.3f} at step {warning['peak_step']}; {h['gold'][at]:.3f} now{flat})"
                )
        if self.since_step is not None:
            lines.append(
                f"over-optimisation (training batches): the proxy {self.proxy} rose while the gold "
                f"{self.gold} fell, since step {self.since_step}"
            )
        return "\n".join(lines) if lines else None

    def heldout_result(self) -> dict[str, Any]:
        gold = self.heldout["gold"]
        best = max(i for i, value in enumerate(gold) if value == max(gold))
        return {
            "detected": self.flagged_at_step is not None,
            # The gold's best value over all evaluations; a later, higher peak than the one warned
            # about (flagged_peak_step) means the fall did not last.
            "peak_step": self.heldout["step"][best],
            # The first warning, of either kind, and every warning (at most one of each kind).
            "flagged_kind": self.warnings[0]["kind"] if self.warnings else None,
            "flagged_peak_step": self.peak_step,
            "flagged_at_step": self.flagged_at_step,
            "warnings": [dict(w) for w in self.warnings],
            "samples": self.heldout_samples,
            # Whether per-prompt scores were there (the gold's, the proxy's): the tests are then paired
            # by prompt, with at least PAIRED_MIN_PROMPTS prompts.
            "per_prompt_scores": {k: any(m is not None for m in v) for k, v in self.by_prompt.items()},
            "min_z": HELDOUT_MIN_Z,
            # Where the held-out proxy fell below its best so far beyond its 95 % noise: [] = it did
            # not (the "proxy rising throughout" half of the over-optimisation picture).
            "proxy_drops": proxy_drops(
                self.heldout["step"],
                self.heldout["proxy"],
                self.heldout["proxy_std"],
                self.by_prompt["proxy"],
                self.heldout_samples,
            ),
            "kl_estimator": self.kl_estimator,
            **self.heldout,
            "curve": heldout_curve(self.heldout, self.heldout_samples),
        }


def monitor_for(
    specs: Sequence[Any], reward_funcs: Sequence[Any], heldout_samples: int = 0, kl_estimator: str = "k3"
) -> OveroptimisationMonitor | None:
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
    return OveroptimisationMonitor(
        proxies[0], golds[0], heldout_samples=heldout_samples, kl_estimator=kl_estimator
    )
