"""A worked example of a user reward: `brevity`, a small bonus for answering in few words.

How to write a reward (the contract is TRL's):

1. A module-level function `fn(completions, <columns it needs>, **kwargs) -> list[float | None]`.
   `completions` holds strings or message lists; `completion_text(c)` reads either. Data columns
   arrive as keyword lists (`answer=[...]`): name the ones you need as parameters and the recipe is
   checked against the data before training. `**kwargs` takes the rest TRL passes (`prompts`,
   `completion_ids`, `trainer_state`, `log_metric`, `log_extra`).
2. Return one float per completion, or None where the reward does not apply.
3. Keep it pure and deterministic, with settings as parameters with defaults (set from the recipe's
   `kwargs`), or as a callable class with a fixed `__name__` when it needs set-up.
4. Think about how a policy could game it. A length reward alone is won by the empty reply, so this
   one pays only completions that end with an `Answer:` line, and stays small next to correctness.

Name it in a recipe (a relative path is read from the recipe's folder, then the current folder):

    rewards:
      - {name: math_accuracy, weight: 1.0}
      - path: rewards/examples/brevity.py:brevity
        weight: 0.1
        kwargs: {max_words: 150}

Try it before training:

    >>> from ntp_rl.rewards import RewardSpec, resolve_reward
    >>> reward = resolve_reward(RewardSpec(path="rewards/examples/brevity.py:brevity", kwargs={"max_words": 10}))
    >>> reward(["Two plus two.\\nAnswer: 4", "Answer:"])
    [0.6, 0.0]
"""

from __future__ import annotations

from typing import Any

from ntp_rl.rewards import completion_text, ends_with_answer_line


def brevity(completions: list, max_words: int = 200, **kwargs: Any) -> list[float | None]:
    """1.0 for a one-word answer falling linearly to 0.0 at `max_words` words; 0.0 without an `Answer:` line."""
    rewards: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        if not ends_with_answer_line(text):
            rewards.append(0.0)
            continue
        words = len(text.split())
        rewards.append(max(0.0, 1.0 - (words - 1) / max_words))
    return rewards
