"""SFT end to end on the tiny model through the CLI: adapter changes, loss falls, run folders behave, exports match."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from ntp_rl.cli import main
from tests.conftest import REPO

HASH_REWARD = str(REPO / "tests" / "plugins" / "text_hash_reward.py")

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


EXPORT_PROMPTS = ["What is 12 + 30?", "Tom has 4 apples and buys 5 more. How many apples now?", "Hi"]
# The export merges in float32 (the tiny model's dtype): each merged weight W + s*B@A is rounded once
# to float32, where peft computes W@x + s*B@(A@x) unmerged. The two orders of the same float32 sums
# differ by a few float32 ulps of the logits (which are of order 1 here); 1e-5 leaves room for that
# and stays far below the adapters' own effect (asserted > 1e-3 below, so the comparison can fail).
EXPORT_TOLERANCE = 1e-5
ADAPTER_EFFECT = 1e-3

# Loads an exported folder in a fresh interpreter where peft cannot be imported, so that only a plain
# model folder loads; writes the logits of each prompt to argv[3] (safetensors).
PLAIN_LOAD = """
import json, sys
sys.modules["peft"] = None  # import peft now raises ImportError; find_spec("peft") is None
from safetensors.torch import save_file
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
assert not hasattr(model, "peft_config"), type(model)
logits = {}
with torch.inference_mode():
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        logits[str(i)] = model(input_ids=ids).logits[0].float().contiguous()
save_file(logits, out)
"""


def _logits(model, tokenizer, prompts):
    import torch

    with torch.inference_mode():
        return [
            model(input_ids=tokenizer(p, return_tensors="pt").input_ids).logits[0].float() for p in prompts
        ]


def _plain_logits(folder, tmp_path):
    """Logits of the exported folder, loaded without peft in a child interpreter."""
    out = tmp_path / f"{folder.name}-logits.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    argv = [sys.executable, "-c", PLAIN_LOAD, str(folder), json.dumps(EXPORT_PROMPTS), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits = load_file(out)
    return [logits[str(i)] for i in range(len(EXPORT_PROMPTS))]


def _max_gap(left, right) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def test_export_writes_a_plain_model(write_recipe, tmp_path, tiny_model_path):
    """An sft and an rl adapter export to plain folders whose logits are base + adapter's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = {
        **SFT_RECIPE,
        "stages": [
            {
                **SFT_RECIPE["stages"][0],
                "eval_examples": 0,
                "trainer": {**SFT_RECIPE["stages"][0]["trainer"], "max_steps": 2},
            },
            {
                "kind": "rl",
                "rewards": [{"path": f"{HASH_REWARD}:text_hash"}],  # every sample scores apart: RL moves
                "trainer": {
                    "max_steps": 1,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 8,
                    "learning_rate": 1e-2,
                    "save_steps": 100,
                },
            },
        ],
    }
    assert main(["train", str(write_recipe(recipe))]) == 0
    run = tmp_path / "runs" / "sft"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()

    base_logits = _logits(base(), tokenizer, EXPORT_PROMPTS)
    adapted = {}
    for stage in ("sft", "rl"):
        out = tmp_path / f"exported-{stage}"
        assert main(["export", str(run / stage), "--out", str(out)]) == 0
        assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
        assert any(out.glob("*.safetensors")) and not any(out.glob("*.bin"))
        assert (out / "chat_template.jinja").is_file() or "chat_template" in (
            out / "tokenizer_config.json"
        ).read_text()
        with_adapter = PeftModel.from_pretrained(base(), str(run / stage / "adapter")).eval()
        adapted[stage] = _logits(with_adapter, tokenizer, EXPORT_PROMPTS)
        # The adapter changed the model, so an export that saved the plain base would fail below.
        assert _max_gap(adapted[stage], base_logits) > ADAPTER_EFFECT
        exported = _plain_logits(out, tmp_path)
        gap = _max_gap(exported, adapted[stage])
        assert gap <= EXPORT_TOLERANCE, f"{stage}: exported logits differ from base + adapter by {gap:.2e}"
    # The rl export holds the rl adapter, not the sft one it started from.
    assert _max_gap(adapted["rl"], adapted["sft"]) > ADAPTER_EFFECT
    assert main(["export", str(run / "sft"), "--out", str(tmp_path / "exported-sft")]) == 2


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
