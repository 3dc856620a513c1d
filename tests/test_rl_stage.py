"""GRPO and RLOO on the tiny model: the policy starts from the SFT adapter and its weights move."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ntp_rl.cli import main
from tests.conftest import REPO

PLUGIN = str(REPO / "tests" / "plugins" / "length_reward.py") + ":completion_length"
HASH_PLUGIN = str(REPO / "tests" / "plugins" / "text_hash_reward.py")


def _recipe(algorithm: str) -> dict:
    return {
        "run": {"name": f"rl-{algorithm}"},
        "model": {"name_or_path": "tiny", "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 16, "num_test": 4}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 0,
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 2, "warmup_steps": 0},
            },
            {
                "kind": "rl",
                "algorithm": algorithm,
                "rewards": [{"path": PLUGIN, "weight": 1.0}, {"name": "math_accuracy", "weight": 0.0}],
                "trainer": {
                    "max_steps": 2,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 8,
                    "learning_rate": 1e-2,
                    "logging_steps": 1,
                    "save_steps": 100,
                },
            },
        ],
    }


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_moves_the_sft_adapter_and_logs_rewards(write_recipe, tmp_path, tiny_model_path, algorithm):
    path = write_recipe(_recipe(algorithm))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / f"rl-{algorithm}"
    sft = load_file(run / "sft" / "adapter" / "adapter_model.safetensors")
    rl = load_file(run / "rl" / "adapter" / "adapter_model.safetensors")
    assert sft.keys() == rl.keys()  # the RL adapter continues the SFT adapter, same modules
    moved = sum(float((rl[k] - sft[k]).abs().sum()) for k in sft)
    assert moved > 0
    done = json.loads((run / "rl" / "COMPLETE").read_text())
    assert done["init_adapter"].endswith("sft/adapter")
    logs = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*logs)
    assert "rewards/completion_length/mean" in keys
    assert "rewards/math_accuracy/mean" in keys
    assert "math_accuracy/parse_failure_rate" in keys
    samples = (run / "rl" / "samples.jsonl").read_text().splitlines()
    assert samples and "completion_length" in json.loads(samples[0])["rewards"]


def test_bad_reward_specs_exit_2_before_any_model_loads(write_recipe, tmp_path, capsys):
    recipe = _recipe("grpo")
    recipe["stages"][1]["rewards"] = [{"name": "math_acuracy"}]
    assert main(["train", str(write_recipe(recipe))]) == 2
    err = capsys.readouterr().err
    assert "stages[1].rewards[0]" in err and "math_accuracy" in err
    recipe["stages"][1]["rewards"] = [{"path": "./no_such_file.py:fn"}]
    assert main(["train", str(write_recipe(recipe))]) == 2
    assert "stages[1].rewards[0]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_prompt_filter_drops_prompts_whose_rewards_do_not_vary(write_recipe, tmp_path, tiny_model_path):
    # 5 prompts whose reward is constant (must be dropped) and 3 whose samples all score apart (kept).
    data = tmp_path / "prompts"
    data.mkdir()
    rows = [{"prompt": f"Repeat after me [same] {i}"} for i in range(5)]
    rows += [{"prompt": f"Say anything [new] {i}"} for i in range(3)]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe("grpo")
    recipe["data"] = {"source": str(data)}
    recipe["stages"] = [recipe["stages"][1]]
    recipe["stages"][0]["rewards"] = [{"path": f"{HASH_PLUGIN}:text_hash_unless_same"}]
    recipe["stages"][0]["prompt_filter"] = {"candidates": 8, "samples": 2, "batch_size": 16}
    assert main(["train", str(write_recipe(recipe))]) == 0
    stage = tmp_path / "runs" / "rl-grpo" / "rl"
    done = json.loads((stage / "COMPLETE").read_text())
    stats = done["prompt_filter"]
    assert stats["candidates"] == 8 and stats["kept"] == 3 and not stats.get("fallback"), stats
    assert done["train_rows"] == 3
    trained_on = {json.loads(line)["prompt"] for line in (stage / "samples.jsonl").read_text().splitlines()}
    assert trained_on and all("[new]" in prompt for prompt in trained_on), trained_on


def test_hold_out_draws_prompts_never_trained_on():
    from datasets import Dataset

    from ntp_rl.errors import UserError
    from ntp_rl.stages.rl import hold_out

    rows = Dataset.from_dict({"prompt": [f"q{i}" for i in range(10)]})
    train, held = hold_out(rows, 3, seed=42, where="stages[1] (rl)")
    assert len(held) == 3 and len(train) == 7
    assert not set(held["prompt"]) & set(train["prompt"])
    assert list(hold_out(rows, 3, seed=42, where="x")[1]["prompt"]) == list(held["prompt"])  # seeded
    assert list(hold_out(rows, 3, seed=7, where="x")[1]["prompt"]) != list(held["prompt"])
    with pytest.raises(
        UserError, match=r"stages\[1\] \(rl\): eval_examples is 10 but the training split has 10"
    ):
        hold_out(rows, 10, seed=42, where="stages[1] (rl)")
