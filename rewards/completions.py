"""What every reward needs from a completion: its text, and its final-answer line.

TRL's GRPOTrainer hands reward functions `completions` in one of two shapes: for conversational
data a list of message lists (`[[{"role": "assistant", "content": "..."}], ...]`), for plain-text
data a list of strings. `completion_text` turns either into one string, so a reward is written once.

The canonical final answer of this project is a last line `Answer: <value>`; `final_answer` finds it.
"""

from __future__ import annotations

import re
from typing import Any

from ntp_rl.common import ANSWER_LINE_PREFIX  # the canonical final-answer line: the math reward reads it

_ANSWER_MARKER = re.compile(r"^[ \t]*" + re.escape(ANSWER_LINE_PREFIX), re.MULTILINE)


def completion_text(completion: Any) -> str:
    """The text of one completion, conversational (a list of messages, or one message) or plain.

    Of a message list, the assistant messages are joined with newlines (tool and other roles are
    left out, as they are not the model's words); content given as typed blocks contributes its
    `text` blocks.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        if len(messages) != len(completion):
            raise TypeError(
                f"a conversational completion must be a list of message dicts, got {completion!r:.200}"
            )
        spoken = [m for m in messages if m.get("role", "assistant") == "assistant"]
        return "\n".join(_message_text(m) for m in spoken)
    raise TypeError(
        f"a completion must be a string or a list of messages, got {type(completion).__name__}: {completion!r:.200}"
    )


def _message_text(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # typed content blocks: [{"type": "text", "text": "..."}, ...]
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    raise TypeError(f"message content must be a string or a list of blocks, got {type(content).__name__}")


def final_answer(text: str) -> str | None:
    """The value of the last `Answer:` line, or None when the text has no such line.

    The value is the rest of that line; when the line holds only the prefix, it is the next
    non-empty line (`Answer:\\n42`). An `Answer:` line with nothing after it gives "".
    """
    last = None
    for match in _ANSWER_MARKER.finditer(text):
        last = match
    if last is None:
        return None
    for line in text[last.end() :].splitlines():
        if line.strip():
            return line.strip()
    return ""


def ends_with_answer_line(text: str) -> bool:
    """Whether the last non-empty line is a canonical final-answer line with a non-empty value."""
    stripped = text.rstrip()
    last_line = stripped[stripped.rfind("\n") + 1 :].strip()
    return last_line.startswith(ANSWER_LINE_PREFIX) and bool(last_line[len(ANSWER_LINE_PREFIX) :].strip())
