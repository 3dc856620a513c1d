"""Eval throughput: `ntp-rl eval` against lm-evaluation-harness's HF backend on the same work.

What it measures: one model, one set of prompts and one decoding (greedy, the same max new tokens,
the same batch size, the model's chat template with the generation prompt, the same dtype, float32
unless `--dtype bfloat16`, on CPU or the first GPU) run two ways:
- ntp-rl: `ntp-rl eval --suite <suite> --model m=<model> --out <dir>` on a suite that reads the
  prompts file (greedy, or `--samples` at a temperature; no KL, no reference NLL, one scorer);
- lm-eval: `lm_eval.simple_evaluate(model="hf", ...)` on a local task YAML over the same file
  (`generate_until`; its `process_results`, as lm-eval's own math tasks check answers with
  math-verify, calls the answer check ntp-rl's `math_accuracy` scorer uses, `rewards.math.score_math_answer`,
  so both sides do the same work and report the same accuracy).
The prompts are the built-in arithmetic task's held-out problems, written to a local jsonl.
Each side runs in its own subprocess. Two clocks, samples/s = completions / seconds for each (one per
prompt greedy; `--samples k` per prompt sampled):
- the whole command (imports, model load, generation, scoring, writing results): what a user waits for;
- the eval call after imports: ntp-rl's `run_suite` (its report's `timing.seconds`) and lm-eval's
  `simple_evaluate`, both including model load, data, generation, answer checks and metrics; on both
  sides torch is imported before the clock starts (what `ntp-rl eval` loads before `run_suite`), the
  rest of each side's imports (transformers, datasets, evaluate) fall inside it. lm-eval's
  `TaskManager` reads only the benchmark's task folder (`include_defaults=False`): indexing its
  thousands of built-in task files would add seconds (what its CLI pays on every run) that have
  nothing to do with evaluating.
Sides run alternately, `--repeats` times each; the summary takes the median. Both accuracies are
printed: with the same prompts, decoding and answer check they agree up to the float round-off of
another batch layout (greedy) or other random draws (sampled).

Run (from the repository root, with lm-eval installed into the venv only for this script,
`pip install lm-eval`; it is not a dependency of ntp-rl). The target is a ratio ntp-rl / lm-eval >= 2:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_vs_lm_eval.py                        # tiny, 64 prompts
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_vs_lm_eval.py --model default --prompts 64
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_vs_lm_eval.py --model default --samples 4 --temperature 1.2

Sampled: ntp-rl draws k samples per prompt (its shared prefill runs each prompt once); lm-eval gets each
prompt k times in its task file, one sample each (its `repeats` would score only the first of them).

On a shared CPU the numbers move with other people's load: compare sides of one run, not runs.
A benchmark, never a timed assert in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TASK_NAME = "ntp_rl_bench_arithmetic"
# lm-eval's task module: its per-document `process_results` scores a reply with ntp-rl's answer check
# (the `Answer:` line, else math-verify on the reply's tail), imported from the repository.
TASK_UTILS = """
from rewards.math import score_math_answer


def process_results(doc, results):
    return {"accuracy": float(score_math_answer(results[0], doc["answer"]).correct)}
"""

LM_EVAL_SCRIPT = """
import json, sys, time
import torch  # imported before the clock, as `ntp-rl eval` has torch loaded before `run_suite`'s
import lm_eval
from lm_eval.tasks import TaskManager
args = json.loads(sys.argv[1])
started = time.perf_counter()
results = lm_eval.simple_evaluate(
    model="hf",
    model_args={"pretrained": args["model"], "dtype": args["dtype"], "device": args["device"]},
    tasks=[args["task"]],
    task_manager=TaskManager(include_path=args["task_dir"], include_defaults=False),
    batch_size=args["batch_size"],
    apply_chat_template=True,
    log_samples=False,
    bootstrap_iters=0,
)
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({**results["results"][args["task"]], "phase_seconds": seconds}, default=str))
"""


def write_prompts(folder: Path, count: int, seed: int, copies: int = 1, name: str = "prompts.jsonl") -> Path:
    """The held-out problems as a jsonl; each `copies` times in a row (lm-eval's samples, one doc each)."""
    from ntp_rl.tasks import arithmetic

    rows = arithmetic.generate("test", count, seed=seed)
    path = folder / name
    with path.open("w") as handle:
        for row in rows:
            for _ in range(copies):
                handle.write(json.dumps({"prompt": row["prompt"], "answer": row["answer"]}) + "\n")
    return path


def write_suite(
    folder: Path, prompts: Path, max_new_tokens: int, batch_size: int, samples: int, temperature: float
) -> Path:
    suite = {
        "name": "bench",
        "data": {"source": str(prompts), "train_split": "test", "test_split": "test"},
        "split": "test",
        "max_examples": None,
        "generation": {"greedy": samples == 0, "num_samples": samples, "temperature": temperature or 1.0,
                       "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": 1234},
        "scorers": [{"name": "math_accuracy"}],
        "metrics": ["accuracy", "extraction_failure_rate"],
        "kl_to_base": False,
        "reference_nll": None,
    }  # fmt: skip
    path = folder / "bench_suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def write_task(folder: Path, prompts: Path, max_new_tokens: int, temperature: float) -> Path:
    task_dir = folder / "lm_eval_tasks"
    task_dir.mkdir()
    task = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(prompts)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        # `until: []`: stop at EOS only, as ntp-rl does; without it lm-eval stops at its few-shot
        # delimiter "\n\n" as well.
        "generation_kwargs": {"max_gen_toks": max_new_tokens, "do_sample": temperature > 0,
                              "temperature": temperature, "until": []},
        "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
    }  # fmt: skip
    # `!function` is lm-eval's YAML tag for a callable of a module beside the task file.
    text = yaml.safe_dump(task, sort_keys=False) + "process_results: !function utils.process_results\n"
    (task_dir / f"{TASK_NAME}.yaml").write_text(text)
    (task_dir / "utils.py").write_text(TASK_UTILS)
    return task_dir


