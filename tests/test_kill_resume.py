"""kill -9 SFT and reward-model runs on tiny at seeded points, resume: the final adapter is bit-identical.

The trainer's checkpoints hold the adapter, optimizer, scheduler, RNG and data position, so a run
killed any number of times and resumed each time ends with exactly the weights of a run that was
never interrupted, *under the same numerical conditions*: the same machine, the same thread count
and the same kind of process. A CPU kernel may sum in a different order with another thread count,
and the last bits then differ in every weight. So all the runs compared bit for bit here, the
uninterrupted one included, are children of one process with one OpenMP thread
(tests/resume_helpers.py). Under another kernel (more threads, another GEMM code path) a resume
matches only to rounding: within `KERNEL_TOLERANCE`, which the last test checks.

Each kill test first checks that every rerun resumed from the newest complete checkpoint (the last
one from a checkpoint N > 0, as its `COMPLETE` results record) and that a checkpoint killed while
being written was skipped; only then that the adapters match. The kill points are drawn from a seed
printed with any failure; NTP_RL_KILL_SEED=<seed> replays them.
"""

from __future__ import annotations

import json
import random

import pytest
from safetensors.torch import load_file

from tests.resume_helpers import (
    draw_kill_points,
    forked_runs,
    kill_resume_and_compare,
    kill_seed,
    resumed_step,
    start_reference,
    truncated_copy,
    write_recipe,
)

SFT_STEPS, SFT_SAVE_STEPS = 12, 2
SFT_RECIPE = {
    "run": {"name": "k"},
    "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 64, "num_test": 4}},
    "stages": [
        {
            "kind": "sft",
            "eval_examples": 0,
            "trainer": {
                "max_steps": SFT_STEPS,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "save_steps": SFT_SAVE_STEPS,
                "warmup_steps": 2,
                "learning_rate": 1e-3,
            },
        }
    ],
}

REWARD_MODEL_STEPS, REWARD_MODEL_SAVE_STEPS = 8, 2
WORDS = "apple river stone cloud green paper light table music window garden silver".split()

# Another kernel: two threads, and MKL's reproducibility code path switched (MKL_CBWR), so that the
# sums really change order even on CPUs where the thread count alone changes none.
OTHER_KERNEL = {"threads": 2, "env": {"MKL_CBWR": "COMPATIBLE"}}
# Another summation order changes each result by float32 rounding (1.2e-7 relative); through a few
# Adam steps that stays orders of magnitude below this. A resume that lost or repeated steps moves
# the weights by about a step's update, which the test checks is larger than this in every tensor.
KERNEL_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path):
    return forked_runs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def sft_reference(runs, tmp_path_factory):
    """The uninterrupted SFT run, started at first use; it runs beside the killed ones."""
    root = tmp_path_factory.mktemp("sft-reference")
    return start_reference(runs, write_recipe(SFT_RECIPE, root), root / "straight")


def test_sft_killed_four_times_resumes_to_the_same_adapter(runs, sft_reference, tmp_path):
    seed = kill_seed()
    points = draw_kill_points(seed, "sft", SFT_STEPS, SFT_SAVE_STEPS, count=4)
    replay = f"NTP_RL_KILL_SEED={seed}: sft kills {[str(p) for p in points]}"
    print(replay)
    report = kill_resume_and_compare(runs, SFT_RECIPE, tmp_path, "sft", points, replay, sft_reference)
    print("\n".join(report[1:]))


def _preference_rows(count: int, seed: int) -> list[dict[str, str]]:
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


def test_reward_model_killed_three_times_resumes_to_the_same_adapter(runs, tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    for split, rows in (("train", _preference_rows(32, seed=1)), ("test", _preference_rows(4, seed=2))):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "run": {"name": "rm"},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"source": str(data)},
        "stages": [
            {
                "kind": "reward_model",
                "eval_examples": 0,
                "trainer": {
                    "max_steps": REWARD_MODEL_STEPS,
                    "per_device_train_batch_size": 4,
                    "learning_rate": 5e-3,
                    "warmup_steps": 0,
                    "logging_steps": 1,
                    "save_steps": REWARD_MODEL_SAVE_STEPS,
                },
            }
        ],
    }
    seed = kill_seed()
    points = draw_kill_points(seed, "reward_model", REWARD_MODEL_STEPS, REWARD_MODEL_SAVE_STEPS, count=3)
    replay = f"NTP_RL_KILL_SEED={seed}: reward_model kills {[str(p) for p in points]}"
    print(replay)
    report = kill_resume_and_compare(runs, recipe, tmp_path, "reward_model", points, replay)
    print("\n".join(report[1:]))


def test_sft_resumed_on_another_kernel_matches_within_tolerance(runs, sft_reference, tmp_path):
    straight_dir = sft_reference.stage_dir("k", "sft")
    resume_at = SFT_STEPS - 2 * SFT_SAVE_STEPS
    stage_dir = truncated_copy(straight_dir.parent, "sft", resume_at, tmp_path / "other" / "k")
    log = tmp_path / "other.log"
    pid = runs.start(["train", sft_reference.recipe, "--output-dir", tmp_path / "other"], log, **OTHER_KERNEL)
    assert runs.wait(pid) == 0, log.read_text()[-3000:]
    assert resumed_step(json.loads((stage_dir / "COMPLETE").read_text())) == resume_at

    straight = load_file(straight_dir / "adapter" / "adapter_model.safetensors")
    other = load_file(stage_dir / "adapter" / "adapter_model.safetensors")
    one_save_earlier = load_file(
        straight_dir
        / "checkpoints"
        / f"checkpoint-{SFT_STEPS - SFT_SAVE_STEPS}"
        / "adapter_model.safetensors"
    )
    # The tolerance must stay well below what the last saved steps changed (the schedule's smallest
    # steps), or a resume from the wrong checkpoint would pass it.
    last_steps = min(float((straight[n] - one_save_earlier[n]).abs().max()) for n in straight)
    assert 4 * KERNEL_TOLERANCE < last_steps, f"the last steps moved some tensor only {last_steps:.1e}"
    assert sorted(other) == sorted(straight)
    worst = max(float((straight[n] - other[n]).abs().max()) for n in straight)
    print(f"resumed on another kernel ({OTHER_KERNEL}): largest weight difference {worst:.1e}")
    assert worst <= KERNEL_TOLERANCE, f"another kernel's resume differs by up to {worst:.1e}"
