"""A learned reward model as a reward like any other: `LearnedReward` (recipe: `{reward_model: ...}`).

A reward model is a sequence classifier with one output: the base model with a LoRA adapter and a
score head, as the `reward_model` stage writes it (`<stage>/adapter/`), or a full model folder or hub
id of a `...ForSequenceClassification` model with one label. `LearnedReward` scores each
(prompt + completion) as one chat-templated conversation, the same way TRL's `RewardTrainer`
tokenised the preference pairs it was trained on, in length-sorted batches under `torch.no_grad`.
The model loads lazily, on the first call, so the object pickles (the loaded model is not pickled)
and a recipe check costs nothing. `score_conversations` is the scoring routine; the reward_model
stage measures its held-out pairwise accuracy with it, so training-time and RL-time scores agree.

Settings (`kwargs:` beside the spec):
- `normalize`: `none` (raw scores), `batch` (z-scored within each call: mean 0, std 1) or `group`
  (each score minus the mean score of the same prompt's completions in the call: GRPO's group).
- `dead_zone` (with `normalize: group`; default 0): a group-centred score within +-dead_zone becomes 0
  and the others move toward 0 by dead_zone (a soft threshold), so that score differences smaller
  than the reward model's noise give no advantage and only the differences it is sure of train the
  policy. The score's own units: read them from the eval report's reward-model scores. Use it with
  `scale_rewards: none` or `batch` (the rl stage refuses `group`, whose division by each group's
  spread would blow a just-past-the-zone difference back up to full size). A group is the
  completions of one prompt that one process scores: all of them when per_device_train_batch_size
  is a multiple of num_generations.
  With `batch` or `group`, the mean raw score of each call is logged as `<name>/raw_mean` beside
  TRL's `rewards/<name>/mean` of the normalised values.
- `batch_size`: conversations per forward pass; `max_length`: tokens kept per conversation (the
  end is kept: the score is read at the last token); `dtype`: float32 | bfloat16 | float16 | auto
  (bfloat16 where it is faster on this machine, as `model.dtype: auto`; resolved when the model loads);
  `base_model`: the base for an adapter whose recorded base has moved.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from .completions import completion_text
from .errors import RewardSpecError

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "batch", "group")
# Settings that shape training advantages; an eval stage scores a training reward model without them.
TRAINING_ONLY_KWARGS = ("normalize", "dead_zone")
RAW_MEAN_SUFFIX = "raw_mean"  # logged as <name>/raw_mean when the reward returns normalised scores
RAW_STD_SUFFIX = "raw_std"  # and their spread, <name>/raw_std (the mean's interval needs it)
ADAPTER_SUBFOLDER = "adapter"  # a reward_model stage folder keeps its adapter here


def resolve_reward_model_path(
    reference: str, base_dir: Path | None, label: str, unbuilt: frozenset[str] = frozenset()
) -> str:
    """The folder (or hub id) a `reward_model:` reference names, checked; `RewardSpecError` if unusable.

    A relative path is read from `base_dir` (the recipe's folder), then from the current folder. A
    stage folder stands for its `adapter/`. Paths in `unbuilt` are folders an earlier stage of the
    same run will write: accepted unchecked (the rl stage checks them again when it runs).
    """
    if reference in unbuilt:
        return reference
    path = Path(reference).expanduser()
    candidates = [path] if path.is_absolute() else [Path(base_dir) / path] if base_dir is not None else []
    if not path.is_absolute():
        candidates.append(Path.cwd() / path)
    folder = next((c for c in candidates if c.exists()), None)
    if folder is not None:
        return str(check_reward_model_folder(folder, label))
    if reference.count("/") == 1 and not reference.startswith((".", "/", "~")):
        return reference  # a hub id (org/name): cannot be checked offline
    raise RewardSpecError(
        f"{label}: no reward model folder {reference!r} (looked for {', '.join(str(c) for c in candidates)}). "
        "Name a reward_model stage of this run, a stage or adapter folder (runs/<run>/reward_model), a "
        "sequence-classification model folder, or a hub id (org/name)"
    )


def check_reward_model_folder(folder: Path, label: str) -> Path:
    """The loadable folder: a LoRA adapter over a sequence classifier, or a one-label classifier folder."""
    if not folder.is_dir():
        raise RewardSpecError(f"{label}: {folder} is a file, not a reward model folder")
    if (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file():
        folder = folder / ADAPTER_SUBFOLDER
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        try:
            task = json.loads(adapter_config.read_text()).get("task_type")
        except (OSError, ValueError) as exc:
            raise RewardSpecError(f"{label}: {adapter_config} is not readable JSON ({exc})") from None
        if task != "SEQ_CLS":
            raise RewardSpecError(
                f"{label}: {folder} holds a {task or 'untyped'} adapter, not a reward model (task_type SEQ_CLS); "
                "point at a reward_model stage's folder"
            )
        if not (folder / "adapter_model.safetensors").is_file():
            raise RewardSpecError(
                f"{label}: no adapter_model.safetensors in {folder}; adapters load from safetensors only"
            )
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if isinstance(base, str) and Path(base).expanduser().is_dir():  # as load() reads it
            from ntp_rl.errors import UserError
            from ntp_rl.models import check_adapter_fits

            try:
                check_adapter_fits(folder, Path(base).expanduser(), label)
            except UserError as exc:
                raise RewardSpecError(str(exc)) from None
        return folder
    config = folder / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise RewardSpecError(f"{label}: {config} is not readable JSON ({exc})") from None
        architectures = settings.get("architectures") or []
        labels = len(settings.get("id2label") or {"0": "score"})
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or labels != 1:
            raise RewardSpecError(
                f"{label}: {folder} is a {', '.join(architectures) or 'model'} with {labels} label(s), not a "
                "reward model (a ...ForSequenceClassification with one label)"
            )
        if not any(folder.glob("*.safetensors")):
            raise RewardSpecError(
                f"{label}: no safetensors weights in {folder}; weights load from safetensors only"
            )
        return folder
    raise RewardSpecError(
        f"{label}: {folder} has neither adapter_config.json (a reward_model stage's adapter) nor config.json "
        "(a model folder)"
    )


def conversation(prompt: Any, completion: Any) -> list[dict[str, str]]:
    """The messages a reward model scores: the prompt (messages or text) + the completion as the reply."""
    if isinstance(prompt, list):
        messages = list(prompt)
    elif prompt is None:
        messages = []
    else:
        messages = [{"role": "user", "content": str(prompt)}]
    if isinstance(completion, list):
        return messages + list(completion)
    return messages + [{"role": "assistant", "content": completion_text(completion)}]


def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[float]:
    """One score per conversation (chat template, right padding, score at the last non-pad token).

    A conversation that occurs more than once (a sample in several pairs) is scored once.
    """
    import torch

    tokenized = [
        tuple(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])
        for c in conversations
    ]
    if max_length is not None:
        tokenized = [x[-max_length:] for x in tokenized]
    distinct: dict[tuple, int] = {}
    slots = [distinct.setdefault(x, len(distinct)) for x in tokenized]
    ids = list(distinct)
    pad = model.config.pad_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # length-sorted: little padding
    scores = [0.0] * len(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).logits
                for row, i in enumerate(batch):
                    scores[i] = float(logits[row, 0])
    finally:
        model.train(was_training)
    return [scores[slot] for slot in slots]


def group_centred(values: list[float], groups: list[Any], dead_zone: float = 0.0) -> list[float]:
    """Each value minus the mean of its group's values (same key in `groups`), soft-thresholded."""
    members: dict[str, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(i)
    out = [0.0] * len(values)
    for indices in members.values():
        mean = sum(values[i] for i in indices) / len(indices)
        for i in indices:
            centred = values[i] - mean
            out[i] = math.copysign(max(abs(centred) - dead_zone, 0.0), centred)
    return out


def z_score(values: list[float]) -> list[float]:
    if not values:
        return []
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [0.0 if std == 0 else (v - mean) / std for v in values]


class LearnedReward:
    """A reward model's score of (prompt + completion); see the module docstring for the settings."""

    __name__ = "reward_model"  # TRL logs rewards/reward_model/mean

    def __init__(
        self,
        model: str,
        normalize: str = "none",
        dead_zone: float = 0.0,
        batch_size: int = 16,
        max_length: int | None = 1024,
        dtype: str = "float32",
        base_model: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        if isinstance(dead_zone, bool) or not isinstance(dead_zone, (int, float)) or not dead_zone >= 0:
            raise ValueError(f"dead_zone must be a number >= 0, got {dead_zone!r}")
        if dead_zone and normalize != "group":
            raise ValueError(
                "dead_zone needs normalize: group (it applies to group-centred scores), "
                f"got normalize: {normalize}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or null, got {max_length!r}")
        if dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or auto, got {dtype!r}")
        self.model = model
        self.normalize = normalize
        self.dead_zone = float(dead_zone)
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.base_model = base_model
        self.trust_remote_code = trust_remote_code
        self._loaded: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        zone = f", dead_zone={self.dead_zone}" if self.dead_zone else ""
        return f"LearnedReward({self.model!r}, normalize={self.normalize!r}{zone})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}  # the weights are reloaded where it is unpickled

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once: base + adapter as a sequence classifier, or a full classifier."""
        if self._loaded is not None:
            return self._loaded
        from accelerate import PartialState

        from ntp_rl.dtypes import resolve_dtype
        from ntp_rl.models import load_sequence_classifier, load_tokenizer

        dtype = resolve_dtype(self.dtype)  # in a run, the choice the pipeline's main process made
        folder = Path(self.model)
        adapter = folder if (folder / "adapter_config.json").is_file() else None
        if adapter is not None:
            from peft import PeftModel

            base = self.base_model or json.loads((adapter / "adapter_config.json").read_text()).get(
                "base_model_name_or_path"
            )
            tokenizer = load_tokenizer(str(adapter), self.trust_remote_code)
            model = load_sequence_classifier(
                base, dtype, self.trust_remote_code, pad_token_id=tokenizer.pad_token_id
            )
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        else:
            tokenizer = load_tokenizer(self.model, self.trust_remote_code)
            model = load_sequence_classifier(
                self.model, dtype, self.trust_remote_code, pad_token_id=tokenizer.pad_token_id
            )
        model.to(PartialState().device)
        model.eval()
        logger.info("reward model loaded from %s", self.model)
        self._loaded = (model, tokenizer)
        return self._loaded

    def __call__(
        self, completions: list[Any], prompts: list[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        model, tokenizer = self.load()
        prompts = prompts if prompts is not None else [None] * len(completions)
        conversations = [conversation(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores = score_conversations(model, tokenizer, conversations, self.batch_size, self.max_length)
        log_metric = kwargs.get("log_metric")
        if self.normalize != "none" and callable(log_metric) and scores:
            # TRL logs the normalised values as rewards/<name>/mean (about 0 by construction); the raw
            # mean is what rises as RL pleases the reward model (the over-optimisation monitor reads it).
            mean = sum(scores) / len(scores)
            log_metric(f"{self.__name__}/{RAW_MEAN_SUFFIX}", mean)
            log_metric(
                f"{self.__name__}/{RAW_STD_SUFFIX}",
                math.sqrt(sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)),
            )
        if self.normalize == "batch":
            return z_score(scores)
        if self.normalize == "group":
            return group_centred(scores, prompts, self.dead_zone)
        return scores
