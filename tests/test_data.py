"""Data sources: local files of each format, the column map, GSM8K's answer layout, clear errors."""

from __future__ import annotations

import json

import pytest

from ntp_rl.config import DataSettings
from ntp_rl.data import load_rows, to_prompt_format, to_sft_format
from ntp_rl.errors import UserError

ROWS = [{"question": f"What is {i} + 1?", "answer": f"{i} plus one.\n#### {i + 1}"} for i in range(5)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_formats_with_column_map_and_gsm8k_answers(tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    data = DataSettings(source=str(path), columns={"prompt": "question"}, answer_pattern=r"####\s*(.+)$")
    rows = load_rows(data, "train", seed=0)
    assert rows["prompt"][0] == "What is 0 + 1?"
    assert rows["answer"] == ["1", "2", "3", "4", "5"]
    prompts = to_prompt_format(rows, "test")
    assert prompts[0]["prompt"] == [{"role": "user", "content": "What is 0 + 1?"}]
    assert prompts[0]["answer"] == "1"


def test_test_split_is_a_sibling_file(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", ROWS)
    _write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    data = DataSettings(source=str(tmp_path / "train.jsonl"))
    assert len(load_rows(data, "test", seed=0)) == 2
    folder = DataSettings(source=str(tmp_path))
    assert len(load_rows(folder, "train", seed=0)) == 5


def test_synthetic_arithmetic_sft_shape():
    data = DataSettings(arithmetic={"num_train": 8, "num_test": 4})
    rows = load_rows(data, "train", seed=1)
    assert len(rows) == 8 and {"prompt", "answer", "solution"} <= set(rows.column_names)
    sft = to_sft_format(rows, "test")
    assert sft[0]["completion"][0]["role"] == "assistant"
    assert sft[0]["completion"][0]["content"].splitlines()[-1] == f"Answer: {rows[0]['answer']}"


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda p: DataSettings(source=str(p / "missing.jsonl")), "no such file"),
        (
            lambda p: DataSettings(
                source=str(_write_jsonl(p / "train.jsonl", ROWS)), columns={"prompt": "q"}
            ),
            "source column(s) ['q'] not found",
        ),
        (lambda p: DataSettings(source=str(_write_jsonl(p / "train.jsonl", []))), "is empty"),
        (lambda p: DataSettings(source=str(p / "train.txt")), "unsupported file type"),
        (lambda p: DataSettings(source="synthetic:calculus"), "unknown synthetic task"),
        (
            lambda p: DataSettings(
                source=str(_write_jsonl(p / "train.jsonl", ROWS)), answer_pattern=r"ANSWER=(\d+)"
            ),
            "does not match the answer of row 0",
        ),
    ],
)
def test_bad_data_is_a_user_error(tmp_path, setup, fragment):
    with pytest.raises(UserError) as info:
        load_rows(setup(tmp_path), "train", seed=0)
    assert fragment in str(info.value)


def test_malformed_json_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(UserError, match="could not read"):
        load_rows(DataSettings(source=str(path)), "train", seed=0)


def test_missing_columns_for_sft(tmp_path):
    rows = load_rows(DataSettings(source=str(_write_jsonl(tmp_path / "train.jsonl", ROWS))), "train", seed=0)
    with pytest.raises(UserError, match="prompt\\+completion or prompt\\+solution"):
        to_sft_format(rows, "stages[0]")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_is_accepted(tmp_path, fmt):
    """Windows editors start UTF-8 files with a BOM; it is not part of the first column's name or value."""
    rows = [{"prompt": "What is 1 + 1?", "completion": "two"}, {"prompt": "Und 2 + 2?", "completion": "vier"}]
    text = {
        "jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        "json": json.dumps(rows),
        "csv": "prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in rows),
    }[fmt]
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    loaded = load_rows(DataSettings(source=str(path)), "train", seed=0)
    assert loaded.column_names == ["prompt", "completion"]
    assert loaded.to_list() == rows
