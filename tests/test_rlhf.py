"""RLHF on the tiny model: a reward model learns an easy rule, then scores GRPO completions as a reward.

The rule (chosen responses end with "Thanks!") is one a random 2-layer model learns in a few steps at
a high learning rate, so the test shows the stage trains and measures held-out accuracy, not that a
real reward model is good.
"""

from __future__ import annotations

import json
import pickle
import random
import statistics

import pytest
import yaml
from ntp_rl.rewards import resolve_reward
from ntp_rl.rewards.learned import LearnedReward
from ntp_rl.rewards.registry import RewardSpec
from safetensors.torch import load_file

from ntp_rl.cli import main
from ntp_rl.stages.policy_pairs import policy_pairs_from_samples
from tests.conftest import REPO

WORDS = "apple river stone cloud green paper light table music window garden silver".split()


def _pairs(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def words() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))

    return [
        {
            "prompt": f"Say something about {rng.choice(WORDS)}.",
            "chosen": f"{words()} Thanks!",
            "rejected": words(),
        }
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def reward_model_run(tmp_path_factory, tiny_model_path):
    """One reward_model stage on tiny, trained once for this module: (run folder, held-out pairs)."""
    root = tmp_path_factory.mktemp("rlhf")
    data = root / "pairs"
    data.mkdir()
    held_out = _pairs(32, seed=2)
    for split, rows in (("train", _pairs(64, seed=1)), ("test", held_out)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "run": {"name": "rm", "output_dir": str(root / "runs")},
        "model": {"name_or_path": "tiny", "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}},
        "data": {"source": str(data)},
        "stages": [
            {
                "kind": "reward_model",
                "eval_examples": 32,
                "trainer": {
                    "max_steps": 20,
                    "per_device_train_batch_size": 8,
                    "learning_rate": 5e-3,
                    "warmup_steps": 0,
                    "logging_steps": 5,
                },
            }
        ],
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    return root / "runs" / "rm", held_out


def test_reward_model_beats_chance_on_held_out_pairs(reward_model_run):
    run, _ = reward_model_run
    done = json.loads((run / "reward_model" / "COMPLETE").read_text())
    assert done["heldout_before"]["pairs"] == 32
    assert done["heldout_pairwise_accuracy"] >= 0.8  # chance is 0.5
    assert done["heldout_mean_margin"] > done["heldout_before"]["mean_margin"] + 1.0
    logs = [json.loads(line) for line in (run / "reward_model" / "metrics.jsonl").read_text().splitlines()]
    phases = {r["phase"]: r for r in logs if "phase" in r}
    assert phases["after"]["heldout/pairwise_accuracy"] == done["heldout_pairwise_accuracy"]
    assert phases["before"]["step"] == 0 and phases["after"]["step"] == 20
    assert any("accuracy" in r and "loss" in r for r in logs)  # TRL's training-batch accuracy
    adapter = run / "reward_model" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("score" in key for key in weights) and any("lora_A" in key for key in weights)


def test_learned_reward_scores_pickles_and_normalises(reward_model_run):
    run, held_out = reward_model_run
    reward = resolve_reward(RewardSpec(reward_model=str(run / "reward_model")), where="rewards[0]")
    assert reward.__name__ == "reward_model"
    prompts = [[{"role": "user", "content": row["prompt"]}] for row in held_out for _ in range(2)]
    completions = [
        [{"role": "assistant", "content": row[k]}] for row in held_out for k in ("chosen", "rejected")
    ]
    scores = reward(completions=completions, prompts=prompts)
    wins = [scores[i] > scores[i + 1] for i in range(0, len(scores), 2)]
    assert sum(wins) / len(wins) >= 0.8
    # Plain-text prompts and completions are the same conversation.
    plain = reward(completions=[held_out[0]["chosen"]], prompts=[held_out[0]["prompt"]])
    assert plain[0] == pytest.approx(scores[0], abs=1e-4)

    inner = reward.fn
    assert isinstance(inner, LearnedReward) and inner._loaded is not None
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.fn._loaded is None  # the weights are not pickled; they load again on first use
    assert copy(completions=completions[:4], prompts=prompts[:4]) == pytest.approx(scores[:4], abs=1e-4)

    batch = LearnedReward(inner.model, normalize="batch")(completions=completions, prompts=prompts)
    assert sum(batch) / len(batch) == pytest.approx(0.0, abs=1e-6)
    assert sum(b * b for b in batch) / len(batch) == pytest.approx(1.0, abs=1e-4)

    # Per prompt (GRPO's group): centred on the group's mean, then the dead zone shrinks toward 0.
    logged = {}
    group = LearnedReward(inner.model, normalize="group")(
        completions=completions, prompts=prompts, log_metric=logged.__setitem__
    )
    mean = sum(scores) / len(scores)
    assert logged == {
        "reward_model/raw_mean": pytest.approx(mean, abs=1e-4),
        "reward_model/raw_std": pytest.approx(statistics.stdev(scores), abs=1e-4),
    }
    for i, prompt in enumerate(prompts):
        same = [scores[j] for j, other in enumerate(prompts) if other == prompt]
        assert group[i] == pytest.approx(scores[i] - sum(same) / len(same), abs=1e-4)
    zone = abs(group[0]) + 0.01  # just wider than the first completion's distance from its group's mean
    shrunk = LearnedReward(inner.model, normalize="group", dead_zone=zone)(
        completions=completions, prompts=prompts
    )
    assert shrunk[0] == 0.0 and any(s != 0.0 for s in shrunk)
    assert all(
        abs(s) == pytest.approx(max(abs(g) - zone, 0.0), abs=1e-4) for s, g in zip(shrunk, group, strict=True)
    )


def test_group_centring_groups_by_prompt_and_soft_thresholds():
    from ntp_rl.rewards.learned import group_centred

    values = [1.0, 3.0, 10.0, 0.0, 5.0, 6.0]
    prompts = ["a", "a", [{"role": "user", "content": "b"}], "c", [{"role": "user", "content": "b"}], "c"]
    assert group_centred(values, prompts) == [-1.0, 1.0, 2.5, -3.0, -2.5, 3.0]
    assert group_centred(values, prompts, dead_zone=2.0) == [0.0, 0.0, 0.5, -1.0, -0.5, 1.0]


def test_reward_model_as_grpo_reward(reward_model_run, write_recipe, tmp_path):
    run, _ = reward_model_run
    recipe = {
        "run": {"name": "rlhf"},
        "model": {"name_or_path": "tiny", "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {
                "kind": "rl",
                "rewards": [
                    {"reward_model": str(run / "reward_model")},
                    {"name": "math_accuracy", "gold": True},
                ],
                "eval_examples": 2,  # held-out prompts, sampled before step 1 and every step (2 // 4 -> 1)
                "trainer": {
                    "max_steps": 2,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 8,
                    "learning_rate": 1e-2,
                    "logging_steps": 1,
                    "save_steps": 100,
                },
            }
        ],
    }
    assert main(["train", str(write_recipe(recipe))]) == 0
    stage = tmp_path / "runs" / "rlhf" / "rl"
    logs = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "rewards/reward_model/mean" in r]
    assert len(steps) == 2
    assert all("rewards/math_accuracy/mean" in r and "kl" in r for r in steps)  # gold beside proxy; beta > 0
    assert any(r["rewards/reward_model/std"] > 0 for r in steps)  # the reward model tells completions apart
    done = json.loads((stage / "COMPLETE").read_text())
    assert done["reward_names"] == ["reward_model", "math_accuracy"]
    assert done["train_rows"] == 6  # 8 training prompts, 2 held out
    result = done["overoptimisation"]
    heldout = result.pop("heldout")
    assert result == {
        "detected": False,
        "since_step": None,
        "proxy": "reward_model",
        "gold": "math_accuracy",
        "window": 10,
    }
    assert heldout["step"] == [0, 1, 2] and heldout["samples"] == 2 * 4
    assert len(heldout["gold"]) == len(heldout["proxy"]) == 3 and heldout["detected"] is False
    evals = [r for r in logs if "eval_rewards/math_accuracy/mean" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and all(
        "eval_rewards/reward_model/mean" in r for r in evals
    )
    manifest = json.loads((tmp_path / "runs" / "rlhf" / "manifest.json").read_text())
    assert manifest["config"]["stages"][0]["rewards"][1]["weight"] == 0.0  # gold: logged, not trained on


def test_rlhf_arithmetic_recipe_smoke(tmp_path, tiny_model_path):
    recipe = REPO / "recipes" / "rlhf_arithmetic.yaml"
    assert main(["train", str(recipe), "--smoke", "--output-dir", str(tmp_path)]) == 0
    run = tmp_path / "rlhf-arithmetic-smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["complete"] * 4
    rm = load_file(run / "reward_model" / "adapter" / "adapter_model.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in rm.items() if "lora_B" in k)  # B starts at zero
    report = json.loads((run / "eval" / "report.json").read_text())
    # The eval scores every checkpoint with the run's reward model too, beside the gold.
    assert {"reward_model", "math_accuracy"} <= set(report["summary"]["rl"]["rewards"]["greedy"])
    assert [name for name, _ in report["summary"].items()] == ["base", "sft", "rl"]


def test_rlhf_hh_recipe_smoke_offline_on_hh_style_data(tmp_path, tiny_model_path):
    hh_style = REPO / "tests" / "data" / "hh_style"
    argv = ["train", str(REPO / "recipes" / "rlhf_hh.yaml"), f"data.source={hh_style}", "--smoke"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "rlhf-hh-smoke" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert [s["status"] for s in stages.values()] == ["complete"] * 3
    assert stages["reward_model"]["results"]["heldout_before"]["pairs"] == 4  # the hand-written test pairs
    assert stages["rl"]["results"]["reward_names"] == ["reward_model"]


def test_rewards_check_reads_the_reward_model_stage_of_the_run(
    write_recipe, tmp_path, tiny_model_path, capsys
):
    recipe = {
        "run": {"name": "check"},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {
                "kind": "reward_model",
                "data": {"source": "synthetic:preferences", "arithmetic": {"num_train": 8, "num_test": 4}},
                "eval_examples": 0,
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 2},
            },
            {
                "kind": "rl",
                "rewards": [{"reward_model": "reward_model"}, {"name": "math_accuracy", "gold": True}],
            },
        ],
    }
    path = write_recipe(recipe)
    check = ["rewards", "check", str(path), "--model", "tiny", "--num-prompts", "2", "--samples", "2"]
    assert main(check) == 2  # the reward model has not been trained yet
    assert "stages[1].rewards[0].reward_model: the reward_model stage 'reward_model' has not run" in (
        capsys.readouterr().err
    )
    assert main(["train", str(path), "--stage", "reward_model"]) == 0
    report = tmp_path / "check.json"
    assert main([*check, "--json", str(report)]) == 0
    names = [entry["name"] for entry in json.loads(report.read_text())["rewards"]]
    assert names == ["reward_model", "math_accuracy"]


def test_exported_reward_model_scores_the_same(reward_model_run, tmp_path):
    run, held_out = reward_model_run
    out = tmp_path / "exported-rm"
    assert main(["export", str(run / "reward_model"), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"
    ]
    prompts = [row["prompt"] for row in held_out[:4]]
    completions = [row["chosen"] for row in held_out[:4]]
    adapter_scores = resolve_reward(RewardSpec(reward_model=str(run / "reward_model")))(
        completions=completions, prompts=prompts
    )
    merged_scores = resolve_reward(RewardSpec(reward_model=str(out)))(
        completions=completions, prompts=prompts
    )
    assert merged_scores == pytest.approx(adapter_scores, abs=1e-3)


def test_reward_model_from_the_sft_policy(write_recipe, tmp_path, tiny_model_path):
    """`init_from: sft`: the SFT adapter is merged into the base once; the reward model trains over it."""
    from safetensors.torch import load_file as load_tensors

    pairs = {"source": "synthetic:preferences", "arithmetic": {"num_train": 16, "num_test": 8}}
    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    recipe = {
        "run": {"name": "rm-from-sft"},
        "model": {"name_or_path": "tiny", "lora": lora},
        "data": pairs,  # an sft stage on preference data trains on the chosen replies
        "stages": [
            {"kind": "sft", "eval_examples": 0, "trainer": {"max_steps": 2, "learning_rate": 1e-2}},
            {
                "kind": "reward_model",
                "init_from": "sft",
                "eval_examples": 8,
                "trainer": {"max_steps": 2, "per_device_train_batch_size": 4},
            },
        ],
    }
    path = write_recipe(recipe)
    assert main(["train", str(path)]) == 0
    stage = tmp_path / "runs" / "rm-from-sft" / "reward_model"
    init_base = stage / "init_base"
    done = json.loads((stage / "COMPLETE").read_text())
    assert done["init_base"] == str(init_base.resolve())
    adapter_config = json.loads((stage / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(init_base.resolve())
    # The merged base differs from tiny where the SFT adapter trained (B starts at zero).
    tiny = load_tensors(f"{tiny_model_path}/model.safetensors")
    merged = load_tensors(str(init_base / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged[name].shape == tiny[name].shape and not (merged[name] == tiny[name]).all()
    # It loads through the adapter like any reward model, and scores as the stage measured it.
    reward = resolve_reward(RewardSpec(reward_model=str(stage)))
    scores = reward(completions=["1 + 1 = 2.\nAnswer: 2", "Answer: 3"], prompts=["What is 1 + 1?"] * 2)
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_reward_model_init_from_must_be_an_earlier_sft_stage(write_recipe, capsys):
    recipe = {
        "run": {"name": "bad-init"},
        "model": {"name_or_path": "tiny"},
        "data": {"source": "synthetic:preferences"},
        "stages": [{"kind": "reward_model", "init_from": "sft"}, {"kind": "sft"}],
    }
    assert main(["train", str(write_recipe(recipe))]) == 2
    err = capsys.readouterr().err
    assert "stages[0].init_from: 'sft' is not an earlier sft stage; earlier sft stages: none" in err


def test_reward_model_adds_pairs_of_the_policys_own_samples(write_recipe, tmp_path, tiny_model_path):
    """`policy_pairs`: the SFT policy's samples, ranked by a gold reward, become extra training pairs."""
    length = str(REPO / "tests" / "plugins" / "length_reward.py") + ":completion_length"
    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    recipe = {
        "run": {"name": "rm-policy-pairs"},
        "model": {"name_or_path": "tiny", "lora": lora},
        "data": {"source": "synthetic:preferences", "arithmetic": {"num_train": 12, "num_test": 6}},
        "stages": [
            {"kind": "sft", "eval_examples": 0, "trainer": {"max_steps": 1}},
            {
                "kind": "reward_model",
                "eval_examples": 6,
                "policy_pairs": {
                    "policy": "sft",
                    "gold": {"path": length},  # varies on a random model: the longer sample is better
                    "prompts": 5,
                    "samples": 3,
                    "max_new_tokens": 6,
                    "max_pairs_per_prompt": 2,
                },
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 4},
            },
        ],
    }
    assert main(["train", str(write_recipe(recipe))]) == 0
    done = json.loads((tmp_path / "runs" / "rm-policy-pairs" / "reward_model" / "COMPLETE").read_text())
    stats = done["policy_pairs"]
    assert stats["prompts"] == 5 and 1 <= stats["prompts_with_a_difference"] <= 5
    assert stats["prompts_with_a_difference"] <= stats["pairs"] <= 2 * stats["prompts_with_a_difference"]
    assert done["train_rows"] == 12 + stats["pairs"]
    # What the pairs were made of is kept: each prompt's samples and their gold scores.
    saved = tmp_path / "runs" / "rm-policy-pairs" / "reward_model" / "policy_samples.jsonl"
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(records) == 5 and all(len(r["completions"]) == len(r["scores"]) == 3 for r in records)
    pairs, again = policy_pairs_from_samples(records, 2, seed=42)
    assert (len(pairs), again["prompts_with_a_difference"]) == (
        stats["pairs"],
        stats["prompts_with_a_difference"],
    )
    assert stats["noise"] == "none" and stats["realised_disagreement"] in (0.0, None)


def test_policy_pairs_are_read_back_when_the_stage_resumes(tmp_path, monkeypatch):
    """A resumed stage reuses the samples it wrote instead of sampling the policy again."""
    from types import SimpleNamespace

    from ntp_rl.stages import policy_pairs

    records = [
        {"prompt": "What is 1 + 1?", "completions": ["2", "3", "2"], "scores": [1.0, 0.0, 1.0]},
        {"prompt": "What is 2 + 2?", "completions": ["4", "4"], "scores": [1.0, 1.0]},
    ]
    (tmp_path / "policy_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def sample_again(*args):
        raise AssertionError("sampled again")

    monkeypatch.setattr(policy_pairs, "_sample_and_score", sample_again)
    ctx = SimpleNamespace(stage_dir=tmp_path, is_main_process=True)
    assert policy_pairs.sample_policy(ctx, None, None) == {"train": records}
    pairs, stats = policy_pairs_from_samples(records, 4, seed=0)
    assert stats["prompts_with_a_difference"] == 1 and [
        (p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs
    ] == [("2", "3")]


def test_policy_pairs_need_an_earlier_sft_stage_and_a_usable_gold(write_recipe, tmp_path, capsys):
    recipe = {
        "run": {"name": "bad-pairs"},
        "model": {"name_or_path": "tiny"},
        "data": {"source": "synthetic:preferences", "arithmetic": {"num_train": 4, "num_test": 2}},
        "stages": [{"kind": "reward_model", "policy_pairs": {"policy": "sft"}}],
    }
    assert main(["train", str(write_recipe(recipe))]) == 2
    assert "stages[0].policy_pairs.policy: 'sft' is not an earlier sft stage" in capsys.readouterr().err
    recipe["stages"] = [
        {"kind": "sft", "trainer": {"max_steps": 1}},
        {"kind": "reward_model", "policy_pairs": {"policy": "sft", "gold": {"name": "no_such_reward"}}},
    ]
    assert main(["train", str(write_recipe(recipe))]) == 2  # checked when the recipe loads
    err = capsys.readouterr().err
    assert "stages[1].policy_pairs.gold" in err and "no_such_reward" in err
    assert not (tmp_path / "runs" / "bad-pairs").exists()  # before any stage ran
