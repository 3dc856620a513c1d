"""Length shaping: `SoftOverlongPenalty`, DAPO's soft penalty for completions near the length limit.

A completion cut off at the generation limit usually has no final answer; penalising the approach
to the limit (DAPO, eq. 13, https://arxiv.org/abs/2503.14476) teaches the model to finish in time
without punishing long reasoning that does. Zero up to `max_completion_tokens - buffer_tokens`,
then linear down to -1.0 at `max_completion_tokens`, and -1.0 beyond.
"""

from __future__ import annotations

from typing import Any

from .completions import completion_text


class SoftOverlongPenalty:
    """A penalty in [-1, 0] for completions in the last `buffer_tokens` before `max_completion_tokens`.

    Lengths are counted in tokens from TRL's `completion_ids` when given, else in whitespace-separated
    words of the completion text (a stand-in for calls outside a trainer). Set `max_completion_tokens`
    to the trainer's `max_completion_length`. The penalty is TRL's `get_soft_overlong_punishment`;
    this class adds what the registry needs: checked settings, a word count where there are no token
    ids (`ntp-rl rewards check`, eval), and a stable logged name.
    """

    # The name TRL logs the reward under (`rewards/soft_overlong_penalty/mean`), whatever the settings.
    __name__ = "soft_overlong_penalty"

    def __init__(self, max_completion_tokens: int, buffer_tokens: int) -> None:
        if isinstance(max_completion_tokens, bool) or not isinstance(max_completion_tokens, int):
            raise TypeError(f"max_completion_tokens must be an integer, got {max_completion_tokens!r}")
        if isinstance(buffer_tokens, bool) or not isinstance(buffer_tokens, int):
            raise TypeError(f"buffer_tokens must be an integer, got {buffer_tokens!r}")
        if max_completion_tokens <= 0:
            raise ValueError(f"max_completion_tokens must be positive, got {max_completion_tokens}")
        if not 0 <= buffer_tokens <= max_completion_tokens:
            raise ValueError(
                f"buffer_tokens must be between 0 and max_completion_tokens ({max_completion_tokens}), "
                f"got {buffer_tokens}"
            )
        self.max_completion_tokens = max_completion_tokens
        self.buffer_tokens = buffer_tokens

    def __call__(
        self, completions: list, completion_ids: list[list[int]] | None = None, **kwargs: Any
    ) -> list[float | None]:
        from trl.rewards import get_soft_overlong_punishment  # the formula: TRL's, which counts len(ids)

        if completion_ids is None:  # outside a trainer: the words stand in for the tokens
            completion_ids = [completion_text(c).split() for c in completions]
        penalty = get_soft_overlong_punishment(self.max_completion_tokens, self.buffer_tokens)
        return penalty(completion_ids=completion_ids)

    def __repr__(self) -> str:
        return (
            f"SoftOverlongPenalty(max_completion_tokens={self.max_completion_tokens}, "
            f"buffer_tokens={self.buffer_tokens})"
        )
