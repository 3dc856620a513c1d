"""kill -9 at random points of an SFT run on tiny, then resume: the final adapter is bit-identical.

The trainer's checkpoints hold the adapter, optimizer, scheduler, RNG and data position, so on CPU
a run killed any number of times and resumed each time ends with exactly the weights of a run that
was never interrupted. A kill while a checkpoint is being written leaves it incomplete; the resume
skips it (renamed aside, kept). The kill points are random; set NTP_RL_KILL_SEED to replay a failure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import yaml
from safetensors.torch import load_file

from ntp_rl.cli import main

MAX_STEPS = 8
RECIPE = {
    "run": {"name": "k"},
    "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 64, "num_test": 4}},
    "stages": [
        {
            "kind": "sft",
            "eval_examples": 0,
            "trainer": {
                "max_steps": MAX_STEPS,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "save_steps": 2,
                "warmup_steps": 2,
                "learning_rate": 1e-3,
            },
        }
    ],
}


def _kill_at_step(path, output_dir, stage_dir, step: int, fraction: float) -> None:
    """Start a run, wait until step `step` is logged and `fraction` of a step more, then SIGKILL it.

    The extra wait is a fraction of the measured step time, so the kill lands somewhere in the next
    step (its forward, backward, or a checkpoint being written), whatever the machine's speed.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ntp_rl", "train", str(path), "--output-dir", str(output_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = stage_dir / "metrics.jsonl"
    start_lines = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    deadline = time.time() + 180
    step_seconds = 0.2
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = (
                [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
            )
            new = lines[start_lines:]
            if new and new[-1].get("step", 0) >= step:
                if len(new) >= 2 and "time" in new[-1] and "time" in new[-2]:
                    step_seconds = new[-1]["time"] - new[-2]["time"]
                break
            time.sleep(0.02)
        time.sleep(fraction * step_seconds)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_model_path):
    seed = int(os.environ.get("NTP_RL_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # At least two steps remain after the last kill point, so the kill lands before the run ends.
    kills = sorted(rng.sample(range(1, MAX_STEPS - 1), 2))
    fractions = [rng.random() for _ in kills]
    replay = f"NTP_RL_KILL_SEED={seed} (kills in the step after {kills}, at fractions {fractions})"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))

    assert main(["train", str(path), "--output-dir", str(tmp_path / "straight")]) == 0
    straight = load_file(tmp_path / "straight" / "k" / "sft" / "adapter" / "adapter_model.safetensors")

    killed_root = tmp_path / "killed"
    stage = killed_root / "k" / "sft"
    for step, fraction in zip(kills, fractions, strict=True):
        _kill_at_step(path, killed_root, stage, step, fraction)
    assert not (stage / "COMPLETE").exists(), replay
    assert main(["train", str(path), "--output-dir", str(killed_root)]) == 0, replay
    resumed = load_file(stage / "adapter" / "adapter_model.safetensors")

    results = json.loads((stage / "COMPLETE").read_text())
    assert results["global_step"] == MAX_STEPS, replay
    assert sorted(resumed) == sorted(straight), replay
    different = [name for name in straight if not bool((straight[name] == resumed[name]).all())]
    assert different == [], f"{replay}: resumed from {results['resumed_from']}, differs in {different}"
