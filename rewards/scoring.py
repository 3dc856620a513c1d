"""Scoring completions with a recipe's rewards exactly as TRL's GRPO trainer does, outside the trainer.

`score_completions` is the one way ntp-rl calls rewards when TRL does not: the prompt filter of the rl
stage, the policy pairs of the reward_model stage, the eval harness and `ntp-rl rewards check` all
use it (or, for the check's per-reward error diagnosis, its two parts `call_reward` and
`weighted_sum`), so a reward scores a completion the same in each of them and in training.

What it copies from TRL 1.x (`GRPOTrainer._calculate_rewards` and the weighted sum in
`_generate_and_score_completions`; tests/test_reward_scoring.py compares the two on a real step):
- each reward is called once on the whole batch, by keyword: `prompts`, `completions` (one assistant
  message per completion when the prompts are conversations, else the text), `completion_ids`, every
  data column but `prompt`/`completion`/`completion_ids` as a list, `trainer_state`, `log_extra` and
  `log_metric`;
- a reward's None (and NaN) is TRL's NaN: "does not apply here"; it is left out of the weighted sum
  and of a reward's mean;
- the weighted sum is TRL's `nansum` of reward x weight over the rewards that applied; where no reward
  applied it is None (TRL's NaN: the completion is unscorable, gets zero advantage, and TRL warns);
- `trainer_state`: outside a trainer, a fresh `transformers.TrainerState()` (global step 0, as at the
  start of training), so a reward that reads `trainer_state.global_step` works and scores as before the
  first step; None would make it crash.

Values stay Python floats; TRL keeps them in a float32 tensor, so the two agree to float32 rounding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Data columns TRL does not pass to rewards under their own name (the prompt arrives as `prompts`).
WITHHELD_COLUMNS = frozenset({"prompt", "completion", "completion_ids"})


@dataclass(frozen=True)
class RewardScores:
    """What `score_completions` computed; None is TRL's NaN (the reward did not apply)."""

    names: list[str]  # each reward's `__name__`, as TRL logs it (`rewards/<name>/mean`)
    per_reward: list[list[float | None]]  # per_reward[i][j]: reward i on completion j
    total: list[float | None]  # the weighted sum per completion; None where no reward applied


def score_completions(
    rewards: Sequence[Callable[..., Any]],
    weights: Sequence[float],
    prompts: Sequence[Any],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    trainer_state: Any = None,
    log_metric: Callable[[str, float], None] | None = None,
    log_extra: Callable[[str, list[Any]], None] | None = None,
) -> RewardScores:
    """Score `completions` (texts, one per prompt in `prompts`) with `rewards` as TRL's GRPO trainer does.

    `columns`: the data's columns, one value per completion (a prompt's row repeated for each of its
    samples); `prompt`, `completion` and `completion_ids` among them are not passed, as in TRL.
    `weights`: TRL's `reward_weights`, one per reward. `trainer_state` defaults to a fresh
    `TrainerState()`; `log_metric` / `log_extra` to callbacks that drop what they are given.

    Returns each reward's values and their weighted sum. A None from a reward is left out of the sum
    (TRL's `nansum`), and a completion that no reward applied to has the sum None, with a warning, as
    in TRL. (The rl stage's prompt filter used to count a None as 0.0; it now follows TRL.)
    A reward that raises propagates its exception; one that returns the wrong number of values
    raises ValueError.
    """
    if len(weights) != len(rewards):
        raise ValueError(f"{len(weights)} weights for {len(rewards)} rewards; give one weight per reward")
    per_reward = [
        call_reward(
            reward,
            prompts,
            completions,
            completion_ids,
            columns,
            trainer_state=trainer_state,
            log_metric=log_metric,
            log_extra=log_extra,
        )
        for reward in rewards
    ]
    total = weighted_sum(per_reward, weights)
    unscorable = [j for j, value in enumerate(total) if value is None]
    if rewards and unscorable:
        first = unscorable[0]
        logger.warning(
            "every reward returned None for %d of %d completions (e.g. completion %d: %r); their weighted "
            "reward is None (NaN in TRL: no learning signal). Make sure some reward applies to every sample",
            len(unscorable),
            len(total),
            first,
            completions[first][:200],
        )
    return RewardScores([_name(reward) for reward in rewards], per_reward, total)


def call_reward(
    reward: Callable[..., Any],
    prompts: Sequence[Any],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    trainer_state: Any = None,
    log_metric: Callable[[str, float], None] | None = None,
    log_extra: Callable[[str, list[Any]], None] | None = None,
) -> list[float | None]:
    """One reward's values on the batch, called with TRL's keyword arguments (see `score_completions`)."""
    count = len(completions)
    if len(prompts) != count or len(completion_ids) != count:
        raise ValueError(
            f"{len(prompts)} prompts and {len(completion_ids)} completion_ids for {count} completions"
        )
    if count == 0:
        return []
    if trainer_state is None:
        from transformers import TrainerState

        trainer_state = TrainerState()
    data = {name: list(values) for name, values in (columns or {}).items() if name not in WITHHELD_COLUMNS}
    for name, values in data.items():
        if len(values) != count:
            raise ValueError(f"column '{name}' has {len(values)} values for {count} completions")
    conversational = _is_conversational(prompts[0])
    values = reward(
        prompts=list(prompts),
        completions=[[{"role": "assistant", "content": t}] if conversational else t for t in completions],
        completion_ids=[list(ids) for ids in completion_ids],
        **data,
        trainer_state=trainer_state,
        log_extra=log_extra or _drop,
        log_metric=log_metric or _drop,
    )
    values = list(values)
    if len(values) != count:
        raise ValueError(
            f"the reward function '{_name(reward)}' returned {len(values)} rewards, but {count} were expected "
            "(one per prompt-completion pair)"
        )
    return [_as_value(v) for v in values]


def weighted_sum(
    per_reward: Sequence[Sequence[float | None]], weights: Sequence[float]
) -> list[float | None]:
    """TRL's weighted reward per completion: `nansum(reward * weight)` over the rewards that applied
    (not None); None (TRL's NaN) where none applied. `per_reward[i][j]`: reward i on completion j."""
    if len(per_reward) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(per_reward)} rewards; give one weight per reward")
    totals: list[float | None] = []
    for sample in zip(*per_reward, strict=True):
        present = [weight * value for weight, value in zip(weights, sample, strict=True) if value is not None]
        totals.append(sum(present) if present else None)
    return totals


def mean_applied(values: Sequence[float | None]) -> float | None:
    """A reward's mean over the completions it applied to (TRL's `nanmean`, logged as `rewards/<name>/mean`)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _as_value(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number  # TRL's nansum and nanmean skip a NaN as they skip a None


def _is_conversational(prompt: Any) -> bool:
    """TRL's `is_conversational` test of a prompt: a list whose first item is a message (a dict with a role)."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def _drop(*args: Any, **kwargs: Any) -> None:
    """`log_metric` / `log_extra` where nothing collects what a reward logs."""


def _name(reward: Callable[..., Any]) -> str:
    return getattr(reward, "__name__", type(reward).__name__)
