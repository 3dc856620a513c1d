"""The policy-pairs labeller: Bradley-Terry label noise at a set tau or a target disagreement, the
settings' checks, and a reward model that learns from labelled pairs of the policy's samples alone."""

from __future__ import annotations

import json
import math

import pytest

from ntp_rl.cli import main
from ntp_rl.config import load_recipe
from ntp_rl.errors import UserError
from ntp_rl.stages.policy_pairs import draw_pairs, policy_pairs_from_samples, tau_for_disagreement
from ntp_rl.tasks import reviews
from tests.conftest import REPO

MARGINS = (0.05, 0.2, 0.5, 1.0)  # gold differences of the constructed pairs, one per prompt in turn
PROMPTS = 8000


def _records(margins=MARGINS, prompts=PROMPTS):
    """One pair per prompt: samples "worse i" (gold 0) and "better i" (gold = a margin)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"prompt {i}"}],
            "completions": [f"worse {i}", f"better {i}"],
            "scores": [0.0, margins[i % len(margins)]],
        }
        for i in range(prompts)
    ]


def _against_the_gold(pairs) -> float:
    return sum(p["chosen"][0]["content"].startswith("worse") for p in pairs) / len(pairs)


def _tolerance(rate: float, n: int) -> float:
    # Four binomial standard errors: a correct labeller fails this about once in 16,000 runs.
    return 4 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("tau", [0.1, 0.3, 1.0])
def test_realised_noise_matches_the_bradley_terry_rate_of_tau(tau):
    pairs, stats = policy_pairs_from_samples(_records(), 1, seed=7, tau=tau)
    expected = sum(1 / (1 + math.exp(m / tau)) for m in MARGINS) / len(MARGINS)
    assert stats["expected_disagreement"] == pytest.approx(expected)
    realised = _against_the_gold(pairs)
    assert stats["realised_disagreement"] == realised
    assert abs(realised - expected) < _tolerance(expected, PROMPTS)
    # Close pairs are labelled against the gold more often than clear ones, as the model says.
    by_margin = {
        m: _against_the_gold([p for i, p in enumerate(pairs) if MARGINS[i % len(MARGINS)] == m])
        for m in MARGINS
    }
    for m in MARGINS:
        p = 1 / (1 + math.exp(m / tau))
        assert abs(by_margin[m] - p) < _tolerance(max(p, 1e-3), PROMPTS // len(MARGINS))


@pytest.mark.parametrize("target", [0.1, 0.25, 0.3, 0.35])
def test_a_target_disagreement_sets_tau(target):
    pairs, stats = policy_pairs_from_samples(_records(), 1, seed=3, disagreement=target)
    assert stats["noise"] == "bradley_terry" and stats["target_disagreement"] == target
    assert stats["expected_disagreement"] == pytest.approx(target, abs=1e-6)
    assert abs(stats["realised_disagreement"] - target) < _tolerance(target, PROMPTS)
    assert stats["tau"] == pytest.approx(tau_for_disagreement(list(MARGINS), target))


def test_tau_rises_with_the_disagreement_asked_for_and_scales_with_the_gold():
    taus = [tau_for_disagreement(list(MARGINS), d) for d in (0.05, 0.2, 0.3, 0.45)]
    assert taus == sorted(taus)
    # Gold scores ten times as large need a tau ten times as large for the same disagreement.
    assert tau_for_disagreement([10 * m for m in MARGINS], 0.3) == pytest.approx(10 * taus[2], rel=1e-6)
    with pytest.raises(ValueError):
        tau_for_disagreement(list(MARGINS), 0.5)


def test_noise_changes_labels_not_which_pairs_are_drawn():
    records = _records(prompts=200) + [
        {"prompt": "tie", "completions": ["a", "b", "c"], "scores": [1.0, 1.0, None]}  # nothing to label
    ]
    clean, clean_stats = policy_pairs_from_samples(records, 1, seed=5)
    noisy, noisy_stats = policy_pairs_from_samples(records, 1, seed=5, tau=0.5)
    assert clean_stats["realised_disagreement"] == 0.0 and clean_stats["noise"] == "none"
    assert _against_the_gold(clean) == 0.0 and 0 < _against_the_gold(noisy) < 0.5
    unordered = [{p["chosen"][0]["content"], p["rejected"][0]["content"]} for p in clean]
    assert unordered == [{p["chosen"][0]["content"], p["rejected"][0]["content"]} for p in noisy]
    assert clean_stats["prompts"] == 201 and clean_stats["prompts_with_a_difference"] == 200
    drawn, mixed = draw_pairs(records, 3, seed=5)
    assert mixed == 200 and len(drawn) == 200  # one pair per prompt holds two samples


def _recipe(tmp_path, policy_pairs: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "run: {name: t}\nmodel: {name_or_path: tiny}\ndata: {source: 'synthetic:reviews'}\n"
        f"stages:\n  - {{kind: sft}}\n  - {{kind: reward_model, policy_pairs: {policy_pairs}}}\n"
    )
    return str(path)


def test_noise_settings_are_checked_and_left_out_of_the_hash_when_unset(tmp_path):
    with pytest.raises(UserError, match=r"give `tau` or `disagreement`"):
        load_recipe(_recipe(tmp_path, "{policy: sft, tau: 0.1, disagreement: 0.3}"))
    with pytest.raises(UserError, match=r"stages\[1\]\.policy_pairs\.disagreement"):
        load_recipe(_recipe(tmp_path, "{policy: sft, disagreement: 0.5}"))
    with pytest.raises(UserError, match=r"stages\[1\]\.policy_pairs\.tau"):
        load_recipe(_recipe(tmp_path, "{policy: sft, tau: 0}"))
    plain = load_recipe(_recipe(tmp_path, "{policy: sft}"))
    assert plain.config_hash() == "adc9ae8e1b90e18c"  # as computed before tau and disagreement existed
    assert load_recipe(_recipe(tmp_path, "{policy: sft, tau: 0.1}")).config_hash() != plain.config_hash()


def _labelled_run(name: str, train: int, test: int, reward_model: dict) -> dict:
    """A tiny run on synthetic:reviews: one SFT step, then the given reward_model stage."""
    return {
        "run": {"name": name},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"source": "synthetic:reviews", "max_train_examples": train, "max_test_examples": test},
        "stages": [
            {"kind": "sft", "eval_examples": 0, "trainer": {"max_steps": 1}},
            {"kind": "reward_model", **reward_model},
        ],
    }


def test_reward_model_learns_from_labelled_pairs_of_the_policy_alone(write_recipe, tmp_path, tiny_model_path):
    """Prompt-only data: the pairs are the policy's samples, labelled with noise; held out, without."""
    length = str(REPO / "tests" / "plugins" / "length_reward.py") + ":completion_length"
    recipe = _labelled_run(
        "labelled",
        train=12,
        test=3,
        reward_model={
            "eval_examples": 3,
            "policy_pairs": {
                "policy": "sft",
                "gold": {"path": length},  # varies on a random model: the longer sample is better
                "prompts": 6,
                "samples": 3,
                "max_new_tokens": 6,
                "max_pairs_per_prompt": 2,
                "disagreement": 0.3,
            },
            "trainer": {"max_steps": 1, "per_device_train_batch_size": 4},
        },
    )
    assert main(["train", str(write_recipe(recipe))]) == 0
    stage = tmp_path / "runs" / "labelled" / "reward_model"
    done = json.loads((stage / "COMPLETE").read_text())
    stats = done["policy_pairs"]
    assert stats["noise"] == "bradley_terry" and stats["tau"] > 0 and "reference_fallback" not in stats
    assert done["train_rows"] == stats["pairs"] > 0  # the labelled pairs, and nothing else
    assert 0.0 <= stats["realised_disagreement"] <= 1.0 and stats["expected_disagreement"] == pytest.approx(
        0.3
    )
    # Held out: every pair of each test prompt's samples that the labeller tells apart.
    assert done["heldout_before"]["pairs"] == stats["heldout_pairs"] > 0
    records = [json.loads(line) for line in (stage / "policy_samples_heldout.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["completions"]) == 3 and "reference" in r for r in records)
    assert {r["prompt"][0]["content"] for r in records} <= {
        row["prompt"] for row in reviews.generate("test", 42)
    }


def test_a_max_length_that_drops_every_labelled_pair_is_an_error_naming_it(write_recipe, tmp_path, capsys):
    """TRL drops pairs longer than max_length; with none left the stage says which key, not TRL's sampler."""
    recipe = _labelled_run(
        "short",
        train=8,
        test=2,
        reward_model={
            "eval_examples": 0,
            "policy_pairs": {
                "policy": "sft",
                "gold": {"name": "review_warmth"},
                "prompts": 4,
                "samples": 2,
                "max_new_tokens": 4,
            },
            "trainer": {"max_steps": 1, "max_length": 8},  # shorter than any chat-templated prompt
        },
    )
    assert main(["train", str(write_recipe(recipe))]) == 2
    err = capsys.readouterr().err
    assert "stages[1].trainer.max_length=8" in err and "nothing to train on" in err
    assert not (tmp_path / "runs" / "short" / "reward_model" / "COMPLETE").exists()
