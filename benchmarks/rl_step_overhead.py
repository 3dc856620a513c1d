"""Seconds per GRPO step and peak memory: ntp-rl's rl stage against a plain TRL script.

What it measures: one GRPO configuration (model, LoRA, seed, data, generation settings; reward =
`math_accuracy`) run two ways, a few steps each:
- ntp-rl: `ntp_rl.cli.main(["train", recipe])` on a recipe with one rl stage (fresh LoRA adapter);
  this includes everything ntp-rl adds per step (the reward guard, metrics.jsonl, samples.jsonl);
- TRL: a plain script, `GRPOTrainer(model, reward_funcs=[math_accuracy], args=GRPOConfig(...),
  peft_config=LoraConfig(...))` on the same rows of the synthetic arithmetic task.
Each side runs in its own subprocess, so its peak resident memory (`ru_maxrss` of that process,
read by the process itself at the end) does not mix with the other's. A step's time is the wall clock
between two consecutive per-step log events (logging_steps=1): generation, reward scoring, the update,
and the logging callbacks. The first `--warmup-steps` steps are not timed. TRL's own `step_time`
(its `training_step` alone, without the optimizer step and callbacks) is shown beside it. Sides run
alternately, `--repeats` times each; the summary takes the median step over all repeats.

Run (from the repository root; the target is a ratio ntp-rl / TRL <= 1.05):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_step_overhead.py                          # tiny, ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_step_overhead.py --model default --steps 3

On a shared CPU the numbers move with other people's load: compare sides of one run, not runs.
A benchmark, never a timed assert in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 42
NUM_TRAIN_ROWS = 256
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
SIDES = ("trl", "ntp-rl")


def trainer_settings(args: argparse.Namespace) -> dict:
    """The GRPOConfig fields both sides set (ntp-rl: the stage's `trainer:`; TRL: GRPOConfig kwargs)."""
    return {
        "max_steps": args.warmup_steps + args.steps,
        "per_device_train_batch_size": args.batch_size,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
        "temperature": 1.0,
        "beta": 0.0,
        "learning_rate": 1e-5,
        "logging_steps": 1,
        "save_steps": 1_000_000,  # no checkpoint inside the timed steps
        "report_to": "none",
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------
# The two sides (each in its own process)


def run_ntp_rl(args: argparse.Namespace, workdir: Path) -> dict:
    import yaml

    from ntp_rl.cli import main

    recipe = {
        "run": {"name": "bench", "output_dir": str(workdir / "runs"), "seed": SEED},
        "model": {"name_or_path": args.model, "dtype": args.dtype, "lora": LORA},
        "data": {
            "source": "synthetic:arithmetic",
            "arithmetic": {"num_train": NUM_TRAIN_ROWS, "num_test": 8},
        },
        "stages": [{"kind": "rl", "rewards": [{"name": "math_accuracy"}], "trainer": trainer_settings(args)}],
    }
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    status = main(["train", str(path)])
    if status != 0:
        raise SystemExit(f"ntp-rl train exited {status}")
    logs = [json.loads(line) for line in (workdir / "runs" / "bench" / "rl" / "metrics.jsonl").open()]
    steps = [record for record in logs if "loss" in record]
    return {"times": [r["time"] for r in steps], "trl_step_time": [r.get("step_time") for r in steps]}


def run_trl(args: argparse.Namespace, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from ntp_rl.rewards import math_accuracy
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ntp_rl.models import resolve_model_path
    from ntp_rl.tasks import arithmetic

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.step_time = [], []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.times.append(time.time())
                self.step_time.append(logs.get("step_time"))

    rows = arithmetic.generate("train", NUM_TRAIN_ROWS, seed=SEED, two_step_fraction=0.0)
    for row in rows:
        row["prompt"] = [{"role": "user", "content": row["prompt"]}]
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        seed=SEED,
        bf16=args.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),
        **trainer_settings(args),
    )
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[math_accuracy],
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[clock],
    )
    trainer.train()
    return {"times": clock.times, "trl_step_time": clock.step_time}


