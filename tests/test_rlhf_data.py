"""Preference data for RLHF: the HH layout parser, the synthetic preference task, and bad data (exit 2)."""

from __future__ import annotations

import json
import re

import pytest
from ntp_rl.rewards import format_reward, math_accuracy

from ntp_rl.cli import main
from ntp_rl.config import DataSettings
from ntp_rl.data import load_rows, to_sft_format
from ntp_rl.errors import UserError
from ntp_rl.preference_data import InvalidPair, parse_hh_pair, parse_hh_transcript, to_preference_format
from ntp_rl.tasks import preferences

# --------------------------------------------------------------------------------------------
# Anthropic HH layout

HH_CHOSEN = (
    "\n\nHuman: What is the capital of France?"
    "\n\nAssistant: Paris."
    "\n\nHuman: And of Italy?"
    "\n\nAssistant: Rome is the capital of Italy."
)
HH_REJECTED = (
    "\n\nHuman: What is the capital of France?"
    "\n\nAssistant: Paris."
    "\n\nHuman: And of Italy?"
    "\n\nAssistant: I don't know, maybe Milan."
)


def test_hh_transcript_splits_into_turns():
    assert parse_hh_transcript("\n\nHuman: hi there\n\nAssistant: hello!") == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
    ]
    # "Human:" inside a turn without the blank line before it is text, not a new turn.
    assert (
        parse_hh_transcript("\n\nHuman: say Human: twice\n\nAssistant:ok")[0]["content"] == "say Human: twice"
    )


def test_hh_pair_shares_the_prompt_and_keeps_the_final_replies():
    pair = parse_hh_pair(HH_CHOSEN, HH_REJECTED)
    assert pair["prompt"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert pair["chosen"] == "Rome is the capital of Italy."
    assert pair["rejected"] == "I don't know, maybe Milan."


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ("\n\nHuman: hi", "\n\nHuman: hi\n\nAssistant: yo", "`chosen` does not end with"),
        ("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y", "differ before their final"),
        ("preamble\n\nHuman: a\n\nAssistant: x", "\n\nHuman: a\n\nAssistant: y", "before the first 'Human:'"),
    ],
)
def test_hh_pairs_that_cannot_be_split(chosen, rejected, message):
    with pytest.raises(InvalidPair, match=message):
        parse_hh_pair(chosen, rejected)


def test_hh_format_loads_from_a_file_and_feeds_sft_and_reward_model(tmp_path):
    rows = [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED, "id": 7}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSettings(source=str(tmp_path / "train.jsonl"), format="hh")
    loaded = load_rows(data, "train", seed=0)
    pairs = to_preference_format(loaded, data, "train", "here")
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "And of Italy?"}
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Rome is the capital of Italy."}]
    assert pairs[0]["id"] == 7  # other columns are kept
    sft = to_sft_format(loaded, "here")  # SFT on the chosen replies
    assert sft[0]["completion"] == [{"role": "assistant", "content": "Rome is the capital of Italy."}]


# --------------------------------------------------------------------------------------------
# synthetic:preferences


def test_synthetic_preferences_follow_the_gold_rule():
    rows = preferences.generate("train", 60, seed=3)
    assert rows == preferences.generate("train", 60, seed=3)  # deterministic
    assert {r["rejected_kind"] for r in rows} == set(preferences.REJECTED_KINDS)
    chosen = [r["chosen"] for r in rows]
    answers = [r["answer"] for r in rows]
    assert math_accuracy(chosen, answer=answers) == [1.0] * len(rows)  # the gold verifier agrees
    assert format_reward(chosen) == [1.0] * len(rows)
    for row in rows:
        assert row["chosen"].endswith(f"Answer: {row['answer']}") and row["rejected"] != row["chosen"]
        score = math_accuracy([row["rejected"]], answer=[row["answer"]])[0]
        if row["rejected_kind"] == "wrong_answer":
            assert score == 0.0 and row["rejected"].splitlines()[-1].startswith("Answer: ")
        elif row["rejected_kind"] == "rambling":
            assert score == 1.0 and len(row["rejected"]) > len(row["chosen"]) + 60
        else:
            assert "Answer:" not in row["rejected"]


def _numbers(text):
    return [int(n) for n in re.findall(r"\d+", text)]


