"""The over-optimisation monitor: a proxy reward rising while the gold reward falls, on constructed series."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from ntp_rl.stages.overoptimisation import (
    HELDOUT_MIN_Z,
    OveroptimisationMonitor,
    detect_divergence,
    gold_top,
    heldout_peak_fall,
    heldout_stall,
    monitor_for,
    paired_change,
    prompt_means,
    proxy_drops,
    slope_t,
    t_quantile,
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
    assert monitor.summary() == (
        "over-optimisation (training batches): the proxy reward_model rose while the gold math_accuracy "
        "fell, since step 6"
    )


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


def test_heldout_peak_fall_by_hand():
    # 0.6 -> 0.4 over 200 samples each (sd 0.49): standard error sqrt(2 * 0.24 / 200) = 0.049; fell 4.1 of them.
    assert heldout_peak_fall([0.5, 0.6, 0.4], [0.49] * 3, [1.0, 1.1, 1.2], samples=200) == 1
    assert heldout_peak_fall([0.5, 0.6, 0.4], [0.49] * 3, [1.0, 1.1, 1.2], samples=100) is None  # 2.9 of them
    # The proxy fell too (1.3 at the gold's best, 1.2 now).
    assert heldout_peak_fall([0.5, 0.6, 0.4], [0.49] * 3, [1.0, 1.3, 1.2], samples=200) is None
    assert heldout_peak_fall([0.6, 0.6, 0.3], [0.49] * 3, [1.0, 1.1, 1.2], samples=200) == 1  # the later best
    assert heldout_peak_fall([0.4, 0.6], [0.49] * 2, [1.0, 1.2], samples=200) is None  # rose
    assert heldout_peak_fall([0.6], [0.49], [1.0], samples=200) is None


EVAL_STEPS = 5
HELDOUT_SAMPLES = 256  # e.g. 32 held-out prompts x 8 completions
GOLD_SD = 0.49  # a 0/1 gold near 0.6
STANDARD_ERROR = GOLD_SD / math.sqrt(HELDOUT_SAMPLES)  # of one held-out mean
PROXY_SD = 0.8  # the raw proxy's spread over samples, as logged
PROXY_STANDARD_ERROR = PROXY_SD / math.sqrt(HELDOUT_SAMPLES)


def _evaluate(monitor: OveroptimisationMonitor, golds, proxies, kls=None) -> None:
    """Feed held-out evaluations at steps 0, 5, 10, ... as TRL logs them (a normalised proxy's raw mean)."""
    for i, (gold, proxy) in enumerate(zip(golds, proxies, strict=True)):
        logs = {
            "eval_rewards/math_accuracy/mean": gold,
            "eval_rewards/math_accuracy/std": GOLD_SD,
            "eval_rewards/reward_model/mean": 0.0,
            "eval_rewards/reward_model/std": 0.3,  # of the normalised scores: not the raw ones'
            "eval_reward_model/raw_mean": proxy,
            "eval_reward_model/raw_std": PROXY_SD,
        }
        if kls is not None:
            logs["eval_kl"] = kls[i]
        monitor.on_log(None, SimpleNamespace(global_step=EVAL_STEPS * i), None, logs=logs)


def _first_flag(golds, proxies) -> int | None:
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=HELDOUT_SAMPLES)
    _evaluate(monitor, golds, proxies)
    return monitor.flagged_at_step


def test_rise_then_fall_is_flagged_at_the_first_evaluation_clearing_the_interval(caplog):
    # The gold rises to 0.60 at step 25, then falls 0.08 per evaluation; the proxy rises throughout.
    golds = [0.40, 0.44, 0.48, 0.52, 0.56, 0.60, 0.52, 0.44, 0.36, 0.28]
    proxies = [0.2 * i for i in range(len(golds))]
    kls = [0.0, 0.01, 0.04, 0.09, 0.16, 0.25, 0.36, 0.49, 0.64, 0.81]
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=HELDOUT_SAMPLES)
    with caplog.at_level("WARNING"):
        _evaluate(monitor, golds, proxies, kls)
    # Drop needed: HELDOUT_MIN_Z standard errors of the difference of two means.
    needed = HELDOUT_MIN_Z * math.sqrt(2) * STANDARD_ERROR
    first = next(i for i in range(6, len(golds)) if 0.60 - golds[i] > needed)
    assert first == 7  # 0.08 is inside the interval, 0.16 clears it
    heldout = monitor.result()["heldout"]
    assert heldout["detected"] is True
    assert heldout["peak_step"] == heldout["flagged_peak_step"] == 25
    assert heldout["flagged_at_step"] == EVAL_STEPS * first == 35
    assert heldout["flagged_at_step"] <= heldout["peak_step"] + 2 * EVAL_STEPS  # within one interval
    assert sum("held-out prompts" in r.message for r in caplog.records) == 1  # warned once
    assert "fell from 0.600 at step 25" in caplog.text
    # The curve: one row per evaluation, sqrt(KL) and 95 % intervals of each mean.
    curve = heldout["curve"]
    assert [row["step"] for row in curve] == [5 * i for i in range(10)]
    assert [row["sqrt_kl"] for row in curve] == pytest.approx([0.1 * i for i in range(10)])
    assert curve[5]["gold_interval"] == pytest.approx(1.96 * STANDARD_ERROR)
    assert curve[5]["proxy"] == 1.0 and curve[5]["proxy_interval"] == pytest.approx(1.96 * 0.8 / 16)
    assert heldout["kl_estimator"] == "k3" and heldout["min_z"] == HELDOUT_MIN_Z


