"""kill -9 a GRPO run on tiny at seeded points, resume: the final adapter is bit-identical.

Checkpoints hold the adapter, optimizer, scheduler, the RNG states (which drive sampling of the
completions) and the data position; with one generation batch per step, nothing else carries over
between steps, so the resumed run samples the same completions and ends with the same weights,
*under the same numerical conditions*: the same machine, the same thread count and the same kind of
process. A CPU kernel may sum in a different order with another thread count, and the last bits then
differ in every weight. So all the runs compared here, the uninterrupted one included, are children
of one process with one OpenMP thread (tests/resume_helpers.py).

The test first checks that every rerun resumed from the newest complete checkpoint (the last one
from a checkpoint N > 0, as its `COMPLETE` results record) and that a checkpoint killed while being
written was skipped; only then that the adapters match. The kill points are drawn from a seed
printed with any failure; NTP_RL_KILL_SEED=<seed> replays them.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.resume_helpers import draw_kill_points, forked_runs, kill_resume_and_compare, kill_seed

GRPO_STEPS, GRPO_SAVE_STEPS = 8, 2
PLUGIN = str(REPO / "tests" / "plugins" / "length_reward.py") + ":completion_length"
RECIPE = {
    "run": {"name": "g"},
    "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 32, "num_test": 4}},
    "stages": [
        {
            "kind": "rl",
            "rewards": [{"path": PLUGIN}],
            "trainer": {
                "max_steps": GRPO_STEPS,
                "per_device_train_batch_size": 4,
                "num_generations": 2,
                "max_completion_length": 6,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": GRPO_SAVE_STEPS,
            },
        }
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path):
    return forked_runs(tmp_path_factory.getbasetemp())


def test_grpo_killed_three_times_resumes_to_the_same_adapter(runs, tmp_path):
    seed = kill_seed()
    points = draw_kill_points(seed, "rl", GRPO_STEPS, GRPO_SAVE_STEPS, count=3)
    replay = f"NTP_RL_KILL_SEED={seed}: rl kills {[str(p) for p in points]}"
    print(replay)
    report = kill_resume_and_compare(runs, RECIPE, tmp_path, "rl", points, replay)
    print("\n".join(report[1:]))