def test_synthetic_preferences_with_decomposed_solutions():
    rows = preferences.generate("train", 600, seed=1, decomposed_solutions=True)
    plain = preferences.generate("train", 600, seed=1)
    assert [r["key"] for r in rows] == [r["key"] for r in plain]  # the same problems
    wrong_links = {}
    for row in rows:
        assert row["chosen"].endswith(f"Answer: {row['answer']}")
        if row["rejected_kind"] != "wrong_answer":
            continue
        chosen_step, rejected_step = row["chosen"].splitlines()[-2], row["rejected"].splitlines()[-2]
        wrong = int(row["rejected"].splitlines()[-1].removeprefix("Answer: "))
        assert wrong != int(row["answer"]) and wrong >= 0
        if chosen_step == rejected_step:  # a slip: the step is right, the answer line is not
            wrong_links["slip"] = wrong_links.get("slip", 0) + 1
            continue
        if chosen_step.split(" = ")[0] != rejected_step.split(" = ")[0]:  # a misread operation
            (x, chosen_op, y), (x2, op, y2) = chosen_step.split()[:3], rejected_step.split()[:3]
            assert (x, y) == (x2, y2) and op != chosen_op
            assert wrong == (int(x) + int(y) if op == "+" else int(x) - int(y))
            assert rejected_step.endswith(f"= {wrong}.")
            wrong_links["misread"] = wrong_links.get("misread", 0) + 1
            continue
        # A miscalculation: the problem and its decomposition are kept, one link is wrong and carried
        # through to the answer, so the step ends in the wrong answer.
        assert rejected_step.endswith(f"= {wrong}.")
        a, b = _numbers(chosen_step), _numbers(rejected_step)
        assert len(a) == len(b) and a[:2] == b[:2]
        differing = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert differing[-1] == len(a) - 1 and len(differing) <= 2
        if len(differing) == 2:  # a wrong intermediate result, and the sum or difference built on it
            operator = "*" if " * " in chosen_step else chosen_step.split()[1]
            x, y, z = b[-3:]
            expected = x + y if operator in "*+" else x - y
            assert z == expected, rejected_step
        kind = "last" if len(differing) == 1 else "carried"
        wrong_links[kind] = wrong_links.get(kind, 0) + 1
    assert set(wrong_links) == {"slip", "misread", "last", "carried"}
    assert min(wrong_links.values()) >= 10


def test_synthetic_preferences_keep_the_arithmetic_split():
    train = {r["key"] for r in preferences.generate("train", 500, seed=0)}
    test = {r["key"] for r in preferences.generate("test", 200, seed=0)}
    assert not train & test
    data = DataSettings(source="synthetic:preferences", arithmetic={"num_train": 12, "num_test": 4})
    loaded = load_rows(data, "train", seed=0)
    decomposed = DataSettings(
        source="synthetic:preferences",
        arithmetic={"num_train": 12, "num_test": 4, "decomposed_solutions": True},
    )
    assert load_rows(decomposed, "train", seed=0)["chosen"] != loaded["chosen"]
    assert len(loaded) == 12 and {"prompt", "chosen", "rejected", "answer", "rejected_kind"} <= set(
        loaded.column_names
    )


# --------------------------------------------------------------------------------------------
# Bad preference data and bad reward-model specs: exit 2 before any model loads, naming the culprit


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


GOOD = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}


@pytest.mark.parametrize(
    ("train_rows", "test_rows", "expected"),
    [
        pytest.param(
            [{"prompt": "p", "chosen": "a"}],
            [GOOD],
            ["stages[0] (reward_model)", "split 'train'", "prompt+chosen+rejected"],
            id="missing-column",
        ),
        pytest.param(
            [GOOD, {"prompt": "p", "chosen": "same", "rejected": "same"}],
            [GOOD],
            ["stages[0] (reward_model)", "split 'train' row 1", "`chosen` is identical to `rejected`"],
            id="chosen-equals-rejected",
        ),
        pytest.param(
            [GOOD],
            [{"prompt": "p", "chosen": "fine", "rejected": "  "}],
            ["stages[0] (reward_model)", "split 'test' row 0", "`rejected` is empty"],
            id="empty-response",
        ),
        pytest.param([GOOD], [], ["split 'test' is empty"], id="empty-split"),
    ],
)
def test_bad_preference_data_exits_2_naming_the_culprit(
    write_recipe, tmp_path, capsys, train_rows, test_rows, expected
):
    data = tmp_path / "pairs"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", train_rows)
    _write_jsonl(data / "test.jsonl", test_rows)
    recipe = {
        "model": {"name_or_path": "tiny"},
        "data": {"source": str(data)},
        "stages": [{"kind": "reward_model", "trainer": {"max_steps": 1}}],
    }
    assert main(["train", str(write_recipe(recipe))]) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err
    assert "pairs" in err  # the source is named
    assert not (tmp_path / "runs").exists()


def test_skip_invalid_pairs_drops_them(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [GOOD, {"prompt": "p", "chosen": "x", "rejected": "x"}, GOOD])
    data = DataSettings(source=str(tmp_path / "train.jsonl"), skip_invalid_pairs=True)
    pairs = to_preference_format(load_rows(data, "train", seed=0), data, "train", "here")
    assert len(pairs) == 2
    _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}])
    with pytest.raises(UserError, match="no valid preference pairs"):
        to_preference_format(load_rows(data, "train", seed=0), data, "train", "here")


