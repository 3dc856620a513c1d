"""The command line as users meet it: exit statuses, one-paragraph errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses(path):
    from ntp_rl.config import load_recipe

    recipe = load_recipe(path)
    assert recipe.stages
    assert load_recipe(path, smoke=True).model.name_or_path == "tiny"


def test_misspelt_key_exits_2_naming_its_path(tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe["stages"][0]["trainer"]["lerning_rate"] = 1e-4
    recipe["run"]["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "ntp_rl", "train", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert (
        "stages[0].trainer.lerning_rate: unknown key for SFTConfig; did you mean learning_rate?"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_stage_and_missing_recipe_exit_2(tmp_path, capsys):
    from ntp_rl.cli import main

    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(REPO / "recipes" / "quickstart.yaml"),
                "--smoke",
                "--stage",
                "nope",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--stage 'nope'" in capsys.readouterr().err


def test_two_processes_train_data_parallel(tmp_path, tiny_model_path):
    """recipes/accelerate/cpu_2proc.yaml (2 processes, no GPU): one gloo group, rank 0 writes alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "-m",
        "ntp_rl",
        "train",
        str(REPO / "recipes" / "quickstart.yaml"),
        "--smoke",
        "--output-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "quickstart-smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert all(stage["status"] == "complete" for stage in manifest["stages"].values())
    steps = [json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "loss" in s]
    assert [s["step"] for s in train_steps] == [1, 2]  # logged once, by rank 0 only
    # Effective batch = 2 processes x per_device_train_batch_size 2 = 4 rows of the 16: 0.25 epoch a step.
    assert train_steps[0]["epoch"] == pytest.approx(4 / 16)

    # The rl stage drawn again from the same SFT stage (`--reuse`): rank 0 copies, rank 1 waits for it.
    again = [*cmd, "--new-run", "stages[1].seed=3", "--reuse", str(run)]
    proc = subprocess.run(again, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "quickstart-smoke-2" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["reused_from"] == str(run / "sft")
    assert manifest["world_size"] == 2 and "reused_from" not in manifest["stages"]["rl"]
    assert all(stage["status"] == "complete" for stage in manifest["stages"].values())


def test_overrides_may_follow_flags(tmp_path, capsys):
    from ntp_rl.cli import main

    # An override after --smoke reaches the recipe: a bad key there is reported by its path.
    code = main(
        [
            "train",
            str(REPO / "recipes" / "quickstart.yaml"),
            "--smoke",
            "--output-dir",
            str(tmp_path),
            "stages[0].trainer.lerning_rate=1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "stages[0].trainer.lerning_rate: unknown key" in err and "learning_rate" in err, err
    with pytest.raises(SystemExit):
        main(["train", str(REPO / "recipes" / "quickstart.yaml"), "--no-such-flag"])
