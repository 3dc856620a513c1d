"""`ntp-rl rewards check` on the tiny model: flat, hackable and broken rewards are reported, not crashed on."""

from __future__ import annotations

import json

import pytest
from ntp_rl.rewards import RewardSpec, resolve_reward

from ntp_rl.cli import main
from ntp_rl.rewards_check import hacks, score_like_trl
from tests.conftest import REPO

PLUGINS = str(REPO / "tests" / "plugins" / "check_rewards.py")
FAST = ["--model", "tiny", "--num-prompts", "3", "--samples", "2", "--max-new-tokens", "8"]


def _recipe(rewards: list[dict]) -> dict:
    return {
        "run": {"name": "check"},
        "model": {"name_or_path": "tiny"},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {"kind": "sft", "trainer": {"max_steps": 1}},
            {"kind": "rl", "rewards": rewards, "trainer": {"max_completion_length": 8}},
        ],
    }


def test_flags_hackable_and_broken_rewards_and_writes_json(write_recipe, tmp_path, tiny_model_path, capsys):
    rewards = [
        {"name": "math_accuracy"},
        {"path": f"{PLUGINS}:mentions_answer", "weight": 1.0},
        {"path": f"{PLUGINS}:broken", "weight": 0.5},
    ]
    out = tmp_path / "report.json"
    assert main(["rewards", "check", str(write_recipe(_recipe(rewards))), *FAST, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rewards on the model's samples" in printed and "degenerate completions" in printed

    report = json.loads(out.read_text())
    assert report["num_prompts"] == 3 and report["num_samples"] == 6 and len(report["samples"]) == 6
    by_name = {entry["name"]: entry for entry in report["rewards"]}
    # The broken reward: every sample an error, scored None, and the check went on.
    assert by_name["broken"]["errors"]["count"] == 6
    assert "ZeroDivisionError" in by_name["broken"]["errors"]["messages"][0]
    assert by_name["broken"]["sampled"]["none_share"] == 1.0
    # math_accuracy: parse failures counted (a random model writes no numbers to speak of).
    parse = by_name["math_accuracy"]["parse_failures"]
    assert sum(parse["reasons"].values()) == parse["count"] <= 6
    assert by_name["mentions_answer"]["parse_failures"] is None
    assert by_name["mentions_answer"]["degenerate"]["answer_zero"] == 1.0

    warnings = {(w["kind"], w["reward"]) for w in report["warnings"]}
    assert ("errors", "broken") in warnings
    assert ("not_applicable", "broken") in warnings
    hackable = [w for w in report["warnings"] if w["kind"] == "hackable"]
    assert any("answer_zero" in w["message"] and "mentions_answer" in w["message"] for w in hackable)
    assert "answer_zero" in by_name["mentions_answer"]["hackable_by"]


def test_honest_reward_on_a_flat_model_is_not_called_hackable(write_recipe, tmp_path, tiny_model_path):
    out = tmp_path / "report.json"
    recipe = write_recipe(_recipe([{"name": "math_accuracy"}]))
    assert main(["rewards", "check", str(recipe), *FAST, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    kinds = {(w["kind"], w["reward"]) for w in report["warnings"]}
    # The random model never answers right: no signal, but "Answer: 0" earns nothing either.
    assert ("no_signal", "math_accuracy") in kinds
    assert not [w for w in report["warnings"] if w["kind"] == "hackable"]
    assert report["settings"]["max_new_tokens"] == 8 and report["settings"]["temperature"] == 1.0


@pytest.mark.parametrize(
    ("argv_tail", "fragment"),
    [
        (["--stage", "sft"], "is a sft stage"),
        (["--stage", "nope"], "--stage 'nope'"),
        (["stages.rl.rewards=[{name: math_acuracy}]"], "math_accuracy"),
        (["--model", "./no/such/folder"], "no such folder"),
    ],
)
def test_bad_input_exits_2(write_recipe, capsys, argv_tail, fragment):
    recipe = write_recipe(_recipe([{"name": "math_accuracy"}]))
    assert main(["rewards", "check", str(recipe), *argv_tail]) == 2
    assert fragment in capsys.readouterr().err


def test_no_rl_stage_and_bad_numbers_exit_2(write_recipe, capsys):
    recipe = _recipe([{"name": "math_accuracy"}])
    recipe["stages"] = recipe["stages"][:1]
    assert main(["rewards", "check", str(write_recipe(recipe))]) == 2
    assert "no rl stage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["rewards", "check", "recipe.yaml", "--samples", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("on_error", "expected_values", "expected_errors"),
    [
        ("raise", [2.0, None, 5.0], 1),  # re-scored one sample at a time: only the bad one is lost
        ("skip", [None, None, None], 3),  # the guard scores the whole failing batch None
    ],
)
def test_score_like_trl_counts_errors_per_sample(on_error, expected_values, expected_errors):
    reward = resolve_reward(RewardSpec(path=f"{PLUGINS}:fails_on_bad", on_error=on_error))
    texts = ["ok", "bad", "fine!"]
    prompts = [[{"role": "user", "content": "q"}]] * 3
    scored = score_like_trl(reward, prompts, texts, [[1], [2], [3]], {"answer": ["1", "2", "3"]})
    assert scored.values == expected_values
    assert scored.errors == expected_errors


@pytest.mark.parametrize(
    ("sampled", "degenerate", "flagged"),
    [
        ([0.0, 0.0], {"answer_zero": [1.0]}, {"answer_zero": 1.0}),  # pays more than real samples
        ([0.0, 0.0], {"answer_zero": [0.0]}, {}),  # tied at the floor: nothing to exploit
        ([1.0, 0.0], {"empty": [0.0], "answer_zero": [0.5]}, {"answer_zero": 0.5}),  # = the mean
        ([1.0, 0.8], {"empty": [0.0], "answer_zero": [0.5]}, {}),  # below the samples
        ([None, None], {"empty": [1.0]}, {}),  # nothing sampled to compare with
    ],
)
def test_hack_heuristic(sampled, degenerate, flagged):
    assert hacks(sampled, degenerate) == flagged


def test_policy_is_the_trained_init_adapter_of_this_config(write_recipe, tmp_path, tiny_model_path):
    from ntp_rl.config import load_recipe
    from ntp_rl.rewards_check import choose_policy

    path = write_recipe(_recipe([{"name": "math_accuracy"}]))
    recipe = load_recipe(path)
    rl = recipe.stages[1]
    assert choose_policy(recipe, 1, rl, path.parent, None).adapter is None  # nothing trained yet
    adapter = tmp_path / "runs" / "check" / "sft" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_path}))
    (adapter.parent.parent / "manifest.json").write_text(json.dumps({"config_hash": "another config"}))
    assert choose_policy(recipe, 1, rl, path.parent, None).adapter is None  # another config's run
    (adapter.parent.parent / "manifest.json").write_text(json.dumps({"config_hash": recipe.config_hash()}))
    assert choose_policy(recipe, 1, rl, path.parent, None).adapter == adapter
    named = choose_policy(recipe, 1, rl, path.parent, str(adapter.parent))  # --model runs/check/sft
    assert named.adapter == adapter and named.base == tiny_model_path