def _rl_recipe(rewards, stages_before=()):
    return {
        "model": {"name_or_path": "tiny"},
        "data": {"source": "synthetic:arithmetic", "arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [*stages_before, {"kind": "rl", "rewards": rewards, "trainer": {"max_steps": 1}}],
    }


@pytest.mark.parametrize(
    ("rewards", "stages_before", "expected"),
    [
        pytest.param(
            [{"reward_model": "./no/such/reward_model"}], [], "stages[0].rewards[0]", id="missing-folder"
        ),
        pytest.param([{"reward_model": "rm"}], [], "no reward model folder 'rm'", id="unknown-stage-name"),
        pytest.param(
            [{"reward_model": "sft"}],
            [{"kind": "sft", "trainer": {"max_steps": 1}}],
            "stage 'sft' is a sft stage, not a reward_model stage",
            id="not-a-reward-model-stage",
        ),
        pytest.param(
            [{"reward_model": "rm", "kwargs": {"normalize": "sometimes"}}],
            [{"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}],
            "normalize must be one of none, batch, group",
            id="bad-normalize",
        ),
        pytest.param(
            [{"reward_model": "rm", "kwargs": {"dead_zone": 0.5}}],
            [{"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}],
            "dead_zone needs normalize: group",
            id="dead-zone-without-group",
        ),
        pytest.param(
            [{"reward_model": "rm", "kwargs": {"normalize": "group", "dead_zone": -1}}],
            [{"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}],
            "dead_zone must be a number >= 0",
            id="negative-dead-zone",
        ),
        pytest.param(
            [{"reward_model": "rm", "kwargs": {"normalize": "group", "dead_zone": 0.5}}],
            [{"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}],
            "kwargs.dead_zone needs advantages on the reward's own scale, but scale_rewards is 'group' "
            "(the default)",
            id="dead-zone-with-group-scaling",
        ),
        pytest.param(
            [{"name": "math_accuracy", "reward_model": "x"}], [], "give exactly one of", id="two-sources"
        ),
    ],
)
def test_bad_reward_model_specs_exit_2(write_recipe, tmp_path, capsys, rewards, stages_before, expected):
    assert main(["train", str(write_recipe(_rl_recipe(rewards, stages_before)))]) == 2
    err = capsys.readouterr().err
    assert expected in err and "rewards[0]" in err
    assert not (tmp_path / "runs").exists()


def test_dead_zone_with_scale_rewards_none_passes_the_check(write_recipe, tmp_path):
    from ntp_rl.config import load_recipe
    from ntp_rl.pipeline import preflight

    rm = {"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}
    recipe = _rl_recipe([{"reward_model": "rm", "kwargs": {"normalize": "group", "dead_zone": 0.5}}], [rm])
    recipe["stages"][-1]["trainer"]["scale_rewards"] = "none"
    path = write_recipe(recipe)
    preflight(load_recipe(path, []), path.parent)  # raises UserError if refused


def test_a_folder_that_is_not_a_reward_model_exits_2(write_recipe, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(write_recipe(_rl_recipe([{"reward_model": str(tmp_path / "empty")}])))]) == 2
    err = capsys.readouterr().err
    assert "stages[0].rewards[0]" in err and "neither adapter_config.json" in err


def test_gold_rewards_weigh_zero_unless_given_a_weight():
    from ntp_rl.config import RewardSpecSettings

    assert RewardSpecSettings(name="math_accuracy", gold=True).weight == 0.0
    assert RewardSpecSettings(name="math_accuracy", gold=True, weight=0.5).weight == 0.5
    assert RewardSpecSettings(name="math_accuracy").weight == 1.0


def test_reward_model_stage_keys_are_checked_with_their_path(write_recipe, capsys):
    stage = {"kind": "reward_model", "eval_exampels": 4, "trainer": {"center_reward_coefficient": 0.01}}
    recipe = {
        "model": {"name_or_path": "tiny"},
        "data": {"source": "synthetic:preferences"},
        "stages": [stage],
    }
    assert main(["train", str(write_recipe(recipe))]) == 2
    assert "stages[0].eval_exampels: unknown key; did you mean eval_examples?" in capsys.readouterr().err
    del stage["eval_exampels"]
    assert main(["train", str(write_recipe(recipe))]) == 2
    assert (
        "stages[0].trainer.center_reward_coefficient: unknown key for RewardConfig; "
        "did you mean center_rewards_coefficient?" in capsys.readouterr().err
    )


def test_eval_scores_a_training_reward_model_raw(write_recipe, tmp_path):
    """normalize / dead_zone shape training advantages; the eval reports the reward model's own score."""
    from ntp_rl.config import load_recipe
    from ntp_rl.stages.evaluate import _training_rewards

    rm = {"kind": "reward_model", "name": "rm", "data": {"source": "synthetic:preferences"}}
    kwargs = {"normalize": "group", "dead_zone": 0.5, "dtype": "bfloat16"}
    recipe = _rl_recipe([{"reward_model": "rm", "kwargs": kwargs}, {"name": "math_accuracy"}], [rm])
    recipe["stages"].append({"kind": "eval"})
    loaded = load_recipe(write_recipe(recipe), [])
    specs = _training_rewards(loaded, 2, run_dir=tmp_path / "run")
    assert specs[0].reward_model == str(tmp_path / "run" / "rm") and specs[0].kwargs == {"dtype": "bfloat16"}
    assert specs[1].name == "math_accuracy"
