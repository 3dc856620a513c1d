"""Reward faults in real (short) GRPO runs on tiny: raise, NaN, hang past the timeout, pathological LaTeX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ntp_rl.cli import main
from tests.conftest import REPO

PLUGINS = str(REPO / "tests" / "plugins" / "faulty_rewards.py")


def _recipe(reward: dict) -> dict:
    return {
        "run": {"name": "faults"},
        "model": {"name_or_path": "tiny"},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {
                "kind": "rl",
                "rewards": [{"name": "format", "weight": 1.0}, reward],
                "trainer": {
                    "max_steps": 1,
                    "per_device_train_batch_size": 4,
                    "num_generations": 2,
                    "max_completion_length": 6,
                    "logging_steps": 1,
                    "save_steps": 100,
                },
            },
        ],
    }


@pytest.mark.parametrize(
    ("attr", "extra", "fragment"),
    [
        ("raises", {}, "reward 'raises' raised ZeroDivisionError: division by zero in my reward on sample 0"),
        ("returns_nan", {}, "reward 'returns_nan' returned nan for sample 0 of"),
        ("hangs", {"timeout_seconds": 2}, "reward 'hangs' took longer than its timeout of 2 s"),
    ],
)
def test_a_faulty_reward_stops_the_run_naming_it(
    write_recipe, tmp_path, tiny_model_path, capsys, attr, extra, fragment
):
    path = write_recipe(_recipe({"path": f"{PLUGINS}:{attr}", **extra}))
    started = time.time()
    assert main(["train", str(path)]) == 1
    assert time.time() - started < 120
    err = capsys.readouterr().err
    assert fragment in err, err[-2000:]
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "runs" / "faults" / "manifest.json").read_text())
    assert manifest["stages"]["rl"]["status"] == "failed"


@pytest.mark.parametrize("attr", ["raises", "returns_nan", "hangs"])
def test_on_error_skip_scores_none_and_counts(write_recipe, tmp_path, tiny_model_path, attr):
    path = write_recipe(_recipe({"path": f"{PLUGINS}:{attr}", "on_error": "skip", "timeout_seconds": 2}))
    assert main(["train", str(path)]) == 0
    logs = [
        json.loads(line)
        for line in (tmp_path / "runs" / "faults" / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(line.get(f"{attr}/error_rate") == 1.0 for line in logs), logs


def test_pathological_latex_finishes(write_recipe, tmp_path, tiny_model_path):
    path = write_recipe(_recipe({"path": f"{PLUGINS}:pathological_latex"}))
    started = time.time()
    assert main(["train", str(path)]) == 0
    assert time.time() - started < 120
    logs = [
        json.loads(line)
        for line in (tmp_path / "runs" / "faults" / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("rewards/pathological_latex/mean" in line for line in logs)


def test_a_reward_hung_in_torch_exits_1_not_abort(write_recipe, tmp_path, tiny_model_path):
    """The timed-out call keeps running in native code; the process still exits 1 with its message."""
    path = write_recipe(_recipe({"path": f"{PLUGINS}:hangs_computing", "timeout_seconds": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ntp_rl", "train", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # 134 (SIGABRT at interpreter shutdown) before
    assert "reward 'hangs_computing' took longer than its timeout of 2 s" in proc.stderr
    assert "terminate called" not in proc.stderr
