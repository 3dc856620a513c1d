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
    to the trainer's `max_completion_length`.
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
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c).split()) for c in completions]
        return [self.penalty(length) for length in lengths]

    def penalty(self, length: int) -> float:
        """The penalty for a completion of `length` tokens."""
        free = self.max_completion_tokens - self.buffer_tokens
        if length <= free:
            return 0.0
        if length > self.max_completion_tokens:
            return -1.0
        return (free - length) / self.buffer_tokens

    def __repr__(self) -> str:
        return (
            f"SoftOverlongPenalty(max_completion_tokens={self.max_completion_tokens}, "
            f"buffer_tokens={self.buffer_tokens})"
        )
