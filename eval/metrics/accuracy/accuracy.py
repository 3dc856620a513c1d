"""accuracy: the share of completions judged correct, averaged per item, then over items.

A local `evaluate` module (load it with `evaluate.load("eval/metrics/accuracy")`, offline). With one
greedy completion per item this is greedy accuracy; with n samples per item it is sampled pass@1.

Inputs: `correct`, one list of booleans per item (one per sample).
Returns: {"accuracy": float, "per_item": {"accuracy": [float per item]}}; the harness bootstraps
its confidence interval over `per_item`.
"""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="correct: list[list[bool]], one list of per-sample verdicts per item",
            features=datasets.Features({"correct": datasets.Sequence(datasets.Value("bool"))}),
        )

    def _compute(self, correct):
        per_item = [sum(item) / len(item) if item else 0.0 for item in correct]
        mean = sum(per_item) / len(per_item) if per_item else float("nan")
        return {"accuracy": mean, "per_item": {"accuracy": per_item}}
