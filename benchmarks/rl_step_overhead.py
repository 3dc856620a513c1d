"""Seconds per GRPO step and peak memory: ntp-rl's rl stage against a plain TRL script, on the same work.

What it measures: one GRPO configuration (model, LoRA, seed, data, generation settings; reward =
`math_accuracy`) run two ways, a few steps each:
- ntp-rl: `ntp_rl.cli.main(["train", recipe])` on a recipe with one rl stage (fresh LoRA adapter),
  with everything ntp-rl adds per step (preflighted data, the reward guard, metrics.jsonl, samples.jsonl);
- TRL: a plain script, `GRPOTrainer(model, reward_funcs=[math_accuracy], args=GRPOConfig(...),
  peft_config=LoraConfig(...))` on the same rows of the synthetic arithmetic task.
Both sides read the same rows (a file the parent writes) and start from the same policy: `--model`
(tiny, default, or a folder; for the quickstart's RL, the SFT stage exported with `ntp-rl export`,
so that a fresh LoRA adapter starts from the SFT policy on both sides). `--filter-prompts N` keeps,
as the quickstart's `prompt_filter` does, the prompts among N whose samples disagree under that
policy (picked once, in the parent, with ntp-rl's filter), so the share of completions that carry a
signal is the quickstart's kind. ntp-rl skips the forward/backward of completions with zero
advantage (ntp_rl/stages/rl_trainer.py); its `useful_share` (completions back-propagated /
generated) is printed beside the times, since the gain depends on it. `--ntp-rl-set key=value`
overrides a key of ntp-rl's rl stage (e.g. `skip_zero_advantage=false`) to time one lever alone.
Both sides carry the same `StepClock` callback, which stamps the wall clock and the process's CPU
time at each per-step log (logging_steps=1): a step is the interval between two stamps, so it holds
generation, reward scoring, the update and every logging callback. (`ntp-rl train` takes no
callbacks, so on that side the clock joins through transformers' `DEFAULT_CALLBACKS` list; that is
the only thing the benchmark adds there.) ntp-rl's model loader also gives the LM head a contiguous
input (`ntp_rl.models.contiguous_output_head`), which the plain script lacks: it saves a batch-wide
copy of the head's weight at every generation prefill, in time and in peak memory. The first
`--warmup-steps` steps are not timed. Each side runs in its own subprocess, so its peak resident
memory (`ru_maxrss`, read by that process at the end) does not mix with the other's. Sides
alternate, `--repeats` times each; the summary takes the median step over all repeats. CPU seconds
per step move much less than wall seconds when other work shares the machine; both are reported,
with their ratios (issue #17's target: ntp-rl / TRL <= 0.6 in time, <= 1.1 in peak memory).

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_step_overhead.py                          # tiny, ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_step_overhead.py --model default --steps 3
    # the quickstart's RL step (8 prompts x 4, micro-batches of 16, 48 tokens, temperature 1.2, ntp-rl's
    # side with the recipe's attention settings; TRL's with transformers' default) from its SFT policy:
    ntp-rl export runs/quickstart/sft --out /tmp/sft-merged
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rl_step_overhead.py --model /tmp/sft-merged \
        --batch-size 16 --grad-accum 2 --max-completion-length 48 --temperature 1.2 --filter-prompts 160 --steps 4 \
        --ntp-rl-model-set attn_implementation=eager --ntp-rl-model-set generation_attn_implementation=sdpa

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

from transformers import TrainerCallback

SEED = 42
NUM_TRAIN_ROWS = 256
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
SIDES = ("trl", "ntp-rl")


def trainer_settings(args: argparse.Namespace) -> dict:
    """The GRPOConfig fields both sides set (ntp-rl: the stage's `trainer:`; TRL: GRPOConfig kwargs)."""
    return {
        "max_steps": args.warmup_steps + args.steps,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
        "temperature": args.temperature,
        "gradient_checkpointing": args.gradient_checkpointing,
        "beta": 0.0,
        "learning_rate": 1e-5,
        "logging_steps": 1,
        "save_steps": 1_000_000,  # no checkpoint inside the timed steps
        "report_to": "none",
    }


def load_policy(args: argparse.Namespace):
    """(tokenizer, model) of `--model` at `--dtype` for the plain-TRL side and the prompt filter."""
    from transformers import AutoModelForCausalLM

    from ntp_rl.models import load_tokenizer, resolve_model_path, torch_dtype

    path = resolve_model_path(args.model)
    # Plain transformers loading, not ntp_rl.models.load_causal_lm: the baseline is TRL as a user
    # runs it, without ntp-rl's LM-head hook.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(args.dtype), use_safetensors=True)
    return load_tokenizer(path), model


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class StepClock(TrainerCallback):
    """Wall clock and process CPU time at each per-step log, with TRL's step_time and completion length."""

    def __init__(self):
        self.records: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.records.append(
                {
                    "wall": time.perf_counter(),
                    "cpu": time.process_time(),
                    "trl_step_time": logs.get("step_time"),
                    "completion_tokens": logs.get("completions/mean_length"),
                    "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                    "useful_share": logs.get("useful_share"),
                }
            )


# --------------------------------------------------------------------------------------------
# The two sides (each in its own process)


def run_ntp_rl(args: argparse.Namespace, workdir: Path) -> list[dict]:
    import transformers.trainer
    import yaml

    from ntp_rl.cli import main

    recipe = {
        "run": {"name": "bench", "output_dir": str(workdir / "runs"), "seed": SEED},
        "model": {
            "name_or_path": args.model,
            "dtype": args.dtype,
            "lora": LORA,
            **{
                key: yaml.safe_load(value)
                for key, value in (kv.split("=", 1) for kv in args.ntp_rl_model_set)
            },
        },
        "data": {"source": args.rows},
        "stages": [
            {
                "kind": "rl",
                "rewards": [{"name": "math_accuracy"}],
                "trainer": trainer_settings(args),
                **{key: yaml.safe_load(value) for key, value in (kv.split("=", 1) for kv in args.ntp_rl_set)},
            }
        ],
    }
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    clock = StepClock()
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)  # every Trainer built in this process gets it
    status = main(["train", str(path)])
    if status != 0:
        raise SystemExit(f"ntp-rl train exited {status}")
    return clock.records


