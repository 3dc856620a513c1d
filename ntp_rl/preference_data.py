"""Preference pairs for the reward_model stage: layouts, checks, and the conversational shape TRL takes.

Accepted layouts (after `data.columns` renames):
- explicit prompt: `prompt`, `chosen`, `rejected`, each plain text or a list of messages;
- implicit prompt: `chosen` and `rejected` only (each a whole conversation, or plain text scored alone);
- Anthropic HH (`data.format: hh`): `chosen` and `rejected` are full transcripts of
  "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns; `parse_hh_pair` splits them into the shared prompt
  (every turn before the last assistant reply) and the two final assistant replies.

Rows come out conversational (`prompt` as messages, `chosen`/`rejected` as one assistant message), the
shape TRL's `RewardTrainer` chat-templates, and the same shape `LearnedReward` scores during RL
(prompt messages + the completion as the assistant's reply). A pair whose responses are identical
or empty or whose prompt is null, or an HH transcript that does not end in an assistant reply, is a
`UserError` naming the source, split, row and column, raised before any model loads; with `data.skip_invalid_pairs: true`
(large public sets with a few broken rows) such rows are dropped and counted in the log instead.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ntp_rl.config import DataSettings
from ntp_rl.errors import UserError

logger = logging.getLogger(__name__)

HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
PREFERENCE_LAYOUTS = [["prompt", "chosen", "rejected"], ["chosen", "rejected"]]


class InvalidPair(ValueError):
    """One row that cannot be a preference pair; the message names the column."""


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """ "\\n\\nHuman: a\\n\\nAssistant: b" -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise InvalidPair(f"text before the first 'Human:' turn: {parts[0][:80]!r}")
    return [
        {"role": HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def parse_hh_pair(chosen: str, rejected: str) -> dict[str, Any]:
    """One HH row -> {prompt: [messages], chosen: reply, rejected: reply}; the prompts must agree."""
    turns = {}
    for column, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise InvalidPair(f"`{column}` is a {type(text).__name__}, not an HH transcript")
        messages = parse_hh_transcript(text)
        if not messages or messages[-1]["role"] != "assistant":
            raise InvalidPair(f"`{column}` does not end with an '\\n\\nAssistant:' reply")
        turns[column] = messages
    if turns["chosen"][:-1] != turns["rejected"][:-1]:
        raise InvalidPair("`chosen` and `rejected` differ before their final assistant reply")
    return {
        "prompt": turns["chosen"][:-1],
        "chosen": turns["chosen"][-1]["content"],
        "rejected": turns["rejected"][-1]["content"],
    }


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return value
    return [{"role": role, "content": "" if value is None else str(value)}]


def _response_text(value: Any) -> str:
    """The text of a response: a string, or the last message's content."""
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value and isinstance(value[-1], dict) else ""
    return "" if value is None else str(value)


def _convert(row: dict[str, Any], has_prompt: bool) -> dict[str, Any]:
    if has_prompt and row["prompt"] is None:
        raise InvalidPair("`prompt` is null")
    for column in ("chosen", "rejected"):
        if not _response_text(row[column]).strip():
            raise InvalidPair(f"`{column}` is empty")
    if row["chosen"] == row["rejected"]:
        raise InvalidPair("`chosen` is identical to `rejected`")
    out = {
        "chosen": _as_messages(row["chosen"], "assistant"),
        "rejected": _as_messages(row["rejected"], "assistant"),
    }
    if has_prompt:
        out["prompt"] = _as_messages(row["prompt"], "user")
    return out


def _map_rows(dataset, convert, data: DataSettings, label: str):
    """`convert(row)` for every row; an `InvalidPair` is a UserError, or a dropped row (skip_invalid_pairs)."""
    converted, dropped = [], []
    for index, row in enumerate(dataset):
        try:
            converted.append(convert(row))
        except InvalidPair as exc:
            if not data.skip_invalid_pairs:
                raise UserError(
                    f"{label} row {index}: {exc}. Fix the row, or set data.skip_invalid_pairs: true to drop "
                    "such rows"
                ) from None
            dropped.append(index)
    if dropped:
        logger.warning(
            "%s: dropped %d of %d invalid pairs (data.skip_invalid_pairs), the first at row %d",
            label,
            len(dropped),
            len(dataset),
            dropped[0],
        )
    if not converted:
        raise UserError(
            f"{label}: no valid preference pairs (the split is empty after dropping invalid rows)"
        )
    from datasets import Dataset

    return Dataset.from_list(converted)


def parse_hh_rows(dataset, data: DataSettings, split: str):
    """`data.format: hh`: each row's transcripts -> prompt (messages), chosen and rejected (reply texts)."""
    label = f"data.source {data.source!r} split {split!r} (data.format hh)"
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{label}: needs the columns chosen and rejected (full transcripts); missing {missing}, it has "
            f"{dataset.column_names}. Map yours with data.columns."
        )
    return _map_rows(
        dataset, lambda row: {**row, **parse_hh_pair(row["chosen"], row["rejected"])}, data, label
    )


def to_preference_format(dataset, data: DataSettings, split: str, where: str):
    """Check and convert one split's pairs (see the module docstring); other columns are kept."""
    label = f"{where}: data.source {data.source!r} split {split!r}"
    if not any(all(c in dataset.column_names for c in option) for option in PREFERENCE_LAYOUTS):
        raise UserError(
            f"{label}: preference data needs the columns prompt+chosen+rejected (or chosen+rejected); "
            f"it has {dataset.column_names}. Map yours with data.columns (e.g. {{chosen: preferred}})."
        )
    has_prompt = "prompt" in dataset.column_names
    return _map_rows(dataset, lambda row: {**row, **_convert(row, has_prompt)}, data, label)
