"""The over-optimisation monitor: a proxy reward rising while the gold reward falls, on constructed series."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from ntp_rl.stages.overoptimisation import (
    OveroptimisationMonitor,
    detect_divergence,
    heldout_fall,
    monitor_for,
    slope_t,
)

STEPS = list(range(1, 61))


def _noise(seed: int, scale: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, scale) for _ in STEPS]


def test_slope_and_t_statistic_by_hand():
    slope, t = slope_t([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert slope == pytest.approx(2.0) and t == math.inf  # an exact line
    slope, t = slope_t([0, 1, 2, 3], [0.0, 1.0, 0.0, 1.0])
    # slope 0.2, intercept 0.2; residuals (-0.2, 0.6, -0.6, 0.2): SSE 0.8, se = sqrt(0.8 / 2 / 5)
    assert slope == pytest.approx(0.2) and t == pytest.approx(0.2 / math.sqrt(0.08), rel=1e-6)
    assert slope_t([1, 2, 3], [5.0, 5.0, 5.0]) == (0.0, 0.0)


def test_divergence_is_found_where_it_begins():
    # The proxy climbs throughout; the gold climbs until step 30, then falls.
    noise_p, noise_g = _noise(1, 0.02), _noise(2, 0.01)
    proxy = [0.05 * s + n for s, n in zip(STEPS, noise_p, strict=True)]
    gold = [(0.01 * s if s <= 30 else 0.3 - 0.02 * (s - 30)) + n for s, n in zip(STEPS, noise_g, strict=True)]
    since = detect_divergence(STEPS, proxy, gold, window=10)
    assert since is not None and 25 <= since <= 35


def test_both_rising_is_not_divergence():
    proxy = [0.05 * s + n for s, n in zip(STEPS, _noise(3, 0.02), strict=True)]
    gold = [0.01 * s + n for s, n in zip(STEPS, _noise(4, 0.01), strict=True)]
    assert detect_divergence(STEPS, proxy, gold) is None


@pytest.mark.parametrize("seed", range(20))
def test_noise_is_not_divergence(seed):
    assert detect_divergence(STEPS, _noise(100 + seed, 1.0), _noise(200 + seed, 1.0)) is None


def test_proxy_rising_over_a_flat_gold_is_not_divergence():
    proxy = [0.05 * s for s in STEPS]
    gold = [0.5 + n for n in _noise(5, 0.05)]
    assert detect_divergence(STEPS, proxy, gold) is None


def test_too_few_points_and_mismatched_series():
    assert detect_divergence([1, 2, 3], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], window=10) is None
    assert detect_divergence([1, 2, 3], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], window=3) == 1  # the gold's peak
    with pytest.raises(ValueError):
        detect_divergence([1, 2], [1.0], [1.0, 2.0])


def test_callback_reads_trainer_logs_and_warns_once(caplog):
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", window=5)
    for step in range(1, 16):
        gold = 0.5 if step <= 6 else 0.5 - 0.05 * (step - 6)
        logs = {"rewards/reward_model/mean": 0.1 * step, "rewards/math_accuracy/mean": gold}
        with caplog.at_level("WARNING"):
            monitor.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
        monitor.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 1.0})  # ignored
    result = monitor.result()
    assert result["detected"] is True and result["since_step"] == 6
    assert sum("over-optimisation" in r.message for r in caplog.records) == 1


def test_callback_reads_a_normalised_reward_models_raw_mean():
    """With normalize: batch/group the logged reward mean is ~0 every step; the raw mean shows the rise."""
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", window=5)
    for step in range(1, 11):
        logs = {
            "rewards/reward_model/mean": 0.0,
            "reward_model/raw_mean": 0.2 * step,
            "rewards/math_accuracy/mean": 0.9 - 0.05 * step,
        }
        monitor.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
    assert monitor.result()["detected"] is True and monitor.proxy_values[-1] == 2.0


def test_monitor_needs_a_learned_and_a_gold_reward():
    from ntp_rl.config import RewardSpecSettings

    def names(*specs):
        return [SimpleNamespace(__name__=s.name or "reward_model") for s in specs]

    rm = RewardSpecSettings(reward_model="rm")
    math_acc = RewardSpecSettings(name="math_accuracy")
    fmt_gold = RewardSpecSettings(name="format", gold=True)
    assert monitor_for([rm, math_acc], names(rm, math_acc)).gold == "math_accuracy"
    assert monitor_for([rm, math_acc, fmt_gold], names(rm, math_acc, fmt_gold)).gold == "format"
    assert monitor_for([math_acc], names(math_acc)) is None
    assert monitor_for([rm], names(rm)) is None


def test_heldout_fall_by_hand():
    # 0.6 -> 0.4 over 100 samples each (sd 0.49): standard error sqrt(2 * 0.24 / 100) = 0.069; fell 2.9 of them.
    assert heldout_fall([0.6, 0.5, 0.4], [0.49, 0.5, 0.49], [1.0, 1.1, 1.2], samples=100)
    assert not heldout_fall([0.6, 0.4], [0.49, 0.49], [1.0, 0.8], samples=100)  # the proxy fell too
    assert not heldout_fall([0.6, 0.4], [0.49, 0.49], [1.0, 1.2], samples=10)  # inside the noise
    assert not heldout_fall([0.4, 0.6], [0.49, 0.49], [1.0, 1.2], samples=100)  # rose
    assert not heldout_fall([0.6], [0.49], [1.0], samples=100)


def test_callback_reads_heldout_evaluations_and_warns_once(caplog):
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=128)
    golds = [0.62, 0.64, 0.60, 0.45, 0.40]
    for step, gold in zip([0, 5, 10, 15, 20], golds, strict=True):
        logs = {
            "eval_rewards/math_accuracy/mean": gold,
            "eval_rewards/math_accuracy/std": 0.49,
            "eval_rewards/reward_model/mean": 0.0,
            "eval_reward_model/raw_mean": 0.1 * step,
        }
        with caplog.at_level("WARNING"):
            monitor.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
    result = monitor.result()
    assert result["detected"] is False and monitor.steps == []  # evaluations are not training steps
    heldout = result["heldout"]
    assert heldout["detected"] is True and heldout["since_step"] == 5  # the held-out gold's peak
    assert heldout["step"] == [0, 5, 10, 15, 20] and heldout["proxy"][-1] == 2.0
    assert sum("held-out prompts" in r.message for r in caplog.records) == 1
    assert OveroptimisationMonitor("reward_model", "math_accuracy").result()["heldout"] is None
