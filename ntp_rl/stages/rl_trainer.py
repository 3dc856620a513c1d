"""TRL's GRPO and RLOO trainers, minus work that cannot change a step's update.

`GRPOTrainer` and `RLOOTrainer` here are TRL's classes with two changes. Each leaves the sampled
distribution and the gradient of every step as TRL computes them (tests/test_rl_trainer.py compares a
step of each with TRL's own on the same seed):

- **Completions with zero advantage skip the forward and backward pass.** A group whose completions
  all scored the same has advantage 0 in every row; with no KL term (`beta: 0`), no entropy bonus or
  entropy mask and no auxiliary loss, such a row adds exactly zero to the loss and to the gradient, yet
  TRL still runs the policy over it and back-propagates it. Here each micro-batch keeps TRL's split
  (TRL's shuffle, TRL's micro-batch of each row), drops those rows, trims the padding columns that
  only they needed, and rescales the loss by what the dropped rows counted in the loss's normaliser
  (rows for `grpo`, `dr_grpo`, `sapo`, `luspo` and RLOO; tokens for `bnpo`; nothing for `dapo`,
  `cispo` and `vespo`, whose normaliser is the whole generation batch's token count, which TRL
  computed before the split). A micro-batch left empty costs nothing. With several processes every
  micro-batch keeps at least one row: TRL's loss gathers metrics across ranks, and the last
  micro-batch's backward synchronises gradients, so every rank must run both. The share of generated
  completions that were back-propagated is logged as `useful_share`; TRL's per-micro-batch metrics
  (entropy, clip ratios) then describe the kept rows. Anything else in the setup that gives a
  zero-advantage row a gradient turns the skipping off, with one log line saying why.
- **Generation runs on merged LoRA weights.** Unmerged LoRA adds a dozen small operations per layer
  and generated token, which dominate decoding a small model on a CPU. For each generation the active
  adapter is folded into a fresh copy of each adapted weight, and the original tensors are put back
  afterwards, untouched (merging in place and unmerging again would leave rounding drift in the base
  weights after every step). The transient copies cost the adapted weights' memory once, during
  generation only, when no training activations are held.

`skip_zero_advantage: false` on an rl stage turns the first off (TRL's own computation, row for row).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import trl

from ntp_rl.generation import merged_lora_weights

logger = logging.getLogger(__name__)

# How each loss type normalises its sum of per-token losses (TRL 1.16's `_compute_loss`).
ROW_NORMALISED = frozenset({"grpo", "sapo", "dr_grpo", "luspo"})
TOKEN_NORMALISED = frozenset({"bnpo"})
BATCH_NORMALISED = frozenset({"dapo", "cispo", "vespo"})  # by num_items_in_batch, set before the split

# Per-row tensors of a micro-batch (first dimension = rows) and per-token ones (second = completion
# length). A micro-batch with any other key (images, tool masks of multimodal runs) is left whole.
PER_ROW_KEYS = frozenset(
    {
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "advantages",
        "old_per_token_logps",
        "ref_per_token_logps",
        "sampling_per_token_logps",
        "importance_sampling_ratio",
        "old_logps",
    }
)
PER_TOKEN_KEYS = frozenset(
    {
        "completion_ids",
        "completion_mask",
        "old_per_token_logps",
        "ref_per_token_logps",
        "sampling_per_token_logps",
        "importance_sampling_ratio",
    }
)
SCALAR_KEYS = frozenset({"num_items_in_batch"})
LOSS_SCALE_KEY = "_ntp_rl_loss_scale"


def zero_advantage_rows(advantages: torch.Tensor) -> torch.Tensor:
    """Boolean per row: every advantage of the row is exactly zero."""
    if advantages.dim() == 1:
        return advantages == 0
    return (advantages == 0).flatten(1).all(dim=1)


def drop_rows(inputs: dict[str, Any], normaliser: str, keep_one: bool) -> tuple[dict[str, Any], int, int]:
    """The micro-batch without its zero-advantage rows, and (rows kept, rows in).

    The returned dict carries LOSS_SCALE_KEY: the factor that makes the loss over the kept rows equal
    to TRL's over all of them. Rows dropped contribute exactly zero to TRL's numerator, so only its
    normaliser needs the factor. `keep_one` keeps a (zero-advantage, zero-loss) row in a micro-batch
    that would otherwise be empty.
    """
    rows = inputs["advantages"].size(0)
    if set(inputs) - PER_ROW_KEYS - SCALAR_KEYS:
        return inputs, rows, rows
    keep = ~zero_advantage_rows(inputs["advantages"])
    kept = int(keep.sum())
    if kept == rows:
        return inputs, rows, rows
    if kept == 0 and keep_one:
        keep[0] = True
    index = keep.nonzero().squeeze(1)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in SCALAR_KEYS or not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
        else:
            out[key] = value.index_select(0, index)
    mask = inputs["completion_mask"]
    if index.numel():
        # Padding columns at the end that only dropped rows needed: the forward over the kept rows'
        # positions is causal, so their log-probabilities do not depend on these columns.
        used = out["completion_mask"].sum(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        if width < mask.size(1):
            for key in PER_TOKEN_KEYS & set(out):
                if out[key].dim() >= 2 and out[key].size(1) == mask.size(1):
                    out[key] = out[key][:, :width]
    if normaliser == "rows":
        scale = index.numel() / rows
    elif normaliser == "tokens":
        scale = (
            float(out["completion_mask"].sum().clamp(min=1.0) / mask.sum().clamp(min=1.0))
            if index.numel()
            else 0.0
        )
    else:
        scale = 1.0
    out[LOSS_SCALE_KEY] = scale
    return out, kept, rows


class SkipZeroAdvantageMixin:
    """The zero-advantage skipping and merged-weight generation of this module, over a TRL trainer."""

    skip_zero_advantage: bool = True

    def _skip_setup(self) -> None:
        """Decide once whether skipping leaves the gradient as TRL's; log why not otherwise."""
        self._skip_normaliser = None
        if not self.skip_zero_advantage:
            return
        reason = self._skip_blocker()
        if reason is not None:
            logger.info("every completion is back-propagated: %s", reason)
            return
        self._skip_normaliser = self._loss_normaliser()

    def _loss_normaliser(self) -> str:
        return "rows"

    def _skip_blocker(self) -> str | None:
        if getattr(self, "aux_loss_enabled", False):
            return "the model's auxiliary (router) loss does not depend on the advantage"
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            return "FSDP and DeepSpeed shard the forward pass across ranks"
        return None

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if not self.model.training or getattr(self, "_skip_normaliser", None) is None:
            return inputs
        keep_one = self.accelerator.num_processes > 1
        inputs, kept, rows = drop_rows(inputs, self._skip_normaliser, keep_one)
        if not (kept == 0 and keep_one):  # the one kept row carries no signal
            self._metrics["train"]["useful_share"].append(kept / rows)
        else:
            self._metrics["train"]["useful_share"].append(0.0)
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scale = inputs.get(LOSS_SCALE_KEY)
        if scale is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != LOSS_SCALE_KEY}
        if inputs["advantages"].size(0) == 0:
            # Nothing to learn from in this micro-batch: a zero loss the trainer can still back-propagate.
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch) * scale

    def _generate_single_turn(self, *args, **kwargs):
        merge = not (
            getattr(self, "use_vllm", False)
            or getattr(self, "use_transformers_continuous_batching", False)
            or getattr(self, "is_fsdp_enabled", False)
            or getattr(self, "is_deepspeed_enabled", False)
        )
        context = (
            merged_lora_weights(self.accelerator.unwrap_model(self.model))
            if merge
            else contextlib.nullcontext()
        )
        with context:
            return super()._generate_single_turn(*args, **kwargs)


