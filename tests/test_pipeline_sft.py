"""SFT end to end on the tiny model through the CLI: adapter changes, loss falls, run folders behave."""

from __future__ import annotations

import json
import sys

import pytest
from safetensors.torch import load_file

from ntp_rl.cli import main

SFT_RECIPE = {
    "run": {"name": "sft"},
    "model": {"name_or_path": "tiny", "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}},
    "data": {"arithmetic": {"num_train": 32, "num_test": 8}},
    "stages": [
        {
            "kind": "sft",
            "eval_examples": 8,
            "trainer": {
                "max_steps": 8,
                "per_device_train_batch_size": 4,
                "learning_rate": 3e-3,
                "logging_steps": 1,
                "warmup_steps": 0,
                "save_steps": 4,
            },
        }
    ],
}


def _losses(stage_dir):
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def test_sft_trains_adapter_and_lowers_loss(write_recipe, tmp_path, tiny_model_path, capsys):
    path = write_recipe(SFT_RECIPE)
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "sft"
    stage = run / "sft"
    assert (stage / "COMPLETE").is_file()
    weights = load_file(stage / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: non-zero means trained
    losses = _losses(stage)
    assert len(losses) == 8 and losses[-1] < losses[0]
    results = json.loads((stage / "COMPLETE").read_text())
    assert results["eval_loss_after"] < results["eval_loss_before"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "complete"
    assert manifest["config"]["model"]["name_or_path"] == "tiny"
    assert manifest["versions"]["trl"] and manifest["seed"] == 42
    if sys.platform == "linux":  # the stage's own memory peak (a process with torch holds > 100 MiB)
        assert manifest["stages"]["sft"]["results"]["peak_rss_mib"] > 100
        assert manifest["peak_rss_mib"] == manifest["stages"]["sft"]["results"]["peak_rss_mib"]
        assert " GiB" in capsys.readouterr().out
    assert sorted(p.name for p in (stage / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-4",
        "checkpoint-8",
    ]

    # The same config again: the finished stage is skipped, nothing rewritten.
    before = (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(["train", str(path)]) == 0
    assert (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before
    assert len(_losses(stage)) == 8

    # A changed config aimed at the same run is refused (exit 2) and the run is untouched.
    capsys.readouterr()
    assert main(["train", str(path), "stages[0].trainer.max_steps=9"]) == 2
    assert "different config" in capsys.readouterr().err
    assert (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before

    # ... unless the user asks for a new run beside it.
    assert main(["train", str(path), "stages[0].trainer.max_steps=2", "--new-run"]) == 0
    assert (tmp_path / "runs" / "sft-2" / "sft" / "COMPLETE").is_file()
    assert (stage / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_export_writes_a_plain_model(write_recipe, tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    recipe = {
        **SFT_RECIPE,
        "stages": [
            {
                **SFT_RECIPE["stages"][0],
                "eval_examples": 0,
                "trainer": {**SFT_RECIPE["stages"][0]["trainer"], "max_steps": 1},
            }
        ],
    }
    path = write_recipe(recipe)
    assert main(["train", str(path)]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "runs" / "sft" / "sft"), "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model, "peft_config")
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()
    assert main(["export", str(tmp_path / "runs" / "sft" / "sft"), "--out", str(out)]) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/clear_refs is Linux's")
def test_peak_memory_is_measured_from_the_reset():
    from ntp_rl.pipeline import _peak_rss_mib, _reset_peak_rss

    assert _reset_peak_rss()
    block = bytearray(300 * 2**20)  # touched: zero-filled by the allocator, then written below
    block[::4096] = b"x" * len(block[::4096])
    with_block = _peak_rss_mib()
    del block
    assert _reset_peak_rss()
    assert _peak_rss_mib() < with_block - 250


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_memory_freed_by_a_stage_goes_back_to_the_os():
    import gc

    from ntp_rl.pipeline import _release_memory

    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    blocks = [bytes(8192) for _ in range(40_000)]  # ~330 MiB in malloc'd chunks, like a stage's tensors
    pin = bytes(8192)  # allocated after them: the top of the heap stays in use, so free() cannot trim it
    gc.disable()  # the measurement below must not depend on when a collection happens to run
    try:
        before = rss_mib()
        del blocks
        _release_memory()
        assert rss_mib() < before - 200
    finally:
        gc.enable()
    assert pin
