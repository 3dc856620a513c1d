"""pass@k: the chance that at least one of k samples is correct, by the unbiased estimator.

A local `evaluate` module. Per item with n samples of which c are correct, pass@k is
1 - C(n-c, k) / C(n, k) (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"),
computed by `ntp_rl.stats.pass_at_k`; the report's value is its mean over items.

Inputs: `correct`, one list of booleans per item (its n samples).
Arguments: `ks`, the k values (default: 1, 2, 4, 8, ... up to the fewest samples of any item).
Returns: {"pass@k": float for each k, "per_item": {"pass@k": [float per item]}}.
"""

import datasets
import evaluate

from ntp_rl.stats import pass_at_k


class PassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Chen et al. 2021, arXiv:2107.03374",
            inputs_description="correct: list[list[bool]], one list of per-sample verdicts per item",
            features=datasets.Features({"correct": datasets.Sequence(datasets.Value("bool"))}),
        )

    def _compute(self, correct, ks=None):
        fewest = min((len(item) for item in correct), default=0)
        if ks is None:
            ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= fewest]
        too_big = [k for k in ks if k > fewest]
        if too_big:
            raise ValueError(
                f"pass@k with k={too_big} needs at least that many samples per item (have {fewest})"
            )
        out, per_item = {}, {}
        for k in ks:
            values = [pass_at_k(len(item), sum(item), k) for item in correct]
            out[f"pass@{k}"] = sum(values) / len(values)
            per_item[f"pass@{k}"] = values
        return {**out, "per_item": per_item}
