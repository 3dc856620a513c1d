"""TRL's GRPO and RLOO trainers, minus work that cannot change a step's update.

`GRPOTrainer` and `RLOOTrainer` here are TRL's classes with three changes. Each leaves the sampled
distribution and the gradient of every step as TRL computes them, up to float round-off
(tests/test_rl_trainer.py compares a step of each with TRL's own on the same seed):

- **Completions with zero advantage skip the forward and backward pass.** A group whose completions
  all scored the same has advantage 0 in every row; with no KL term in the loss (GRPO `beta: 0`; RLOO
  puts its KL in the reward), no entropy bonus or entropy mask and no auxiliary loss, such a row adds
  exactly zero to the loss and to the gradient, yet TRL still runs the policy over it and
  back-propagates it. Where the loss's normaliser does not depend on which rows share a micro-batch
  (`dapo`, `cispo`, `vespo`: the generation batch's token count, computed by TRL before the split;
  `grpo`, `dr_grpo`, `sapo`, `luspo` and RLOO: rows per micro-batch, the same for every one), the
  kept rows of a generation batch are regrouped, the completions of one prompt together, into as few
  full micro-batches as they fill, each loss scaled by its rows over TRL's; the rest of the
  accumulation window is empty micro-batches that cost nothing. For `bnpo` (each micro-batch's own
  token count) rows stay in TRL's micro-batches and the loss is scaled by the kept tokens' share.
  With several processes rows also stay where TRL put them and every micro-batch keeps at least one
  row: TRL's loss gathers metrics across ranks, and the last micro-batch's backward synchronises
  gradients, so every rank must run both. The share of generated completions that were
  back-propagated is logged as `useful_share`; TRL's per-micro-batch metrics (entropy, clip ratios)
  then describe the kept rows. Anything in the setup that gives a zero-advantage row a gradient turns
  the skipping off, with one log line saying why.
- **A prompt shared by several completions runs through the policy once**, in generation
  (`ntp_rl.generation.shared_prompt_prefill`: the prompt's prefill once per group, the same random
  draws) and in the training forward (`shared_prefix_logps`): its keys and values are computed once
  and expanded to each row, so a group of G completions pays for its prompt once instead of G times,
  in the forward and the backward pass. The training half needs one process and no gradient
  checkpointing (it turns the KV cache off); both need a text-only model.
- **Generation runs on merged LoRA weights.** Unmerged LoRA adds a dozen small operations per layer
  and generated token, which dominate decoding a small model on a CPU. For each generation the active
  adapter is folded into a fresh copy of each adapted weight, and the original tensors are put back
  afterwards, untouched (merging in place and unmerging again would leave rounding drift in the base
  weights after every step). The transient copies cost the adapted weights' memory once, during
  generation only, when no training activations are held. On a CPU the linear layers then multiply
  by weights laid out once per generation for oneDNN (`ntp_rl.generation.prepacked_linears`): the
  same products, faster, for a packed copy of the weights while generating.

- **Sampling draws one random number per completion and token** (`ntp_rl.generation.InverseCdfSampler`),
  where `torch.multinomial` draws one per vocabulary entry: the same distribution at a fraction of
  the cost on a CPU, but other tokens than TRL would draw from the same seed.

On an rl stage, `skip_zero_advantage: false`, `share_prompt_prefix: false` and `fast_sampling: false`
turn the first, second and last off.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import trl

from ntp_rl.generation import (
    cache_keyword,
    inverse_cdf_sampling,
    merged_lora_weights,
    prepacked_linears,
    shared_prompt_prefill,
)

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


def _per_row(inputs: dict[str, Any]) -> bool:
    """Whether every key of a micro-batch is one this module knows how to select rows of."""
    return not {key for key, value in inputs.items() if value is not None} - PER_ROW_KEYS - SCALAR_KEYS


def _is_row_tensor(key: str, value: Any) -> bool:
    """A tensor with one entry per row (selected and concatenated by row); scalars are shared."""
    return key not in SCALAR_KEYS and isinstance(value, torch.Tensor) and value.dim() > 0


def _select(inputs: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    """Rows `index` of a micro-batch, with the completion columns only dropped rows needed trimmed."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        out[key] = value.index_select(0, index) if _is_row_tensor(key, value) else value
    width = inputs["completion_mask"].size(1)
    if index.numel():
        # Padding columns at the end that only dropped rows needed: the forward over the kept rows'
        # positions is causal, so their log-probabilities do not depend on these columns.
        used = out["completion_mask"].sum(0).nonzero()
        kept_width = int(used.max()) + 1 if used.numel() else 1
        if kept_width < width:
            for key in PER_TOKEN_KEYS & set(out):
                value = out[key]
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.size(1) == width:
                    out[key] = value[:, :kept_width]
    return out


