"""extraction_failure_rate: the share of completions whose final answer could not be read at all.

A local `evaluate` module. Tells "no answer / unparseable / timed out" apart from a wrong answer:
a model that stops writing the `Answer:` line looks worse on accuracy for a different reason than a
model that computes badly. Averaged per item, then over items.

Inputs: `parse_failed`, one list of booleans per item (one per sample).
Returns: {"extraction_failure_rate": float, "per_item": {"extraction_failure_rate": [float per item]}}.
"""

import datasets
import evaluate


class ExtractionFailureRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="parse_failed: list[list[bool]], one list of per-sample flags per item",
            features=datasets.Features({"parse_failed": datasets.Sequence(datasets.Value("bool"))}),
        )

    def _compute(self, parse_failed):
        per_item = [sum(item) / len(item) if item else 0.0 for item in parse_failed]
        mean = sum(per_item) / len(per_item) if per_item else float("nan")
        return {"extraction_failure_rate": mean, "per_item": {"extraction_failure_rate": per_item}}