def run_trl(args: argparse.Namespace, workdir: Path) -> list[dict]:
    import torch
    from datasets import Dataset
    from ntp_rl.rewards import math_accuracy
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
    for row in rows:
        row["prompt"] = [{"role": "user", "content": row["prompt"]}]
    tokenizer, model = load_policy(args)
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
    return clock.records


def child(args: argparse.Namespace) -> None:
    records = (run_ntp_rl if args.side == "ntp-rl" else run_trl)(args, Path(args.workdir))
    if len(records) != args.warmup_steps + args.steps:
        raise SystemExit(
            f"{args.side}: expected {args.warmup_steps + args.steps} step logs, got {len(records)}"
        )
    timed = list(zip(records[args.warmup_steps - 1 : -1], records[args.warmup_steps :], strict=True))
    result = {
        "side": args.side,
        "wall_seconds": [after["wall"] - before["wall"] for before, after in timed],
        "cpu_seconds": [after["cpu"] - before["cpu"] for before, after in timed],
        "trl_step_time": [after["trl_step_time"] for _, after in timed],
        "completion_tokens": [after["completion_tokens"] for _, after in timed],
        "frac_reward_zero_std": [after["frac_reward_zero_std"] for _, after in timed],
        "useful_share": [after["useful_share"] for _, after in timed],
        "peak_rss_mib": peak_rss_mib(),
    }
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
    cmd += [f"--grad-accum={args.grad_accum}", f"--temperature={args.temperature}", f"--rows={args.rows}"]
    cmd += [f"--ntp-rl-set={kv}" for kv in args.ntp_rl_set]
    cmd += [f"--ntp-rl-model-set={kv}" for kv in args.ntp_rl_model_set]
    cmd += ["--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"]
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
    def pooled(key: str) -> list[float]:
        return [value for result in results for value in result[key] if value is not None]

    return {
        "wall_seconds_per_step": statistics.median(pooled("wall_seconds")),
        "cpu_seconds_per_step": statistics.median(pooled("cpu_seconds")),
        "trl_step_time": statistics.median(pooled("trl_step_time")) if pooled("trl_step_time") else None,
        "completion_tokens": statistics.fmean(pooled("completion_tokens"))
        if pooled("completion_tokens")
        else None,
        "peak_rss_mib": max(result["peak_rss_mib"] for result in results),
        "frac_reward_zero_std": statistics.fmean(pooled("frac_reward_zero_std"))
        if pooled("frac_reward_zero_std")
        else None,
        "useful_share": statistics.fmean(pooled("useful_share")) if pooled("useful_share") else None,
        "wall_seconds": pooled("wall_seconds"),
        "cpu_seconds": pooled("cpu_seconds"),
    }