def test_a_fall_that_does_not_last_moves_the_peak_on():
    golds = [0.40, 0.60, 0.40, 0.55, 0.70]
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=HELDOUT_SAMPLES)
    _evaluate(monitor, golds, [0.1 * i for i in range(5)])
    heldout = monitor.result()["heldout"]
    assert heldout["flagged_peak_step"] == 5 and heldout["flagged_at_step"] == 10
    assert heldout["peak_step"] == 20  # the gold's best over the whole run came later


def test_no_flag_while_the_gold_rises_or_stays_flat():
    assert _first_flag([0.3 + 0.02 * i for i in range(12)], [0.1 * i for i in range(12)]) is None
    assert _first_flag([0.5] * 12, [0.1 * i for i in range(12)]) is None
    # Both falling together is not the proxy being exploited.
    assert _first_flag([0.6 - 0.05 * i for i in range(8)], [1.0 - 0.1 * i for i in range(8)]) is None


def _warning_rate(
    trials: int, evaluations: int, gold_slope: float, seed: int, proxy_slope: float = 0.0
) -> float:
    """Share of simulated runs warned: gold and proxy each a trend plus one held-out mean's noise."""
    rng = random.Random(seed)
    warned = 0
    for _ in range(trials):
        golds = [0.4 + gold_slope * i + rng.gauss(0.0, STANDARD_ERROR) for i in range(evaluations)]
        proxies = [proxy_slope * i + rng.gauss(0.0, PROXY_STANDARD_ERROR) for i in range(evaluations)]
        warned += _first_flag(golds, proxies) is not None
    return warned / trials


def test_few_false_alarms_on_noisy_flat_and_rising_golds():
    # A flat gold and a flat proxy, 10 evaluations: the test at 2 standard errors would flag about 1
    # run in 4.
    assert _warning_rate(2000, 10, 0.0, seed=1) < 0.04
    # A gold rising by one standard error per evaluation.
    assert _warning_rate(2000, 12, STANDARD_ERROR, seed=2) < 0.01


def test_the_stall_warning_follows_the_gold_against_the_proxy():
    """A proxy rising by 2 of its standard errors per evaluation (docs/rlhf.md has these rates)."""
    rise = 2 * PROXY_STANDARD_ERROR
    # The gold flat: optimising the proxy does not pay, which is what the stall says.
    assert _warning_rate(500, 10, 0.0, seed=3, proxy_slope=rise) > 0.95
    # The gold rising with it: the faster, the rarer the warning; below its noise, often.
    rates = [_warning_rate(1000, 10, k * STANDARD_ERROR, seed=4, proxy_slope=rise) for k in (1, 2, 4)]
    assert rates[0] > rates[1] > rates[2] and rates[0] > 0.1 and rates[2] < 0.01


def test_heldout_stall_by_hand():
    # Proxy spread 0.5 over 100 samples: its rise must exceed 3 * sqrt(0.5 ** 2 * 2 / 100) = 0.212.
    assert heldout_stall([0.5, 0.6, 0.6], [1.0, 1.1, 1.35], [0.5] * 3, samples=100) == 1
    assert heldout_stall([0.5, 0.6, 0.6], [1.0, 1.1, 1.3], [0.5] * 3, samples=100) is None  # 0.2
    assert heldout_stall([0.5, 0.6, 0.61], [1.0, 1.1, 1.35], [0.5] * 3, samples=100) is None  # rose
    assert heldout_stall([0.6, 0.5, 0.55], [1.0, 1.1, 1.35], [0.5] * 3, samples=100) == 0
    assert heldout_stall([0.5, 0.6, 0.6], [1.0, 1.1, 1.35], [0.5, None, 0.5], samples=100) is None
    assert heldout_stall([0.6], [1.0], [0.5], samples=100) is None


