"""What the held-out KL costs an rl stage with `beta: 0`: CPU time of each evaluation and of its passes.

Runs a small recipe (an sft stage, then an rl stage with `eval_examples`, beta 0, an evaluation
before step 1 and after every step) and times, in CPU seconds of this process, each evaluation and
each log-probability pass in it. With beta 0 every evaluation batch has two: the reference's
(ntp_rl/stages/heldout_kl.py makes TRL compute it, for the KL) and the policy's (TRL's eval loss).
The rest of an evaluation is sampling and scoring. CPU time, not wall time, so that other work on a
shared machine disturbs it less.

    OMP_NUM_THREADS=1 python benchmarks/heldout_kl_cost.py --model default --out /tmp/heldout-kl-cost
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

import ntp_rl.stages.heldout_kl as heldout_kl
from ntp_rl.cli import main


def instrument() -> tuple[list[float], list[float]]:
    """Time `evaluate` and the log-probability passes it runs (outside training), from HeldoutKl."""
    evaluations: list[float] = []
    passes: list[float] = []
    evaluate = heldout_kl.HeldoutKl.evaluate

    def timed_evaluate(self, *args, **kwargs):
        start = time.process_time()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            evaluations.append(time.process_time() - start)

    def timed_logps(self, *args, **kwargs):
        start = time.process_time()
        try:
            return super(heldout_kl.HeldoutKl, self)._get_per_token_logps_and_entropies(*args, **kwargs)
        finally:
            if not self.model.training:
                passes.append(time.process_time() - start)

    heldout_kl.HeldoutKl.evaluate = timed_evaluate
    heldout_kl.HeldoutKl._get_per_token_logps_and_entropies = timed_logps
    return evaluations, passes


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the run")
    parser.add_argument("--eval-examples", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=48)
    options = parser.parse_args()
    evaluations, passes = instrument()
    batch = options.eval_examples * options.num_generations
    recipe = {
        "run": {"name": "heldout-kl-cost", "output_dir": str(options.out)},
        "model": {"name_or_path": options.model, "dtype": "float32"},
        "data": {"arithmetic": {"num_train": 64, "num_test": 8}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 0,
                "trainer": {"max_steps": 2, "per_device_train_batch_size": 4},
            },
            {
                "kind": "rl",
                "rewards": [{"name": "math_accuracy", "weight": 1.0}],
                "eval_examples": options.eval_examples,
                "trainer": {
                    "beta": 0.0,
                    "max_steps": 2,
                    "eval_steps": 1,
                    "per_device_train_batch_size": batch,
                    "num_generations": options.num_generations,
                    "max_completion_length": options.max_completion_length,
                    "save_steps": 100,
                },
            },
        ],
    }
    options.out.mkdir(parents=True, exist_ok=False)
    path = options.out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    if main(["train", str(path)]) != 0:
        raise SystemExit("the run failed")
    logs = [json.loads(line) for line in (options.out / "heldout-kl-cost" / "rl" / "metrics.jsonl").open()]
    kls = [record["eval_kl"] for record in logs if "eval_kl" in record]
    per_evaluation = len(passes) // max(len(evaluations), 1)
    print(f"{batch} held-out completions per evaluation, {per_evaluation} log-probability passes each")
    print("| evaluation | eval_kl | evaluation CPU s | passes CPU s (reference, policy) | reference share |")
    print("|---|---|---|---|---|")
    for i, total in enumerate(evaluations):
        own = passes[i * per_evaluation : (i + 1) * per_evaluation]
        reference = sum(own[0::2])  # per batch: the reference's pass while scoring, then the policy's
        cells = ", ".join(f"{p:.1f}" for p in own)
        kl = f"{kls[i]:.4f}" if i < len(kls) else "-"
        print(f"| {i} | {kl} | {total:.1f} | {cells} | {100 * reference / total:.0f} % |")


if __name__ == "__main__":
    main_()
