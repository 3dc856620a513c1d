"""kill -9 a GRPO run on tiny right after a checkpoint, resume: the final adapter matches an uninterrupted run.

Checkpoints hold the adapter, optimizer, scheduler, the RNG states (which drive sampling of the
completions) and the data position; with one generation batch per step, nothing else carries over
between steps, so the resumed run samples the same completions and ends with the same weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml
from safetensors.torch import load_file

from ntp_rl.cli import main
from tests.conftest import REPO

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
                "max_steps": 4,
                "per_device_train_batch_size": 4,
                "num_generations": 2,
                "max_completion_length": 6,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 2,
            },
        }
    ],
}


def test_grpo_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path, tiny_model_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert main(["train", str(path), "--output-dir", str(tmp_path / "straight")]) == 0
    straight = load_file(tmp_path / "straight" / "g" / "rl" / "adapter" / "adapter_model.safetensors")

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ntp_rl", "train", str(path), "--output-dir", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = out / "g" / "rl" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert state.exists(), "the run never reached its first checkpoint"
    assert not (out / "g" / "rl" / "COMPLETE").exists()

    assert main(["train", str(path), "--output-dir", str(out)]) == 0
    resumed = load_file(out / "g" / "rl" / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert (resumed[name] == straight[name]).all(), name