def test_a_plateau_before_the_fall_is_flagged_one_evaluation_after_the_peak(caplog):
    """The held-out series of a run of recipes/rlhf_overoptimisation.yaml (seed 42, docs/LOG.md): the
    gold at 0.795 / 0.789 / 0.778 at steps 12-20 (within one standard error of each other), 0.682 at
    24, while the proxy rose by about 4 of its standard errors per evaluation until step 20."""
    gold = [0.482, 0.635, 0.710, 0.795, 0.789, 0.778, 0.682, 0.658]
    gold_sd = [0.165, 0.128, 0.112, 0.057, 0.068, 0.065, 0.083, 0.092]
    proxy = [-0.306, 2.414, 3.197, 3.723, 4.107, 4.306, 4.292, 4.265]
    proxy_sd = [1.377, 1.243, 0.905, 0.754, 0.619, 0.640, 0.555, 0.558]
    monitor = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=96)
    with caplog.at_level("WARNING"):
        for i in range(len(gold)):
            logs = {
                "eval_rewards/review_warmth/mean": gold[i],
                "eval_rewards/review_warmth/std": gold_sd[i],
                "eval_reward_model/raw_mean": proxy[i],
                "eval_reward_model/raw_std": proxy_sd[i],
                "eval_rewards/reward_model/mean": 0.0,
            }
            monitor.on_log(None, SimpleNamespace(global_step=4 * i), None, logs=logs)
    heldout = monitor.result()["heldout"]
    assert heldout["peak_step"] == 12
    assert heldout["flagged_kind"] == "stall" and heldout["flagged_at_step"] == 16
    assert [(w["kind"], w["peak_step"], w["at_step"]) for w in heldout["warnings"]] == [
        ("stall", 12, 16),
        ("fall", 12, 24),
    ]
    # No per-prompt scores: the means compared, each warning with its test's statistic.
    stall, fall = heldout["warnings"]
    assert stall["paired_prompts"] is None and stall["threshold"] == HELDOUT_MIN_Z
    assert stall["statistic"] == pytest.approx((4.107 - 3.723) / math.sqrt((0.754**2 + 0.619**2) / 96))
    assert fall["statistic"] == pytest.approx((0.682 - 0.795) / math.sqrt((0.057**2 + 0.083**2) / 96))
    # The gold's top before each warning: at the stall only its best had come; by the fall, 16 and 20
    # too (0.795 - 0.778 is 1.93 combined standard errors, under 1.96).
    assert stall["top_steps"] == [12] and fall["top_steps"] == [12, 16, 20]
    assert "did not rise above its best so far (0.795 at step 12; 0.789 now)" in caplog.text
    assert "3.9 combined standard errors of 96 samples each (threshold 3)" in caplog.text
    assert sum("held-out prompts" in r.message for r in caplog.records) == 2  # each kind once
    # Repeated in the run's closing summary (the rl stage's results).
    assert monitor.summary().splitlines() == [
        "over-optimisation (stall, held-out) at step 16: the proxy reward_model rose 3.723 -> 4.107, the "
        "gold review_warmth not above its best (0.795 at step 12; 0.789 now)",
        "over-optimisation (fall, held-out) at step 24: the gold review_warmth fell below its best beyond "
        "its noise (0.795 at step 12; 0.682 now; the gold's top, within its noise: steps 12, 16, 20)",
    ]
    assert OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=96).summary() is None


@pytest.mark.parametrize("seed", range(10))
def test_noisy_rise_then_fall_is_flagged_after_the_peak(seed):
    rng = random.Random(seed)
    true = [0.40 + 0.04 * i if i <= 5 else 0.60 - 0.08 * (i - 5) for i in range(12)]
    golds = [t + rng.gauss(0.0, STANDARD_ERROR) for t in true]
    flagged = _first_flag(golds, [0.2 * i for i in range(12)])
    assert flagged is not None and 25 < flagged <= 25 + 3 * EVAL_STEPS


