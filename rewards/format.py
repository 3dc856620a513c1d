"""The format reward: does a completion end with the canonical final-answer line `Answer: <value>`?

Rewarding the format apart from correctness teaches the shape early, when few answers are right;
keep its weight small next to `math_accuracy`, or the model learns to answer fast and wrong.
"""

from __future__ import annotations

from typing import Any

from .completions import completion_text, ends_with_answer_line


def format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    """1.0 when the last non-empty line is `Answer: <something non-empty>`, else 0.0."""
    return [1.0 if ends_with_answer_line(completion_text(c)) else 0.0 for c in completions]
