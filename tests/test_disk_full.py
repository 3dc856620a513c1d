"""A disk that fills up while a checkpoint is written: exit 1 naming the disk, the checkpoint before it
intact, and the same command resumes from that one once there is room again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from safetensors.torch import load_file

from ntp_rl.cli import main
from ntp_rl.stages.common import last_checkpoint
from tests.conftest import REPO

RECIPE = {
    "run": {"name": "full"},
    "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 64, "num_test": 4}},
    "stages": [
        {
            "kind": "sft",
            "eval_examples": 0,
            "trainer": {
                "max_steps": 6,
                "save_steps": 2,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "warmup_steps": 0,
            },
        }
    ],
}


def test_disk_full_mid_checkpoint_exits_1_and_the_rerun_resumes(tmp_path, tiny_model_path):
    recipe = {**RECIPE, "run": {**RECIPE["run"], "output_dir": str(tmp_path / "runs")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import disk_full\n\ndisk_full.install()\n")
    python_path = [str(hook), str(REPO / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
        "NTP_RL_FULL_DISK_AT": "2",  # checkpoint-4: the second one
    }
    proc = subprocess.run(
        [sys.executable, "-m", "ntp_rl", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    stage = tmp_path / "runs" / "full" / "sft"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "ntp-rl: run stopped: stage sft: no space left on the disk holding" in proc.stderr
    assert str(tmp_path / "runs" / "full") in proc.stderr
    assert f"{stage / 'checkpoints' / 'checkpoint-2'}" in proc.stderr  # the checkpoint to resume from

    # The checkpoint before the failed one is whole; the failed one is not mistaken for it.
    checkpoints = stage / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(stage, is_main_process=False) == str(checkpoints / "checkpoint-2")
    state = json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    weights = load_file(checkpoints / "checkpoint-2" / "adapter_model.safetensors")
    assert weights and all(bool(t.isfinite().all()) for t in weights.values())
    assert not (checkpoints / "checkpoint-4" / "trainer_state.json").exists()
    assert not (stage / "COMPLETE").exists()
    manifest = json.loads((tmp_path / "runs" / "full" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "failed"

    # Room again: the same command resumes from checkpoint-2 and finishes.
    assert main(["train", str(path)]) == 0
    results = json.loads((stage / "COMPLETE").read_text())
    assert results["resumed_from"] == str(checkpoints / "checkpoint-2")
    assert results["global_step"] == 6
    lines = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line][-4:] == [3, 4, 5, 6]
    assert any(p.name.startswith("checkpoint-4.incomplete-") for p in checkpoints.glob("checkpoint-*"))