def test_evaluations_without_kl_or_spread_leave_them_out():
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=64)
    logs = {"eval_rewards/math_accuracy/mean": 0.5, "eval_rewards/reward_model/mean": 1.0, "eval_kl": None}
    monitor.on_log(None, SimpleNamespace(global_step=0), None, logs=logs)
    result = monitor.result()
    assert result["detected"] is False and monitor.steps == []  # evaluations are not training steps
    row = result["heldout"]["curve"][0]
    assert row["kl"] is None and row["sqrt_kl"] is None and row["proxy_interval"] is None
    assert row["gold_interval"] == 0.0  # no spread logged: taken as 0
    assert OveroptimisationMonitor("reward_model", "math_accuracy").result()["heldout"] is None


def test_a_resumed_run_reads_back_the_series_before_its_checkpoint(tmp_path):
    """The resumed stage's monitor starts from metrics.jsonl up to the checkpoint, not from nothing."""
    import json

    def evaluation(step: int, gold: float) -> dict:
        return {
            "step": step,
            "eval_rewards/math_accuracy/mean": gold,
            "eval_rewards/math_accuracy/std": GOLD_SD,
            "eval_rewards/reward_model/mean": 0.1 * step,
            "eval_kl": 0.01 * step,
        }

    def train_step(step: int) -> dict:
        return {"step": step, "rewards/reward_model/mean": 0.1 * step, "rewards/math_accuracy/mean": 0.5}

    logged = [evaluation(0, 0.40), train_step(5), evaluation(5, 0.60), train_step(10), evaluation(10, 0.30)]
    logged += [train_step(15), evaluation(15, 0.20)]  # after checkpoint-10, before the interruption
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in logged) + '{"step": 16, "eval_rew')
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=HELDOUT_SAMPLES)
    monitor.replay(metrics, until_step=10)
    assert monitor.heldout["step"] == [0, 5, 10] and monitor.steps == [5, 10]
    assert monitor.flagged_at_step == 10  # 0.60 -> 0.30, as the interrupted run found
    # The resumed trainer evaluates again at its checkpoint's step (other samples): the first stands.
    for record in (evaluation(10, 0.55), train_step(15), evaluation(15, 0.25)):
        monitor.on_log(None, SimpleNamespace(global_step=record["step"]), None, logs=record)
    heldout = monitor.result()["heldout"]
    assert heldout["step"] == [0, 5, 10, 15] and heldout["gold"] == [0.40, 0.60, 0.30, 0.25]
    assert monitor.steps == [5, 10, 15]
    monitor.replay(tmp_path / "missing.jsonl", until_step=10)  # nothing to read: nothing changes
    assert monitor.heldout["step"] == [0, 5, 10, 15]


# Paired by prompt: each held-out prompt's mean score compared across evaluations.


def test_t_quantile_matches_students_t():
    # scipy.stats.t.isf(scipy.stats.norm.sf(3), dof): the quantile the paired tests use.
    for dof, exact in ((5, 5.507), (10, 3.957), (23, 3.361), (95, 3.081)):
        assert t_quantile(3.0, dof) == pytest.approx(exact, abs=0.02)
    assert t_quantile(3.0, 10_000) == pytest.approx(3.0, abs=1e-3)


def test_prompt_means_and_paired_change_by_hand():
    rows = [
        {"prompt": "a", "rewards": {"gold": 1.0, "proxy": 2.0}},
        {"prompt": "a", "rewards": {"gold": 0.0, "proxy": None}},  # the proxy did not score it
        {"prompt": "b", "rewards": {"gold": 0.5, "proxy": 1.0}},
    ]
    assert prompt_means(rows, "gold") == {"a": 0.5, "b": 0.5}
    assert prompt_means(rows, "proxy") == {"a": 2.0, "b": 1.0}
    assert prompt_means(rows, "other") is None
    earlier = {p: 0.0 for p in "abcdef"}
    later = dict(zip("abcdefg", (1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 9.0), strict=True))  # g: only later
    change, standard_error, prompts = paired_change(earlier, later)
    assert (change, prompts) == (2.0, 6)
    assert standard_error == pytest.approx(math.sqrt(4 / 5) / math.sqrt(6))  # spread sqrt(4/5)
    assert paired_change({p: 0.0 for p in "abcde"}, later) is None  # fewer than 6 prompts in common


