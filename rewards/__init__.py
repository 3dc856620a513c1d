"""Reward functions: the plug-in contract, the built-ins and their registry (installed as `ntp_rl.rewards`).

The contract is TRL's: a reward is `fn(completions, **columns) -> list[float | None]`, one value per
completion, None where it does not apply. `completions` are strings or message lists
(`completion_text` reads either); the data set's columns arrive as keyword lists (`answer=[...]`)
beside TRL's own arguments, so every reward takes `**kwargs`. Rewards are pure, deterministic and
picklable; a reward with settings is a callable class with a stable `__name__`.

- `BUILTIN_REWARDS` (in `registry.py`): the rewards a recipe names by `name:`.
- `resolve_reward` / `resolve_rewards`: a recipe's spec -> a checked, guarded callable.
- `score_math_answer`: the math check behind `math_accuracy`, shared with the eval harness.
- `score_completions` (in `scoring.py`): rewards called and summed as TRL's GRPO trainer does, for
  every caller outside the trainer (prompt filter, policy pairs, eval, `ntp-rl rewards check`).

See README.md in this folder for how to write and name your own.
"""

from .completions import ANSWER_LINE_PREFIX, completion_text, ends_with_answer_line, final_answer
from .errors import RewardDataError, RewardRuntimeError, RewardSpecError
from .format import format_reward
from .guard import GuardedReward
from .length import SoftOverlongPenalty
from .math import GoldAnswerError, MathScore, check_gold_answers, math_accuracy, score_math_answer
from .registry import (
    BUILTIN_REWARDS,
    TRL_REWARD_KWARGS,
    RewardSpec,
    check_reward_columns,
    resolve_reward,
    resolve_rewards,
)
from .scoring import RewardScores, score_completions

__all__ = [
    "ANSWER_LINE_PREFIX",
    "BUILTIN_REWARDS",
    "TRL_REWARD_KWARGS",
    "GoldAnswerError",
    "GuardedReward",
    "MathScore",
    "RewardDataError",
    "RewardRuntimeError",
    "RewardScores",
    "RewardSpec",
    "RewardSpecError",
    "SoftOverlongPenalty",
    "check_gold_answers",
    "check_reward_columns",
    "completion_text",
    "ends_with_answer_line",
    "final_answer",
    "format_reward",
    "math_accuracy",
    "resolve_reward",
    "resolve_rewards",
    "score_completions",
    "score_math_answer",
]
