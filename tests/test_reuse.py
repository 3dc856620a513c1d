"""`ntp-rl train --reuse RUN`: another run's finished stages copied where the recipe is the same up to them."""

from __future__ import annotations

import hashlib
import json

from ntp_rl.cli import main
from ntp_rl.reuse import first_difference
from tests.test_rl_stage import _recipe as rl_recipe


def _recipe() -> dict:
    """test_rl_stage's SFT -> GRPO recipe on the tiny model, in a run named `draw`."""
    recipe = rl_recipe("grpo")
    recipe["run"]["name"] = "draw"
    recipe["stages"][1]["trainer"]["max_steps"] = 1
    return recipe


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_reuse_copies_the_same_stages_and_runs_the_rest(write_recipe, tmp_path, tiny_model_path, capsys):
    path = write_recipe(_recipe())
    assert main(["train", str(path)]) == 0
    source = tmp_path / "runs" / "draw"
    before = _digest(source)

    # The rl stage drawn again with another seed: the SFT stage comes from the first run.
    args = ["train", str(path), "run.name=draw-2", "stages[1].seed=7", "--reuse", str(source)]
    capsys.readouterr()
    assert main(args) == 0
    assert f"(copied from {source / 'sft'}, where it ran in " in capsys.readouterr().out
    run = tmp_path / "runs" / "draw-2"
    assert _digest(run / "sft") == _digest(source / "sft")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["reused_from"] == str(source / "sft")
    assert manifest["stages"]["sft"]["status"] == "complete"
    assert "reused_from" not in manifest["stages"]["rl"]
    assert json.loads((run / "rl" / "COMPLETE").read_text())["init_adapter"].startswith(str(run))
    # The rl stage ran here, from another seed: its adapter is not the first run's.
    assert (run / "rl" / "adapter" / "adapter_model.safetensors").read_bytes() != (
        source / "rl" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert _digest(source) == before  # the first run is left as it was

    # The same command again: every stage is finished here, nothing copied or rerun.
    finished = _digest(run)
    assert main(args) == 0
    assert _digest(run) == finished

    # A recipe that differs in the first stage: nothing can be copied, exit 2 naming the key.
    capsys.readouterr()
    changed = ["train", str(path), "run.name=draw-3", "stages[0].trainer.max_steps=3", "--reuse", str(source)]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "no stage can be copied" in err and "stages[0].trainer.max_steps" in err
    assert not (tmp_path / "runs" / "draw-3" / "sft").exists()


def test_reuse_refuses_a_folder_that_is_no_run(write_recipe, tmp_path, capsys):
    path = write_recipe(_recipe())
    (tmp_path / "not-a-run").mkdir()
    for target, message in (
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "not-a-run", "not a run folder"),
        (tmp_path / "runs" / "draw", "this run's own folder"),
    ):
        (tmp_path / "runs" / "draw").mkdir(parents=True, exist_ok=True)
        assert main(["train", str(path), "--reuse", str(target)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "runs" / "draw" / "manifest.json").exists()  # nothing written


def test_first_difference_names_the_key_path():
    assert first_difference({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 3}]}}) == "a.b[1].c"
    assert first_difference({"a": 1}, {"a": 1, "z": 0}) == "z"
    assert first_difference([1, 2], [1, 2, 3]) == "(length)"
    assert first_difference({"s": [1]}, {"s": [1, 2]}) == "s (length)"
    assert first_difference({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}) is None


def test_reuse_needs_the_same_dtype_and_smoke_mode(write_recipe, tmp_path, capsys):
    from ntp_rl.config import load_recipe

    path = write_recipe(_recipe())
    source = tmp_path / "runs" / "other"
    (source / "sft").mkdir(parents=True)
    (source / "sft" / "COMPLETE").write_text("{}")
    config = load_recipe(path, ["run.name=other"]).model_dump(mode="json")
    # Written before these keys existed: at their defaults they count as absent, as in the config hash.
    del config["stages"][0]["seed"], config["model"]["attn_implementation"]
    manifest = {
        "config": config,
        "smoke": False,
        "stages": {"sft": {"status": "complete", "dtype": "bfloat16"}},
    }
    (source / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", str(path), "--reuse", str(source)]) == 2
    assert (
        "stage sft ran in bfloat16 there and model.dtype resolves to float32 here" in capsys.readouterr().err
    )
    manifest["smoke"] = True
    (source / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", str(path), "--reuse", str(source)]) == 2
    assert "is a smoke run and this one is not" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "draw" / "manifest.json").exists()
