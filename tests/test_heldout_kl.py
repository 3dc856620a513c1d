"""KL from the RL policy to the SFT policy at each held-out evaluation, with no KL penalty (beta 0).

TRL computes a KL only when it penalises one; the rl stage measures it on the held-out completions
of every evaluation for the over-optimisation curve (ntp_rl/stages/heldout_kl.py).
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ntp_rl.cli import main


def test_heldout_kl_to_the_sft_policy_with_beta_zero(write_recipe, tmp_path, tiny_model_path):
    """beta 0: TRL computes no KL; the stage measures it to the SFT policy at every held-out evaluation."""
    lora = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    recipe = {
        "run": {"name": "rlhf-kl"},
        "model": {"name_or_path": "tiny", "lora": lora},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 0,
                "trainer": {"max_steps": 2, "learning_rate": 1e-2, "per_device_train_batch_size": 2},
            },
            {
                "kind": "reward_model",
                "data": {"source": "synthetic:preferences", "arithmetic": {"num_train": 8, "num_test": 4}},
                "eval_examples": 0,
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 2},
            },
            {
                "kind": "rl",
                "rewards": [
                    {"reward_model": "reward_model"},  # one step of training: any proxy will do
                    {"name": "math_accuracy", "gold": True},
                ],
                "eval_examples": 2,
                "trainer": {
                    "beta": 0.0,
                    "max_steps": 2,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 8,
                    "learning_rate": 5e-2,
                    "save_steps": 100,
                },
            },
        ],
    }
    assert main(["train", str(write_recipe(recipe))]) == 0
    stage = tmp_path / "runs" / "rlhf-kl" / "rl"
    logs = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert not any("kl" in r for r in logs if "loss" in r and "eval_loss" not in r)  # no KL in training
    evals = [r for r in logs if "eval_kl" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    # At step 0 the policy is the SFT adapter: KL 0 to it (to the base it would not be, as SFT moved it).
    assert evals[0]["eval_kl"] == pytest.approx(0.0, abs=1e-5)
    assert evals[-1]["eval_kl"] > 1e-4  # two RL steps at a high learning rate moved it
    heldout = json.loads((stage / "COMPLETE").read_text())["overoptimisation"]["heldout"]
    assert heldout["kl"] == [r["eval_kl"] for r in evals] and heldout["kl_estimator"] == "k3"
    curve = heldout["curve"]
    assert [row["step"] for row in curve] == [0, 1, 2]
    assert curve[-1]["sqrt_kl"] == pytest.approx(evals[-1]["eval_kl"] ** 0.5)
    assert all(row["gold_interval"] is not None and row["proxy"] is not None for row in curve)
    # Every held-out completion of each evaluation, with its score under each reward: their means are
    # TRL's logged ones.
    rows = [json.loads(line) for line in (stage / "heldout_samples.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 1, 2]
    for logged in evals:
        at = [r for r in rows if r["step"] == logged["step"]]
        assert len(at) == 2 * 4 and len({r["prompt"] for r in at}) == 2  # 2 prompts x num_generations
        for name in ("reward_model", "math_accuracy"):
            mean = sum(r["rewards"][name] for r in at) / len(at)
            assert mean == pytest.approx(logged[f"eval_rewards/{name}/mean"], abs=1e-5)
    assert heldout["per_prompt_scores"] == {"gold": True, "proxy": True}  # the monitor had them
    # The frozen reference copy is not part of the trained adapter.
    saved = load_file(stage / "adapter" / "adapter_model.safetensors")
    assert saved and not any(".ref." in key for key in saved)


def test_heldout_rows_file_keeps_the_first_evaluation_of_a_step(tmp_path):
    """A resumed run evaluates again at its checkpoint's step: the rows written first stand, as in
    metrics.jsonl; a line cut short by an interruption is skipped when read back."""
    from types import SimpleNamespace

    from ntp_rl.evaluation.overoptimisation_curve import read_heldout_rows
    from ntp_rl.stages.heldout_kl import HeldoutKl, last_step_in

    path = tmp_path / "heldout_samples.jsonl"
    trainer = HeldoutKl.__new__(HeldoutKl)  # only the writer's state, no TRL trainer behind it
    trainer.heldout_samples_path = path
    trainer.is_world_process_zero = lambda: True

    def evaluation(step: int, score: float) -> None:
        trainer.state = SimpleNamespace(global_step=step)
        trainer.heldout_rows = [{"prompt": "p", "completion": "c", "rewards": {"gold": score}}] * 2
        trainer._write_heldout_rows()

    evaluation(0, 0.1)
    evaluation(4, 0.2)
    evaluation(4, 0.9)  # the resumed run's evaluation at checkpoint-4
    evaluation(8, 0.3)
    with path.open("a") as handle:
        handle.write('{"step": 12, "prompt": "p", "rew')  # interrupted mid-line
    assert last_step_in(path) == 8
    rows = read_heldout_rows(path, until_step=8)
    assert sorted(rows) == [0, 4, 8] and [r["rewards"]["gold"] for r in rows[4]] == [0.2, 0.2]
    assert sorted(read_heldout_rows(path, until_step=4)) == [0, 4]
    assert last_step_in(tmp_path / "missing.jsonl") == -1 and read_heldout_rows(tmp_path / "x", 4) == {}


def test_two_processes_keep_every_heldout_completion_once(tmp_path, tiny_model_path):
    """recipes/accelerate/cpu_2proc.yaml: each process samples and scores half the held-out prompts;
    rank 0 writes all of them, each prompt with its own completions' scores (gathered in one order)."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    recipe = {
        "run": {"name": "heldout-2p", "output_dir": str(tmp_path / "runs")},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 16, "num_test": 4}},
        "stages": [
            {
                "kind": "rl",
                # The prompt's own number as a reward: a completion's score says which prompt it was for.
                "rewards": [{"name": "math_accuracy"}, {"path": str(tmp_path / "answer.py:answer_value")}],
                "eval_examples": 4,
                "trainer": {
                    "max_steps": 1,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 4,
                    "save_steps": 100,
                },
            }
        ],
    }
    (tmp_path / "answer.py").write_text(
        "def answer_value(completions, answer, **kwargs):\n    return [float(a) for a in answer]\n"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"), "-m", "ntp_rl", "train", str(path)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = tmp_path / "runs" / "heldout-2p" / "rl"
    rows = [json.loads(line) for line in (stage / "heldout_samples.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "eval_rewards/answer_value/mean" in r]
    assert [r["step"] for r in evals] == [0, 1]
    for record in evals:
        at = [r for r in rows if r["step"] == record["step"]]
        assert len(at) == 4 * 4 and len({r["prompt"] for r in at}) == 4  # every prompt, 4 each, once
        by_prompt: dict[str, set] = {}
        for r in at:
            by_prompt.setdefault(r["prompt"], set()).add(r["rewards"]["answer_value"])
        assert all(len(values) == 1 for values in by_prompt.values()), by_prompt  # scores kept with prompts
        mean = sum(r["rewards"]["answer_value"] for r in at) / len(at)
        assert mean == pytest.approx(record["eval_rewards/answer_value/mean"])
