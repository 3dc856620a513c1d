"""maj@k: whether the most common answer among the first k samples is correct (majority vote).

A local `evaluate` module, computed by `ntp_rl.stats.majority_at_k`: unreadable answers (None) do
not vote, ties go to the answer seen first, and an item scores when a sample carrying the winning
answer was judged correct (so "42" and "42.0" count as one answer only if they were extracted alike).

Inputs: `answers` (the extracted answer of each sample, "" or None when unreadable) and `correct` (the
verdict of each sample), one list per item.
Arguments: `ks`, the k values (default: 1, 2, 4, 8, ... up to the fewest samples of any item).
Returns: {"maj@k": float for each k, "per_item": {"maj@k": [0.0 or 1.0 per item]}}.
"""

import datasets
import evaluate

from ntp_rl.stats import majority_at_k


class MajAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Wang et al. 2022 (self-consistency), arXiv:2203.11171",
            inputs_description="answers: list[list[str | None]]; correct: list[list[bool]]",
            features=datasets.Features(
                {
                    "answers": datasets.Sequence(datasets.Value("string")),
                    "correct": datasets.Sequence(datasets.Value("bool")),
                }
            ),
        )

    def _compute(self, answers, correct, ks=None):
        fewest = min((len(item) for item in correct), default=0)
        if ks is None:
            ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= fewest]
        too_big = [k for k in ks if k > fewest]
        if too_big:
            raise ValueError(
                f"maj@k with k={too_big} needs at least that many samples per item (have {fewest})"
            )
        out, per_item = {}, {}
        for k in ks:
            values = [
                float(majority_at_k([x or None for x in a], c, k))
                for a, c in zip(answers, correct, strict=True)
            ]
            out[f"maj@{k}"] = sum(values) / len(values)
            per_item[f"maj@{k}"] = values
        return {**out, "per_item": per_item}
