"""Text sources of the probes, read and checked before any model loads, and their tokenisation.

- `load_texts(source, column, limit)`: `synthetic:arithmetic` gives conversations (the test split's
  prompt as the user turn, its worked solution as the assistant turn), rendered with the model's own
  chat template when tokenised; a local .txt file gives one text per non-empty line; a local
  .jsonl/.json/.csv/.parquet file gives the strings of its `column`.
- `load_answer_items(source, limit)`: (prompt, integer answer) rows: `synthetic:arithmetic`'s test
  split, or a local file with `prompt` and `answer` columns (the answer's last integer, so GSM8K's
  `... #### 72` reads as 72).

The test split is used because SFT and RL trained on the train split: the probes read the
checkpoints on problems they have not seen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ntp_rl.errors import UserError

SYNTHETIC_ARITHMETIC = "synthetic:arithmetic"
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
INTEGER = re.compile(r"-?\d[\d,]*")

Text = str | list[dict[str, str]]  # plain text, or a conversation (rendered by the chat template)


def _local_file(source: str, where: str, base_dir: Path | None) -> Path:
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
        path = base_dir / path
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise UserError(
            f"{where} {source!r}: use {SYNTHETIC_ARITHMETIC} or a local file ({', '.join(TEXT_SUFFIXES)})"
        )
    if not path.is_file():
        raise UserError(f"{where} {source!r}: no such file {path}")
    return path


def _rows(path: Path, seed: int, where: str) -> Any:
    from ntp_rl.config import DataSettings
    from ntp_rl.data import load_rows

    try:
        return load_rows(DataSettings(source=str(path)), "train", seed)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def load_texts(
    source: str, column: str, limit: int, seed: int = 0, base_dir: Path | None = None, where: str = "--data"
) -> list[Text]:
    """Up to `limit` texts from `source` (UserError naming `where` when there are none or too few)."""
    from ntp_rl.tasks import arithmetic

    if source == SYNTHETIC_ARITHMETIC:
        rows = arithmetic.generate("test", min(limit, 1500), seed=seed)
        return [
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["solution"]}]
            for r in rows
        ]
    path = _local_file(source, where, base_dir)
    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = _rows(path, seed, where)
        if column not in rows.column_names:
            raise UserError(
                f"{where} {source!r}: no column {column!r} (columns: {rows.column_names}); name the text "
                "column with --column"
            )
        texts = [str(value) for value in rows[column] if value is not None and str(value).strip()]
    if len(texts) < 2:
        raise UserError(f"{where} {source!r}: needs at least 2 non-empty texts, found {len(texts)}")
    return texts[:limit]


def integer_answer(value: Any) -> int | None:
    """The last integer in an answer string ("#### 1,234" -> 1234), or None when there is none."""
    matches = INTEGER.findall(str(value))
    if not matches:
        return None
    try:
        return int(matches[-1].replace(",", ""))
    except ValueError:
        return None


def load_answer_items(
    source: str, limit: int, seed: int = 0, base_dir: Path | None = None, where: str = "--data"
) -> list[tuple[Text, int]]:
    """(prompt, integer answer) pairs; rows whose answer is not an integer are left out."""
    from ntp_rl.tasks import arithmetic

    if source == SYNTHETIC_ARITHMETIC:
        rows = arithmetic.generate("test", min(limit, 1500), seed=seed)
        return [(r["prompt"], int(r["answer"])) for r in rows]
    path = _local_file(source, where, base_dir)
    if path.suffix.lower() == ".txt":
        raise UserError(f"{where} {source!r}: the answer probe needs rows with prompt and answer columns")
    rows = _rows(path, seed, where)
    missing = [c for c in ("prompt", "answer") if c not in rows.column_names]
    if missing:
        raise UserError(f"{where} {source!r}: missing column(s) {missing} (columns: {rows.column_names})")
    items = []
    for prompt, answer in zip(rows["prompt"], rows["answer"], strict=True):
        number = integer_answer(answer)
        if number is not None:
            items.append((prompt, number))
    if len(items) < 10:
        raise UserError(
            f"{where} {source!r}: needs at least 10 rows with an integer answer, found {len(items)}"
        )
    return items[:limit]


def encode_text(tokenizer, text: Text, max_tokens: int) -> list[int]:
    """Token ids of a text (a conversation through the chat template), cut to `max_tokens`."""
    if isinstance(text, list):
        rendered = tokenizer.apply_chat_template(text, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    return list(ids[:max_tokens])