def write_rows(args: argparse.Namespace, path: Path) -> int:
    """The training rows both sides read; with --filter-prompts, only prompts whose samples disagree."""
    from ntp_rl.tasks import arithmetic

    rows = arithmetic.generate("train", NUM_TRAIN_ROWS, seed=SEED, two_step_fraction=0.0)
    rows = [{"prompt": row["prompt"], "answer": row["answer"]} for row in rows]
    if args.filter_prompts:
        rows = filtered_rows(args, rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def filtered_rows(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """ntp-rl's prompt filter (the rl stage's `prompt_filter`) under the starting policy, run once here."""
    import torch
    from datasets import Dataset
    from ntp_rl.rewards import math_accuracy
    from trl import GRPOConfig

    from ntp_rl.config import PromptFilterSettings
    from ntp_rl.data import to_prompt_format
    from ntp_rl.stages.rl import filter_prompts

    tokenizer, model = load_policy(args)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=not torch.cuda.is_available(), **trainer_settings(args)
    )
    train = to_prompt_format(Dataset.from_list(rows), "benchmark rows")
    kept, stats = filter_prompts(
        model,
        tokenizer,
        train,
        [math_accuracy],
        [1.0],
        PromptFilterSettings(candidates=args.filter_prompts, samples=args.num_generations),
        config,
        SEED,
    )
    print(f"  prompt filter: kept {stats['kept']} of {stats['candidates']} prompts", flush=True)
    keys = {
        row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else row["prompt"] for row in kept
    }
    return [row for row in rows if row["prompt"] in keys]


def parent(args: argparse.Namespace) -> None:
    completions = args.batch_size * args.grad_accum
    print(
        f"GRPO step overhead: model {args.model} ({args.dtype}), {completions} completions a step "
        f"({completions // args.num_generations} prompts x {args.num_generations}), max "
        f"{args.max_completion_length} new tokens; {args.steps} timed steps after {args.warmup_steps} warm-up, "
        f"{args.repeats} repeat(s); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="rl-step-overhead-") as tmp:
        args.rows = str(Path(tmp) / "rows.jsonl")
        print(f"  training rows: {write_rows(args, Path(args.rows))}", flush=True)
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else SIDES[::-1]  # alternate, so drifting load hits both
            for side in order:
                results[side].append(run_side(side, args, Path(tmp), repeat))
    summary = {side: summarise(results[side]) for side in SIDES}
    ratios = {
        key: summary["ntp-rl"][key] / summary["trl"][key]
        for key in ("wall_seconds_per_step", "cpu_seconds_per_step", "peak_rss_mib")
    }
    print(
        f"\n{'side':<8} {'wall s/step':>12} {'CPU s/step':>11} {'TRL step_time':>14} "
        f"{'tokens/completion':>18} {'peak RSS MiB':>13} {'zero-std groups':>16} {'useful share':>13}"
    )
    for side in SIDES:
        s = summary[side]
        trl_time = "-" if s["trl_step_time"] is None else f"{s['trl_step_time']:.3f}"
        tokens = "-" if s["completion_tokens"] is None else f"{s['completion_tokens']:.1f}"
        zero = "-" if s["frac_reward_zero_std"] is None else f"{s['frac_reward_zero_std']:.2f}"
        useful = "-" if s["useful_share"] is None else f"{s['useful_share']:.2f}"
        print(
            f"{side:<8} {s['wall_seconds_per_step']:>12.3f} {s['cpu_seconds_per_step']:>11.3f} {trl_time:>14} "
            f"{tokens:>18} {s['peak_rss_mib']:>13.0f} {zero:>16} {useful:>13}"
        )
    print(f"CPU: {cpu_model()}")
    print("\nratio ntp-rl / TRL (medians; issue #17's target: <= 0.6 for time, <= 1.1 for memory):")
    for key, label in (
        ("wall_seconds_per_step", "wall seconds per step"),
        ("cpu_seconds_per_step", "CPU seconds per step"),
        ("peak_rss_mib", "peak RSS"),
    ):
        print(f"  {label:<22} {ratios[key]:.3f}")
    if args.json:
        payload = {"settings": vars(args), "summary": summary, "ratios": ratios}
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
    parser.add_argument("--batch-size", type=int, default=8, help="completions per micro-batch")
    parser.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per step (generated together)"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="TRL's default is on; the quickstart turns it off (a 135M model does not need it)",
    )
    parser.add_argument(
        "--filter-prompts", type=int, default=0, help="keep prompts among N whose samples disagree (0 = all)"
    )
    parser.add_argument(
        "--ntp-rl-set",
        action="append",
        default=[],
        help="key=value for ntp-rl's rl stage, e.g. skip_zero_advantage=false",
    )
    parser.add_argument(
        "--ntp-rl-model-set",
        action="append",
        default=[],
        help="key=value for ntp-rl's model block, e.g. attn_implementation=eager (the quickstart's settings)",
    )
    parser.add_argument("--rows", help=argparse.SUPPRESS)
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