def drop_rows(inputs: dict[str, Any], normaliser: str, keep_one: bool) -> tuple[dict[str, Any], int, int]:
    """One micro-batch without its zero-advantage rows, and (rows kept, rows in).

    The returned dict carries LOSS_SCALE_KEY: the factor that makes the loss over the kept rows equal
    to TRL's over all of them. Rows dropped contribute exactly zero to TRL's numerator, so only its
    normaliser needs the factor. `keep_one` keeps a (zero-advantage, zero-loss) row in a micro-batch
    that would otherwise be empty.
    """
    rows = inputs["advantages"].size(0)
    if not _per_row(inputs):
        return inputs, rows, rows
    keep = ~zero_advantage_rows(inputs["advantages"])
    kept = int(keep.sum())
    if kept == rows:
        return inputs, rows, rows
    if kept == 0 and keep_one:
        keep[0] = True
    index = keep.nonzero().squeeze(1)
    out = _select(inputs, index)
    mask = inputs["completion_mask"]
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


def repack(buffer: list[dict[str, Any]], normaliser: str) -> tuple[list[dict[str, Any]], int, int] | None:
    """A generation batch's micro-batches with zero-advantage rows dropped and the rest regrouped.

    For loss normalisers that do not depend on which rows share a micro-batch: `rows` (TRL divides each
    micro-batch's sum by its row count, the same for all, so the step's loss is the sum over all rows
    over rows x micro-batches) and `batch` (the generation batch's token count). The kept rows are
    ordered so that the completions of one prompt sit together (their prompt is then run once, see
    `shared_prefix_logps`) and packed into as few full micro-batches as they fill; the rest of the
    accumulation window is empty micro-batches, first, so that it still ends with a backward pass.
    Returns (micro-batches, rows kept, rows in), or None when a micro-batch has keys not known here.
    """
    if not buffer or not all(_per_row(mb) for mb in buffer):
        return None
    rows_per_batch = buffer[0]["advantages"].size(0)
    whole: dict[str, Any] = {}
    for key, value in buffer[0].items():
        whole[key] = torch.cat([mb[key] for mb in buffer]) if _is_row_tensor(key, value) else value
    total = whole["advantages"].size(0)
    index = (~zero_advantage_rows(whole["advantages"])).nonzero().squeeze(1)
    if index.numel():
        prompts = torch.cat([whole["prompt_ids"], whole["prompt_mask"]], dim=1).index_select(0, index)
        _, group = torch.unique(prompts, dim=0, return_inverse=True)
        index = index[torch.sort(group, stable=True).indices]
    chunks = [index[i : i + rows_per_batch] for i in range(0, index.numel(), rows_per_batch)]
    packed = []
    for chunk in [index[:0]] * (len(buffer) - len(chunks)) + chunks:
        micro = _select(whole, chunk)
        micro[LOSS_SCALE_KEY] = chunk.numel() / rows_per_batch if normaliser == "rows" else 1.0
        packed.append(micro)
    return packed, int(index.numel()), total


def shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep, compute_entropy, cache_kw="cache"):
    """TRL's per-token log-probabilities (and entropies) with each distinct prompt run through the model once.

    Rows with the same prompt (the completions of one group) share the prompt's keys and values: the
    prompt, less its last token, is run once per distinct prompt with a KV cache, the cache is
    expanded to every row (an index_select, so gradients from every row flow back into the one
    prompt pass), and the last prompt token plus the completion run per row on top of it, through
    TRL's fused LM head as TRL runs them. Positions continue from the cache, so each token sees the
    positions and context it has in TRL's single pass. Returns None when no prompt repeats.
    """
    prompt_length = input_ids.size(1) - logits_to_keep
    if prompt_length < 2:
        return None
    prompts = torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length]], dim=1)
    distinct, row_of = torch.unique(prompts, dim=0, return_inverse=True)
    if distinct.size(0) == input_ids.size(0):
        return None
    first = torch.full((distinct.size(0),), input_ids.size(0), dtype=torch.long, device=input_ids.device)
    first.scatter_reduce_(0, row_of, torch.arange(input_ids.size(0), device=input_ids.device), reduce="amin")
    prefix = model(
        input_ids=input_ids[first, : prompt_length - 1],
        attention_mask=attention_mask[first, : prompt_length - 1],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(prefix, cache_kw)
    cache.batch_select_indices(row_of)
    tail = input_ids[:, prompt_length - 1 :]
    labels = tail.masked_fill(attention_mask[:, prompt_length - 1 :] == 0, -100)
    labels[:, 0] = -100
    outputs = model(
        input_ids=tail,
        attention_mask=attention_mask,
        labels=labels,
        **{cache_kw: cache},
        fused_lm_head=True,
    )
    logps = outputs.log_probs[:, -logits_to_keep:]
    entropies = outputs.entropy[:, -logits_to_keep:] if compute_entropy else None
    return logps, entropies


class SkipZeroAdvantageMixin:
    """The zero-advantage skipping, prompt sharing, merged-weight generation and sampling of this module."""

    skip_zero_advantage: bool = True
    share_prompt_prefix: bool = True
    fast_sampling: bool = True

    def __init__(
        self,
        *args,
        skip_zero_advantage: bool = True,
        share_prompt_prefix: bool = True,
        fast_sampling: bool = True,
        **kwargs,
    ):
        self.skip_zero_advantage = skip_zero_advantage
        self.share_prompt_prefix = share_prompt_prefix
        self.fast_sampling = fast_sampling
        super().__init__(*args, **kwargs)
        self._skip_setup()

    def _skip_setup(self) -> None:
        """Decide once whether skipping leaves the gradient as TRL's; log why not otherwise."""
        self._skip_normaliser = None
        blocker = self._share_blocker() if self.share_prompt_prefix else None
        self._share = self.share_prompt_prefix and blocker is None
        if blocker is not None:
            logger.info("each completion runs its prompt through the policy again: %s", blocker)
        self._cache_kw = cache_keyword(self.accelerator.unwrap_model(self.model))
        if not self.skip_zero_advantage:
            return
        reason = self._skip_blocker()
        if reason is not None:
            logger.info("every completion is back-propagated: %s", reason)
            return
        self._skip_normaliser = self._loss_normaliser()

    def _loss_normaliser(self) -> str:
        return "rows"

    def _share_blocker(self) -> str | None:
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            return "FSDP and DeepSpeed shard the forward pass across ranks"
        if self.accelerator.num_processes > 1:
            return "DistributedDataParallel expects one forward pass per backward"
        config = self.accelerator.unwrap_model(self.model).config
        if getattr(config, "is_encoder_decoder", False) or config.get_text_config() is not config:
            return "only text-only decoder models run a prompt through a KV cache here"
        if self.args.gradient_checkpointing:
            return "gradient checkpointing turns the KV cache off in training"
        return None

    def _skip_blocker(self) -> str | None:
        if getattr(self, "aux_loss_enabled", False):
            return "the model's auxiliary (router) loss does not depend on the advantage"
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            return "FSDP and DeepSpeed shard the forward pass across ranks"
        return None

    def _prepare_inputs(self, generation_batch):
        before = getattr(self, "_buffered_inputs", None)
        inputs = super()._prepare_inputs(generation_batch)
        normaliser = getattr(self, "_skip_normaliser", None)
        if not self.model.training or normaliser is None:
            return inputs
        buffer = self._buffered_inputs
        if buffer is before:  # a step of the same generation batch: already processed
            return inputs
        several = self.accelerator.num_processes > 1
        packed = None if several or normaliser == "tokens" else repack(buffer, normaliser)
        if packed is not None:
            buffer, kept, total = packed
        else:
            # Several processes: every rank runs every micro-batch (keep_one); bnpo: each
            # micro-batch's own token count is its normaliser, so rows stay where TRL put them.
            dropped = [drop_rows(mb, normaliser, keep_one=several) for mb in buffer]
            buffer = [mb for mb, _, _ in dropped]
            kept, total = sum(k for _, k, _ in dropped), sum(n for _, _, n in dropped)
        self._buffered_inputs = buffer
        self._metrics["train"]["useful_share"].append(kept / total if total else 0.0)
        return buffer[self._step % self.args.steps_per_generation]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scale = inputs.get(LOSS_SCALE_KEY)
        if scale is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != LOSS_SCALE_KEY}
        if inputs["advantages"].size(0) == 0:
            # Nothing to learn from in this micro-batch: a zero loss the trainer can still back-propagate.
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch) * scale

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        **kwargs,
    ):
        plain = not any(value is not None and value is not False for value in kwargs.values())
        if (
            getattr(self, "_share", False)
            and plain
            and (batch_size or input_ids.size(0)) >= input_ids.size(0)
        ):
            with self.accelerator.autocast():
                shared = shared_prefix_logps(
                    model, input_ids, attention_mask, logits_to_keep, compute_entropy, self._cache_kw
                )
            if shared is not None:
                return shared[0], shared[1], None
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )

    def _generate_single_turn(self, *args, **kwargs):
        if (
            getattr(self, "use_vllm", False)
            or getattr(self, "use_transformers_continuous_batching", False)
            or getattr(self, "is_fsdp_enabled", False)
            or getattr(self, "is_deepspeed_enabled", False)
        ):
            return super()._generate_single_turn(*args, **kwargs)
        policy = self.accelerator.unwrap_model(self.model)
        with contextlib.ExitStack() as stack:
            stack.enter_context(merged_lora_weights(policy))
            stack.enter_context(prepacked_linears(policy))  # after merging: packs the merged weights
            if self.share_prompt_prefix:
                stack.enter_context(shared_prompt_prefill(policy))
            if self.fast_sampling:
                stack.enter_context(inverse_cdf_sampling(policy))
            return super()._generate_single_turn(*args, **kwargs)


class GRPOTrainer(SkipZeroAdvantageMixin, trl.GRPOTrainer):
    """TRL's GRPOTrainer; see the module docstring for what differs and why the update does not."""

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
