"""KL(policy || its start) on the held-out completions of every evaluation during RL, for any beta.

Gao et al. 2022 plot the gold and the proxy reward against sqrt(KL) from the RL policy to its
initialisation; the rl stage's over-optimisation curve (overoptimisation.py) does the same at each
of the held-out evaluations TRL runs when the stage has `eval_examples`. The KL is per completion
token, on the completions each evaluation samples, at the sampling temperature:

    k3 = exp(r) - r - 1,  r = log q(token) - log p(token),  p the policy, q its start,

averaged over the completion tokens (the estimator TRL's GRPOTrainer uses for its KL penalty: an
unbiased estimate of KL(p || q) per token that is never negative).

- `trainer.beta` != 0: TRL computes it itself and logs `eval_kl`; nothing is added. Its reference is
  a frozen copy ("ref") of the adapter the policy started from, or, for a fresh adapter, the base
  with adapters disabled: the SFT policy either way.
- `trainer.beta` == 0: TRL keeps no reference and computes no KL. `HeldoutKl` keeps the same
  reference TRL would (a frozen "ref" copy of a starting adapter) and, in evaluation only, computes
  the same estimator on the same completions into the same `eval_kl`: one forward pass of the
  reference and one of the policy per evaluation batch (the policy's log-probabilities are reused
  when TRL kept them), small beside sampling the completions a token at a time. Training is
  untouched.

TRL's RLOOTrainer with beta != 0 logs the first-order estimator instead (log p - log q per token,
which can be negative); the stage records which one its `eval_kl` is (`kl_estimator`).
Checked with TRL 1.16: `_get_per_token_logps_and_entropies` and `_metrics` are the trainers' own
log-probability routine and metric buffer (the same ones their KL uses); no public option computes
a KL without a KL penalty.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of the adapter the policy started from


def kl_estimator(algorithm: str, beta: float) -> str:
    """Which estimator the stage's `eval_kl` is: TRL RLOO's own (beta != 0) is first-order, else k3."""
    return "k1" if algorithm == "rloo" and beta != 0.0 else "k3"


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
    """`trainer_class` (TRL's GRPOTrainer or RLOOTrainer, or a subclass) measuring `eval_kl` at any beta."""
    return type(trainer_class.__name__, (HeldoutKl, trainer_class), {})


class HeldoutKl:
    """Mixin for TRL's GRPOTrainer and RLOOTrainer: `eval_kl` at every evaluation, also with beta = 0.

    Keyword arguments only (as the rl stage builds its trainer).
    """

    def __init__(self, **kwargs: Any):
        from accelerate.utils import is_peft_model

        args, model = kwargs.get("args"), kwargs.get("model")
        self._heldout_kl = args is not None and args.beta == 0.0 and kwargs.get("eval_dataset") is not None
        if self._heldout_kl and is_peft_model(model):
            # Copied before training: the adapter the policy starts from (a resumed run loads its
            # checkpoint into "default" later, in train()).
            keep_reference_adapter(model)
        super().__init__(**kwargs)
        if self._heldout_kl and not is_peft_model(self.accelerator.unwrap_model(self.model)):
            logger.warning(
                "held-out KL: the policy is not a PEFT model, so it has no reference; not measured"
            )
            self._heldout_kl = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._heldout_kl and not self.model.training:
            # TRL averages the buffer's values over the evaluation and logs them as `eval_kl`.
            self._metrics["eval"]["kl"].append(self.heldout_kl(model, inputs))
        return loss

    def heldout_kl(self, model, inputs: dict[str, Any]) -> float:
        """Mean k3 over the batch's completion tokens (all processes), the policy against its start."""
        import torch
        from trl.trainer.utils import use_adapter

        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        keep = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        batch_size = self.args.per_device_eval_batch_size
        with torch.no_grad():
            policy = inputs.get("old_per_token_logps")  # computed in this evaluation, before any update
            if policy is None:
                policy, _, _ = self._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, keep, batch_size=batch_size
                )
            unwrapped = self.accelerator.unwrap_model(self.model)
            start = REFERENCE_ADAPTER if REFERENCE_ADAPTER in unwrapped.peft_config else None
            with use_adapter(unwrapped, adapter_name=start):  # None: adapters disabled, the base
                reference, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, keep, batch_size=batch_size
                )
            log_ratio = reference - policy
            per_token = torch.exp(log_ratio) - log_ratio - 1
            totals = torch.stack([(per_token * mask).sum(), mask.sum().float()])
            totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()
