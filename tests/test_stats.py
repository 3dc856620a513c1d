"""Statistics against hand-computed and known values."""

from __future__ import annotations

import math

import pytest

from ntp_rl.stats import bootstrap_ci, majority_at_k, mcnemar_exact, paired_bootstrap_diff, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),
        (4, 4, 1, 1.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),
        (4, 2, 2, 1 - 1 / 6),
        (5, 1, 5, 1.0),
        (10, 3, 4, 1 - 35 / 210),
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)


@pytest.mark.parametrize(
    ("answers", "correct", "k", "expected"),
    [
        (["5", "5", "6", "7"], [True, True, False, False], 4, True),
        (["6", "5", "6", "5"], [False, True, False, True], 4, False),  # tie: the first seen wins
        ([None, None, "5", "6"], [False, False, True, False], 4, True),
        ([None, None], [False, False], 2, False),
        (["6", "5", "5", "5"], [False, True, True, True], 1, False),
    ],
)
def test_majority_at_k(answers, correct, k, expected):
    assert majority_at_k(answers, correct, k) is expected


def test_mcnemar_known_values():
    # 10 discordant pairs split 9/1: two-sided exact p = 2 * (1 + 10) / 1024.
    a = [False] * 9 + [True] + [True] * 5
    b = [True] * 9 + [False] + [True] * 5
    result = mcnemar_exact(a, b)
    assert result["wrong_to_right"] == 9 and result["right_to_wrong"] == 1
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0


def test_bootstrap_intervals_cover_and_shrink():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, seed=0)
    assert low < 0.3 < high and high - low < 0.25
    wide = bootstrap_ci(values[:10] + values[-10:], seed=0)
    assert wide[1] - wide[0] > high - low
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_paired_bootstrap_diff():
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 60 + [1.0] * 40  # b right wherever a was, plus 50 more
    result = paired_bootstrap_diff(a, b, seed=0)
    assert result["diff"] == pytest.approx(0.5)
    assert 0.35 < result["ci_low"] < 0.5 < result["ci_high"] < 0.65  # SE = 0.05
    assert result["p_not_better"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [1.0, 0.0])


def test_bootstrap_ratio_ci_weighs_tokens_and_resamples_items():
    from ntp_rl.stats import bootstrap_ratio_ci

    # Per-token mean over items of different lengths: (10 + 0) / (10 + 90) = 0.1, not the item mean 0.5.
    sums, tokens = [10.0, 0.0] * 20, [10, 90] * 20
    low, high = bootstrap_ratio_ci(sums, tokens, seed=0)
    assert low < 0.1 < high < 0.25  # far from the mean of item means, 0.5
    assert bootstrap_ratio_ci([2.0] * 5, [4] * 5, seed=1) == (0.5, 0.5)
    assert bootstrap_ratio_ci(sums, tokens, seed=3) == bootstrap_ratio_ci(sums, tokens, seed=3)
    assert all(math.isnan(x) for x in bootstrap_ratio_ci([], []))
    with pytest.raises(ValueError):
        bootstrap_ratio_ci([1.0], [1, 2])


# --------------------------------------------------------------------------------------------
# A scorer's agreement with the verdicts, on samples of the same prompt (eval reports)


def test_ranking_agreement_by_hand():
    from ntp_rl.evaluation.formatting import ranking_agreement_rows
    from ntp_rl.evaluation.metrics import ranking_agreement, reward_stats

    rewards = [
        [2.0, 1.0, 0.0, None],  # right: 2.0, 0.0; wrong: 1.0 (None unscored) -> pairs (2>1), (0<1): 0.5
        [1.0, 1.0],  # a tie: 0.5
        [3.0, 3.0],  # both right: no pair
        [0.0],  # greedy: no pair
    ]
    correct = [[True, False, True, False], [True, False], [True, True], [False]]
    agreement = ranking_agreement(rewards, correct, seed=0)
    assert agreement["value"] == pytest.approx(0.5) and agreement["items"] == 2 and agreement["pairs"] == 3
    perfect = ranking_agreement([[1.0, 0.0], [0.0, 5.0]], [[True, False], [False, True]], seed=0)
    assert perfect["value"] == 1.0 and perfect["ci"] == [1.0, 1.0]
    inverted = ranking_agreement([[0.0, 1.0]], [[True, False]], seed=0)
    assert inverted["value"] == 0.0
    assert ranking_agreement([[1.0], [0.0]], [[True], [False]], seed=0) is None  # one sample each

    stats = reward_stats({"rm": [[0.7, 0.2]], "flat": [[0.0, 0.0]]}, seed=0, correct=[[True, False]])
    assert stats["rm"]["ranking_agreement"]["value"] == 1.0
    assert stats["flat"]["ranking_agreement"]["value"] == 0.5
    assert "ranking_agreement" not in reward_stats({"rm": [[1.0, 0.0]]}, seed=0)["rm"]  # no verdicts
    # The checker itself (math_accuracy as a scorer) agrees by construction: not reported.
    checker = reward_stats({"math_accuracy": [[1.0, 0.0, None]]}, seed=0, correct=[[True, False, True]])
    assert "ranking_agreement" not in checker["math_accuracy"]
    summary = {"rl": {"rewards": {"sampled": {"rm": stats["rm"]}}}}
    assert ranking_agreement_rows(summary) == [["rl", "sampled", "rm", "1.000 [1.000, 1.000]", "1", "1"]]
