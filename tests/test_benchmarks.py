"""The benchmark scripts run: their output has the parts they promise (no timed asserts).

- benchmarks/rl_step_profile.py on the tiny model, one step: every phase is printed and timed, the
  phases and "other" add up to the step, the FLOP counts follow the docstring's formulas.
- benchmarks/gpu_check.sh without a GPU (nvidia-smi missing, or listing a GPU torch cannot use):
  it says it needs one and exits 0 without running anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "benchmarks" / "rl_step_profile.py"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
PHASE_LABELS = ("generation", "reward scoring", "forward (+loss)", "backward", "optimizer step", "other")


def _profile_module():
    spec = importlib.util.spec_from_file_location("rl_step_profile", PROFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_flop_counts():
    profile = _profile_module()
    shape = {"body": 10, "lora": 1, "head": 5, "layers": 2, "attention_width": 3}
    # one sequence of 2 prompt + 1 completion tokens: 3 tokens, 1 logit, 3 * 4 / 2 = 6 attention pairs
    assert profile.attention_flops(shape, [(2, 1)]) == 4 * 2 * 3 * 6
    assert profile.forward_flops(shape, [(2, 1)]) == 2 * 11 * 3 + 2 * 5 * 1 + 144
    assert profile.backward_flops(shape, [(2, 1)]) == 220 + 2 * 1 * 3 + 144
    assert profile.forward_flops(shape, [(2, 1), (2, 1)]) == 2 * 220


def test_rl_step_profile_tiny(tmp_path, tiny_model_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(PROFILE), "--model", "tiny", "--steps", "1", "--warmup-steps", "0"]
        # The tiny model's completions all score 0: ntp-rl's trainer would skip their forward and
        # backward, which this test wants timed.
        + ["--json", str(out), "stages.rl.skip_zero_advantage=false"]
        # float32 pinned: `auto` picks bf16 on a CPU whose bf16 matmul wins (an AMD EPYC with
        # avx512_bf16 did), and this test checks what is printed, not which dtype a machine gets.
        + ["--dtype", "float32"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    printed = {}
    for label in (*PHASE_LABELS, "step"):
        match = re.search(rf"^{re.escape(label)} +(\d+\.\d+) +(\d+\.\d+)%", proc.stdout, re.MULTILINE)
        assert match, f"no {label!r} row in:\n{proc.stdout[-3000:]}"
        printed[label] = float(match.group(1))
    # printed to 3 decimals: the rows add up to the step within their rounding
    assert sum(printed[label] for label in PHASE_LABELS) == pytest.approx(printed["step"], abs=0.004)
    assert re.search(r"^step at \d+\.\d % of its FLOP bound$", proc.stdout, re.MULTILINE)
    assert re.search(r"^useful completions \(non-zero advantage\): \d+ / 32 = ", proc.stdout, re.MULTILINE)
    assert "frac_reward_zero_std" in proc.stdout
    assert re.search(r"^CPU: .+; torch .+ 1 thread .+; dtype float32", proc.stdout, re.MULTILINE)

    result = json.loads(out.read_text())
    [step] = result["steps"]
    assert step["completions"] == 32  # 8 prompts x 4 generations, the quickstart's step
    seconds = step["seconds"]
    for phase in ("generation", "reward", "forward", "backward", "optimizer"):
        assert seconds[phase] > 0, phase
    assert seconds["other"] >= 0  # the phases do not overlap and lie inside the step
    assert sum(seconds.values()) == pytest.approx(step["total"], rel=1e-9)
    for phase in ("generation", "forward", "backward"):
        assert step["flops"][phase] > 0, phase
    assert step["flops"]["backward"] > step["flops"]["forward"]
    assert result["summary"]["frac_reward_zero_std"] is not None
    assert result["matmul_gflops"] > 0


def _run_gpu_check(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("bash"), str(GPU_CHECK)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, "PYTHON": sys.executable},
        timeout=120,
    )


def test_gpu_check_without_nvidia_smi(tmp_path):
    bare = tmp_path / "bin"  # a PATH with what the script needs before its GPU check, no nvidia-smi
    bare.mkdir()
    for tool in ("dirname", "grep"):
        (bare / tool).symlink_to(shutil.which(tool))
    proc = _run_gpu_check(str(bare))
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check: needs a machine with an NVIDIA GPU" in proc.stdout
    assert "nothing run" in proc.stdout


def test_gpu_check_with_a_gpu_torch_cannot_use(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU torch can use")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: Fake GPU (UUID: GPU-00000000)"\n')
    smi.chmod(0o755)
    proc = _run_gpu_check(f"{fake}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert "torch.cuda.is_available() is false" in proc.stdout
    assert "nothing run" in proc.stdout