def run_ntp_rl(
    suite: Path, model: str, out: Path, env: dict, sampled: bool, dtype: str
) -> tuple[float, float, float]:
    cmd = [
        sys.executable,
        "-m",
        "ntp_rl",
        "eval",
        "--suite",
        str(suite),
        "--model",
        f"m={model}",
        "--out",
        str(out),
        "--dtype",
        dtype,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ntp-rl eval failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]["m"]
    return seconds, report["timing"]["seconds"], summary["sampled_pass1" if sampled else "greedy_accuracy"]


def run_lm_eval(
    model_path: str, task_dir: Path, batch_size: int, env: dict, dtype: str
) -> tuple[float, float, float]:
    import torch

    args = {"model": model_path, "task": TASK_NAME, "task_dir": str(task_dir), "batch_size": batch_size,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "dtype": dtype}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LM_EVAL_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,  # the task's `process_results` imports `rewards` from the repository
    )
    seconds = time.perf_counter() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    return seconds, float(result["phase_seconds"]), float(result["accuracy,none"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, default, or a model folder (default: tiny)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="0 = greedy; k > 0 = k samples per prompt at --temperature (sampled pass@1; lm-eval gets "
        "each prompt k times, one sample each)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (with --samples)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the model's dtype on both sides (default float32)",
    )
    args = parser.parse_args()
    sampled = args.samples > 0
    completions = args.prompts * max(args.samples, 1)

    from ntp_rl.models import resolve_model_path

    model_path = resolve_model_path(args.model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    times: dict[str, list[float]] = {"ntp-rl": [], "lm-eval": []}
    phases: dict[str, list[float]] = {"ntp-rl": [], "lm-eval": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        folder = Path(tmp)
        prompts = write_prompts(folder, args.prompts, seed=42)
        suite = write_suite(
            folder, prompts, args.max_new_tokens, args.batch_size, args.samples, args.temperature
        )
        copies = write_prompts(folder, args.prompts, 42, max(args.samples, 1), "prompts_copies.jsonl")
        task_dir = write_task(folder, copies, args.max_new_tokens, args.temperature if sampled else 0.0)
        for repeat in range(args.repeats):
            seconds, phase, accuracy["ntp-rl"] = run_ntp_rl(
                suite, model_path, folder / f"report-{repeat}", env, sampled, args.dtype
            )
            times["ntp-rl"].append(seconds)
            phases["ntp-rl"].append(phase)
            seconds, phase, accuracy["lm-eval"] = run_lm_eval(
                model_path, task_dir, args.batch_size, env, args.dtype
            )
            times["lm-eval"].append(seconds)
            phases["lm-eval"].append(phase)

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    decoding = f"{args.samples} samples each at T={args.temperature}" if sampled else "greedy"
    print(f"model {args.model} ({model_path}), {args.prompts} prompts, {decoding}, max {args.max_new_tokens} new "
          f"tokens, batch {args.batch_size}, {args.dtype}, OMP_NUM_THREADS={threads}, median of {args.repeats} run(s)")  # fmt: skip
    for title, measured in (("whole command", times), ("eval call (after imports)", phases)):
        rate = {side: completions / statistics.median(values) for side, values in measured.items()}
        print(f"{title}:")
        for side in ("ntp-rl", "lm-eval"):
            print(f"  {side:<8} {statistics.median(measured[side]):7.1f} s  {rate[side]:7.2f} samples/s")
        print(f"  ratio ntp-rl / lm-eval: {rate['ntp-rl'] / rate['lm-eval']:.2f}x (target >= 2, issue #17)")
    what = "sampled pass@1" if sampled else "accuracy"
    print(f"{what}: ntp-rl {100 * accuracy['ntp-rl']:.1f} %, lm-eval {100 * accuracy['lm-eval']:.1f} %")


if __name__ == "__main__":
    main()