def child(args: argparse.Namespace) -> None:
    started = time.time()
    workdir = Path(args.workdir)
    result = (run_ntp_rl if args.side == "ntp-rl" else run_trl)(args, workdir)
    times = result["times"]
    if len(times) != args.warmup_steps + args.steps:
        raise SystemExit(
            f"{args.side}: expected {args.warmup_steps + args.steps} step logs, got {len(times)}"
        )
    timed = slice(args.warmup_steps, None)
    result.update(
        side=args.side,
        step_seconds=[b - a for a, b in zip(times[args.warmup_steps - 1 : -1], times[timed], strict=True)],
        trl_step_time=result["trl_step_time"][timed],
        seconds_to_first_step_log=times[0] - started,
        peak_rss_mib=peak_rss_mib(),
    )
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# The parent: run the sides, summarise


def run_side(side: str, args: argparse.Namespace, root: Path, repeat: int) -> dict:
    workdir = root / f"{side}-{repeat}"
    workdir.mkdir()
    result_path = workdir / "result.json"
    cmd = [sys.executable, __file__, "--side", side, "--workdir", str(workdir), "--result", str(result_path)]
    cmd += [f"--model={args.model}", f"--dtype={args.dtype}", f"--steps={args.steps}"]
    cmd += [f"--warmup-steps={args.warmup_steps}", f"--batch-size={args.batch_size}"]
    cmd += [
        f"--num-generations={args.num_generations}",
        f"--max-completion-length={args.max_completion_length}",
    ]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ}
    print(f"  {side} (repeat {repeat + 1}/{args.repeats}) ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not result_path.is_file():
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"the {side} side failed (exit {proc.returncode})")
    return json.loads(result_path.read_text())


def summarise(results: list[dict]) -> dict:
    steps = [s for r in results for s in r["step_seconds"]]
    trl_times = [s for r in results for s in r["trl_step_time"] if s is not None]
    return {
        "median_step_seconds": statistics.median(steps),
        "mean_step_seconds": statistics.fmean(steps),
        "median_trl_step_time": statistics.median(trl_times) if trl_times else None,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        "seconds_to_first_step_log": statistics.median(r["seconds_to_first_step_log"] for r in results),
        "step_seconds": steps,
    }


def parent(args: argparse.Namespace) -> None:
    completions = args.batch_size
    print(
        f"GRPO step overhead: model {args.model} ({args.dtype}), {completions} completions a step "
        f"({completions // args.num_generations} prompts x {args.num_generations}), max "
        f"{args.max_completion_length} new tokens; {args.steps} timed steps after {args.warmup_steps} warm-up, "
        f"{args.repeats} repeat(s); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="rl-step-overhead-") as tmp:
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else SIDES[::-1]  # alternate, so drifting load hits both
            for side in order:
                results[side].append(run_side(side, args, Path(tmp), repeat))
    summary = {side: summarise(results[side]) for side in SIDES}
    ratio = summary["ntp-rl"]["median_step_seconds"] / summary["trl"]["median_step_seconds"]
    memory_ratio = summary["ntp-rl"]["peak_rss_mib"] / summary["trl"]["peak_rss_mib"]

    print(
        f"\n{'side':<8} {'s/step median':>14} {'s/step mean':>12} {'TRL step_time':>14} {'peak RSS MiB':>13}"
    )
    for side in SIDES:
        s = summary[side]
        trl_time = "-" if s["median_trl_step_time"] is None else f"{s['median_trl_step_time']:.3f}"
        print(
            f"{side:<8} {s['median_step_seconds']:>14.3f} {s['mean_step_seconds']:>12.3f} {trl_time:>14} "
            f"{s['peak_rss_mib']:>13.0f}"
        )
    verdict = "within" if ratio <= 1.05 else "OVER"
    print(f"\nratio ntp-rl / TRL, seconds per step: {ratio:.3f} ({verdict} the 1.05 target)")
    print(f"ratio ntp-rl / TRL, peak RSS: {memory_ratio:.3f}")
    if args.json:
        payload = {"settings": vars(args), "summary": summary, "ratio": ratio, "memory_ratio": memory_ratio}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny (quick), default (the real number), or a folder"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (>= 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--batch-size", type=int, default=8, help="completions per step")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--json", help="write the summary as JSON here")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup_steps < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup-steps, --steps and --repeats must be >= 1")
    if args.side:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