class GRPOTrainer(SkipZeroAdvantageMixin, trl.GRPOTrainer):
    """TRL's GRPOTrainer; see the module docstring for what differs and why the update does not."""

    def __init__(self, *args, skip_zero_advantage: bool = True, **kwargs):
        self.skip_zero_advantage = skip_zero_advantage
        super().__init__(*args, **kwargs)
        self._skip_setup()

    def _loss_normaliser(self) -> str:
        if self.loss_type in ROW_NORMALISED:
            return "rows"
        if self.loss_type in TOKEN_NORMALISED:
            return "tokens"
        return "batch"

    def _skip_blocker(self) -> str | None:
        if self.beta != 0.0:
            return "beta > 0: a completion with zero advantage still carries the KL term"
        if self.loss_type not in ROW_NORMALISED | TOKEN_NORMALISED | BATCH_NORMALISED:
            return f"loss_type {self.loss_type!r} is not one whose normaliser is known here"
        if self.top_entropy_quantile < 1.0:
            return "top_entropy_quantile < 1 masks tokens by a quantile over the whole micro-batch"
        if getattr(self, "_entropy_bonus_enabled", False):
            return "the entropy bonus does not depend on the advantage"
        return super()._skip_blocker()


class RLOOTrainer(SkipZeroAdvantageMixin, trl.RLOOTrainer):
    """TRL's RLOOTrainer (loss: the mean over rows; its KL term is in the reward, hence the advantage,
    so a zero-advantage row carries no gradient at any beta); see the module docstring."""

    def __init__(self, *args, skip_zero_advantage: bool = True, **kwargs):
        self.skip_zero_advantage = skip_zero_advantage
        super().__init__(*args, **kwargs)
        self._skip_setup()
