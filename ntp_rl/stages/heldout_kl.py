"""KL(policy || its start) on the held-out completions of every evaluation during RL, for any beta.

Gao et al. 2022 plot the gold and the proxy reward against sqrt(KL) from the RL policy to its
initialisation; the rl stage's over-optimisation curve (overoptimisation.py) does the same at each
of the held-out evaluations TRL runs when the stage has `eval_examples`. The KL is TRL's own `eval_kl`:
per completion token, on the completions each evaluation samples, at the sampling temperature, to a
reference that is the policy's start (a frozen "ref" copy of the adapter it started from, or, for a
fresh adapter, the base with adapters disabled: the SFT policy either way). GRPOTrainer's estimator
is k3 = exp(r) - r - 1 with r = log q(token) - log p(token) (p the policy, q its start), unbiased per
token and never negative; RLOOTrainer's is the first-order -r, which can be negative.

TRL computes it only when it penalises it (`trainer.beta` != 0). With `beta: 0` it keeps no
reference and computes nothing, so `HeldoutKl`:
- keeps the reference TRL keeps with a penalty: a frozen "ref" copy of a starting adapter, made
  before training;
- sets the trainer's coefficient to `KL_PROBE_BETA` for the duration of each evaluation only, so
  that TRL's own evaluation computes the reference's log-probabilities and its KL, and logs `eval_kl`,
  exactly as with a KL penalty. Training never sees it. The evaluation's loss gains
  KL_PROBE_BETA x KL (RLOO: its rewards lose it), far below anything those numbers are read for.

Cost: one forward pass of the reference per evaluation batch, what TRL spends on its KL with a
penalty. Checked with TRL 1.16: both trainers read `self.beta` when they score a batch and compute
the loss, and nothing else about evaluation depends on it; no public option computes a KL without a
KL penalty.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of the adapter the policy started from
KL_PROBE_BETA = 1e-12  # nonzero: TRL computes the KL; tiny: what it adds to the eval loss is nothing


def kl_estimator(algorithm: str) -> str:
    """Which estimator the stage's `eval_kl` is: RLOO's first-order one, else GRPO's k3."""
    return "k1" if algorithm == "rloo" else "k3"


def keep_reference_adapter(model: Any) -> None:
    """Add a frozen copy of the PEFT model's "default" adapter as "ref", as TRL does when beta != 0."""
    if REFERENCE_ADAPTER in model.peft_config:
        return
    model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            reference = model.get_parameter(name.replace(".default.", f".{REFERENCE_ADAPTER}."))
            reference.data.copy_(param.data)
            reference.requires_grad_(False)


def with_heldout_kl(trainer_class: type) -> type:
    """`trainer_class` (TRL's GRPOTrainer or RLOOTrainer, or a subclass) logging `eval_kl` at any beta."""
    return type(trainer_class.__name__, (HeldoutKl, trainer_class), {})


class HeldoutKl:
    """Mixin for TRL's GRPOTrainer and RLOOTrainer: `eval_kl` at every evaluation, also with beta = 0.

    Keyword arguments only (as the rl stage builds its trainer).
    """

    def __init__(self, **kwargs: Any):
        from accelerate.utils import is_peft_model

        args, model = kwargs.get("args"), kwargs.get("model")
        self._probe_kl = args is not None and args.beta == 0.0 and kwargs.get("eval_dataset") is not None
        started_from_adapter = is_peft_model(model)
        super().__init__(**kwargs)
        if not self._probe_kl:
            return
        if not is_peft_model(self.model):
            logger.warning(
                "held-out KL: the policy is not a PEFT model, so it has no reference; not measured"
            )
            self._probe_kl = False
        elif started_from_adapter:
            # Before training, so the adapter the policy starts from (a resumed run loads its checkpoint
            # into "default" later, in train()). RLOOTrainer keeps one at any beta; GRPOTrainer only
            # with a KL penalty. A fresh adapter needs none: disabled, it is the base it started as.
            keep_reference_adapter(self.model)

    def evaluate(self, *args: Any, **kwargs: Any):
        if not self._probe_kl:
            return super().evaluate(*args, **kwargs)
        self.beta = KL_PROBE_BETA
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.beta = 0.0
