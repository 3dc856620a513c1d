"""Runs that go wrong while training: NaN/inf, Ctrl-C, a full disk, a checkpoint cut short."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml
from safetensors.torch import load_file

from ntp_rl.cli import main
from ntp_rl.errors import TrainingDiverged
from ntp_rl.stages.common import StopOnNonFinite, last_checkpoint
from tests.conftest import REPO

PLUGINS = REPO / "tests" / "plugins"

TINY_SFT = {
    "run": {"name": "r"},
    "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 64, "num_test": 4}},
    "stages": [
        {
            "kind": "sft",
            "eval_examples": 0,
            "trainer": {
                "max_steps": 12,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "save_steps": 1000,
                "warmup_steps": 0,
                "learning_rate": 1e-3,
            },
        }
    ],
}


def _recipe(tmp_path, **trainer):
    recipe = json.loads(json.dumps(TINY_SFT))
    recipe["run"]["output_dir"] = str(tmp_path / "runs")
    recipe["stages"][0]["trainer"].update(trainer)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _control():
    return SimpleNamespace(should_save=True, should_training_stop=False)


@pytest.mark.parametrize(
    ("logs", "fragment"),
    [({"loss": float("nan")}, "loss = nan"), ({"loss": 1.0, "grad_norm": float("inf")}, "grad_norm = inf")],
)
def test_non_finite_log_stops_without_saving(tmp_path, logs, fragment):
    guard, control = StopOnNonFinite("sft", tmp_path), _control()
    with pytest.raises(TrainingDiverged, match=f"stage sft: {fragment} at step 7; stopped without saving"):
        guard.on_log(None, SimpleNamespace(global_step=7), control, logs=logs)
    assert control.should_save is False and control.should_training_stop is True
    guard.on_log(None, SimpleNamespace(global_step=8), _control(), logs={"loss": 2.0, "grad_norm": 0.5})


def test_nan_weights_never_reach_a_checkpoint(tmp_path):
    import torch

    model = torch.nn.Linear(2, 2)
    guard, control = StopOnNonFinite("rl", tmp_path), _control()
    guard.on_step_end(None, SimpleNamespace(global_step=3), control, model=model)  # finite: no-op
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="a trainable weight is NaN/inf at step 3"):
        guard.on_step_end(None, SimpleNamespace(global_step=3), control, model=model)
    assert control.should_save is False


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_path, capsys):
    # lr 0 for the first step (warm-up), then 5e37: the weights blow up after checkpoint-2.
    path = _recipe(
        tmp_path,
        max_steps=6,
        save_steps=2,
        warmup_steps=2,
        lr_scheduler_type="constant_with_warmup",
        learning_rate=1e38,
    )
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "ntp-rl: training stopped: stage sft:" in err and "Traceback" not in err
    assert "the last good checkpoint is" in err and "checkpoint-2" in err
    stage = tmp_path / "runs" / "r" / "sft"
    assert sorted(p.name for p in (stage / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    weights = load_file(stage / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(bool(t.isfinite().all()) for t in weights.values())
    assert not (stage / "adapter").exists() and not (stage / "COMPLETE").exists()
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "failed"
    assert "TrainingDiverged" in manifest["stages"]["sft"]["error"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_model_path, signum):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's stop): finish the step, save, exit 130; resume."""
    path = _recipe(tmp_path, max_steps=20)
    stage = tmp_path / "runs" / "r" / "sft"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ntp_rl", "train", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    steps = 0
    while steps < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        metrics = stage / "metrics.jsonl"
        steps = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    assert steps >= 2 and proc.poll() is None, "training did not start in time"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"{signum.name}: stopping after this step" in err
    assert "interrupted; re-run the same command to resume" in err and "Traceback" not in err
    checkpoints = sorted((stage / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    step = int(checkpoints[0].name.split("-")[1])
    assert 2 <= step < 20
    assert last_checkpoint(stage) == str(checkpoints[0])  # complete: trainer state + adapter
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert (checkpoints[0] / "adapter_model.safetensors").is_file()
    assert not (stage / "COMPLETE").exists()
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "interrupted"
    assert manifest["trust_remote_code"] is False

    assert main(["train", str(path)]) == 0
    results = json.loads((stage / "COMPLETE").read_text())
    assert results["resumed_from"] == str(checkpoints[0])
    assert results["global_step"] == 20
    lines = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    trained = [line["step"] for line in lines if "loss" in line]
    assert trained == list(range(1, 21))  # every step once: nothing lost, nothing trained twice
    assert math.isfinite(results["train_loss"])


def _wait_for(condition, seconds: float, proc) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_second_ctrl_c_quits_at_once_without_a_checkpoint(tmp_path, tiny_model_path):
    """The first Ctrl-C asks for a save after the step; a second one, inside that step, quits now.

    The step is held open by a reward (tests/plugins/held_reward.py) that waits for a file the test
    never writes, so only the second signal can end the run before the step does.
    """
    gate = tmp_path / "gate"
    gate.mkdir()
    recipe = {
        "run": {"name": "r", "output_dir": str(tmp_path / "runs")},
        "model": TINY_SFT["model"],
        "data": {"arithmetic": {"num_train": 16, "num_test": 4}},
        "stages": [
            {
                "kind": "rl",
                "rewards": [{"path": f"{PLUGINS}/held_reward.py:held_reward"}],
                "trainer": {
                    "max_steps": 4,
                    "per_device_train_batch_size": 2,
                    "num_generations": 2,
                    "max_completion_length": 4,
                    "save_steps": 1000,
                },
            }
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NTP_RL_TEST_GATE": str(gate)}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ntp_rl", "train", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # Ctrl-C as at a terminal: a shell starts background jobs (`make test &`) with SIGINT
            # ignored, the child inherits that, and the second signal would then be ignored too.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        assert _wait_for((gate / "reached-0").exists, 180, proc), "the first step did not start in time"
        proc.send_signal(signal.SIGINT)
        assert _wait_for(lambda: "SIGINT: stopping after this step" in log.read_text(), 30, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)  # the step is still held open: only the second signal can end the run
    finally:
        (gate / "release").touch()
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted; re-run the same command to resume" in err and "Traceback" not in err
    stage = tmp_path / "runs" / "r" / "rl"
    assert not list(stage.glob("checkpoints/checkpoint-*"))  # no new checkpoint
    assert not (stage / "COMPLETE").exists()
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["stages"]["rl"]["status"] == "interrupted"


def test_full_disk_refuses_to_start(tmp_path, monkeypatch, capsys):
    import shutil

    from ntp_rl import pipeline

    monkeypatch.setattr(
        pipeline.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 10 << 20)
    )
    assert main(["train", str(_recipe(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "only 10 MiB free" in err and "needs at least 64 MiB" in err
    assert not (tmp_path / "runs").exists()


def test_incomplete_checkpoint_is_skipped_kept_and_reported(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        ckpt = folder / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_checkpoint(tmp_path) == str(folder / "checkpoint-2")
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "checkpoint-2"
    assert names[1].startswith("checkpoint-4.incomplete-") and names[2].startswith("checkpoint-6.incomplete-")
    assert "incomplete" in caplog.text