def test_gold_top_by_hand():
    """Evaluations within the 95 % noise of the best, before the last (the one that warned)."""
    # Unpaired: a 95 % difference is 1.96 * 0.2 * sqrt(2 / 24) = 0.113.
    assert gold_top([0.5, 0.7, 0.68, 0.6], [0.2] * 4, None, best=1, samples=24) == [1, 2]
    assert gold_top([0.69, 0.7, 0.5], [0.2] * 3, None, best=1, samples=24) == [0, 1]
    # Paired: every prompt 0.02 lower at the third evaluation, no spread: below the best.
    means = [{f"p{i}": v + 0.01 * i for i in range(6)} for v in (0.5, 0.7, 0.68, 0.6)]
    assert gold_top([0.5, 0.7, 0.68, 0.6], [0.2] * 4, means, best=1, samples=24) == [1]
    # An evaluation that cannot be compared (no spread, no per-prompt means) is left out.
    assert gold_top([0.69, 0.7, 0.5], [None, 0.2, 0.2], None, best=1, samples=24) == [1]


def test_proxy_drops_by_hand():
    """Evaluations whose proxy is below its best so far beyond its 95 % noise ("rising throughout")."""
    steps = [0, 4, 8, 12]
    # Unpaired: a 95 % difference is 1.96 * 0.2 * sqrt(2 / 24) = 0.113.
    assert proxy_drops(steps, [0.0, 1.0, 0.9, 2.0], [0.2] * 4, None, samples=24) == []  # a dip in the noise
    drops = proxy_drops(steps, [0.0, 1.0, 0.8, 0.95], [0.2] * 4, None, samples=24)
    assert [(d["step"], d["best_step"]) for d in drops] == [(8, 4)]  # 0.95 is within the noise of 1.0
    assert drops[0]["change"] == pytest.approx(-0.2)
    # Paired: every prompt 0.02 lower at the third evaluation, no spread: a drop the means cannot show.
    means = [{f"p{i}": v + 0.01 * i for i in range(6)} for v in (0.0, 1.0, 0.98, 2.0)]
    drops = proxy_drops(steps, [0.0, 1.0, 0.98, 2.0], [0.2] * 4, means, samples=24)
    assert [(d["step"], d["best_step"]) for d in drops] == [(8, 4)]
    # An evaluation that cannot be compared (no spread, no per-prompt means) is left out.
    assert proxy_drops(steps, [0.0, 1.0, 0.5, 2.0], [0.2, 0.2, None, 0.2], None, samples=24) == []
    assert proxy_drops([0], [1.0], [0.2], None, samples=24) == []


PROMPTS, PER_PROMPT = 24, 4


def _heldout_rows(rng: random.Random, effects: list[float], gold: float, proxy: float, noise: float) -> list:
    """One evaluation's completions: per prompt, its own effect on both scores plus per-sample noise."""
    return [
        {
            "prompt": f"p{i}",
            "rewards": {
                "review_warmth": gold + effects[i] + rng.gauss(0.0, noise),
                "reward_model": proxy + 3 * effects[i] + rng.gauss(0.0, 3 * noise),
            },
        }
        for i in range(PROMPTS)
        for _ in range(PER_PROMPT)
    ]


def _logs_of(rows: list) -> dict:
    logs = {}
    for name in ("review_warmth", "reward_model"):
        values = [r["rewards"][name] for r in rows]
        mean = sum(values) / len(values)
        logs[f"eval_rewards/{name}/mean"] = mean
        logs[f"eval_rewards/{name}/std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return logs


def _paired_run(rng, golds, proxies, noise, effect_sd, paired=True) -> OveroptimisationMonitor:
    effects = [rng.gauss(0.0, effect_sd) for _ in range(PROMPTS)]
    monitor = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=PROMPTS * PER_PROMPT)
    for i, (gold, proxy) in enumerate(zip(golds, proxies, strict=True)):
        rows = _heldout_rows(rng, effects, gold, proxy, noise)
        monitor.trainer = SimpleNamespace(heldout_rows=rows if paired else [])
        monitor.on_log(None, SimpleNamespace(global_step=4 * i), None, logs=_logs_of(rows))
    return monitor


def test_paired_tests_see_a_fall_that_the_prompts_spread_hides():
    """Prompts that differ a lot from each other: unpaired, that spread is noise; paired, it cancels."""
    golds = [0.5, 0.6, 0.7, 0.66, 0.62]  # each step 0.04 down after the best, per-sample noise 0.05
    proxies = [0.0, 1.0, 2.0, 2.1, 2.2]  # unpaired, a rise of 0.2 is about 1.5 standard errors
    paired = _paired_run(random.Random(0), golds, proxies, noise=0.05, effect_sd=0.3)
    unpaired = _paired_run(random.Random(0), golds, proxies, noise=0.05, effect_sd=0.3, paired=False)
    kinds = lambda m: [(w["kind"], w["peak_step"], w["at_step"]) for w in m.warnings]  # noqa: E731
    assert kinds(paired) == [("fall", 8, 12)] and paired.warnings[0]["paired_prompts"] == PROMPTS
    assert paired.warnings[0]["threshold"] == pytest.approx(t_quantile(HELDOUT_MIN_Z, PROMPTS - 1))
    assert kinds(unpaired) == []  # 0.08 is about 1.3 standard errors of samples spread by their prompt


def test_paired_tests_warn_on_noise_as_rarely_as_unpaired_ones():
    """Flat gold and proxy over 10 evaluations, prompt effects and per-sample noise: runs warned."""
    rng = random.Random(5)
    trials = 300
    warned = sum(
        bool(_paired_run(rng, [0.5] * 10, [1.0] * 10, noise=0.2, effect_sd=0.2).warnings)
        for _ in range(trials)
    )
    assert warned / trials < 0.06  # the unpaired means of the same model: ~3 % (docs/rlhf.md)


def test_a_normalised_proxy_is_compared_unpaired(tmp_path):
    """Its per-completion values are not its raw scores: the proxy's test falls back to the means."""
    rng = random.Random(1)
    effects = [0.0] * PROMPTS
    monitor = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=PROMPTS * PER_PROMPT)
    for i, (gold, proxy) in enumerate(((0.5, 1.0), (0.5, 1.1))):
        rows = _heldout_rows(rng, effects, gold, proxy, 0.05)
        monitor.trainer = SimpleNamespace(heldout_rows=rows)
        logs = {**_logs_of(rows), "eval_reward_model/raw_mean": proxy, "eval_reward_model/raw_std": 0.5}
        monitor.on_log(None, SimpleNamespace(global_step=4 * i), None, logs=logs)
    assert monitor.by_prompt["proxy"] == [None, None]
    assert all(m is not None and len(m) == PROMPTS for m in monitor.by_prompt["gold"])


def test_a_resumed_run_pairs_the_evaluations_it_reads_back(tmp_path):
    """heldout_samples.jsonl up to the checkpoint: the replayed evaluations are paired as before."""
    import json

    rng = random.Random(2)
    effects = [rng.gauss(0.0, 0.3) for _ in range(PROMPTS)]
    logged, written = [], []
    for i, (gold, proxy) in enumerate(((0.5, 0.0), (0.7, 1.0), (0.62, 1.1))):
        rows = _heldout_rows(rng, effects, gold, proxy, 0.05)
        logged.append({"step": 4 * i, **_logs_of(rows)})
        written += [{"step": 4 * i, **row} for row in rows]
    metrics, samples = tmp_path / "metrics.jsonl", tmp_path / "heldout_samples.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in logged))
    samples.write_text("".join(json.dumps(r) + "\n" for r in written))
    monitor = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=PROMPTS * PER_PROMPT)
    monitor.replay(metrics, until_step=8, heldout_rows=samples)
    assert len(monitor.by_prompt["gold"]) == 3 and all(monitor.by_prompt["gold"])
    assert [(w["kind"], w["at_step"], w["paired_prompts"]) for w in monitor.warnings] == [
        ("fall", 8, PROMPTS)
    ]
    replayed_without = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=96)
    replayed_without.replay(metrics, until_step=8)
    assert replayed_without.warnings == []  # unpaired, the prompts' spread hides the fall of 0.08


def test_a_change_without_spread_is_recorded_without_a_statistic(caplog):
    """Every completion scored alike at both evaluations (a collapsed policy): the change is beyond
    any noise, and the record stays strict JSON (no infinite t)."""
    import json

    monitor = OveroptimisationMonitor("reward_model", "review_warmth", heldout_samples=96)
    with caplog.at_level("WARNING"):
        for step, gold in ((0, 0.5), (4, 0.818), (8, 0.5)):
            logs = {
                "eval_rewards/review_warmth/mean": gold,
                "eval_rewards/review_warmth/std": 0.0,
                "eval_rewards/reward_model/mean": 1.0 + step,
                "eval_rewards/reward_model/std": 0.0,
            }
            monitor.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
    (warning,) = monitor.warnings
    assert (warning["kind"], warning["peak_step"], warning["at_step"], warning["statistic"]) == (
        "fall",
        4,
        8,
        None,
    )
    assert "by 0.318, with no spread to measure it against (96 samples alike)" in caplog.text
    json.dumps(monitor.result(), allow_nan=False)
