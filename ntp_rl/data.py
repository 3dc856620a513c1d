"""Data sources -> `datasets.Dataset` rows in the shapes TRL's trainers take.

Sources: a built-in synthetic task (`synthetic:arithmetic`, `synthetic:preferences`,
`synthetic:reviews`: ntp_rl/tasks/), a local .jsonl/.json/.parquet/.csv file, or a hub data set. A
column map renames the source's columns to ours (`prompt`, `answer`, `solution`, `completion`,
`messages`), and `answer_pattern` extracts the gold answer from a longer answer text
(GSM8K's `... #### 42`). Missing columns and empty splits are reported here, before any model loads.
"""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path
from typing import Any

from ntp_rl.common import ANSWER_LINE_PREFIX
from ntp_rl.config import DataSettings
from ntp_rl.errors import UserError

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_TASKS = ("arithmetic", "preferences", "reviews")


def _source_label(data: DataSettings) -> str:
    return f"data.source {data.source!r}"


def _load_synthetic(data: DataSettings, split: str, seed: int):
    from datasets import Dataset

    task = data.source.removeprefix(SYNTHETIC_PREFIX)
    if task not in SYNTHETIC_TASKS:
        raise UserError(
            f"{_source_label(data)}: unknown synthetic task; available: {', '.join(SYNTHETIC_TASKS)}"
        )
    from ntp_rl.tasks import arithmetic, preferences, reviews

    splits = [data.train_split, data.test_split]
    if task == "arithmetic":
        splits.append(arithmetic.HELDOUT_PHRASINGS_SPLIT)
    if split not in splits:  # a typo must not quietly evaluate the test split again
        raise UserError(
            f"{_source_label(data)}: no split {split!r}; this task's splits are {', '.join(map(repr, splits))} "
            "(data.train_split, data.test_split"
            + (", and the held-out wording" if task == "arithmetic" else "")
            + ")"
        )
    if task == "reviews":  # a fixed catalogue: data.max_train_examples / max_test_examples cap it
        return Dataset.from_list(reviews.generate("train" if split == data.train_split else "test", seed))

    # `preferences` pairs responses to the arithmetic problems: the same options, the same split.
    generate = {"arithmetic": arithmetic.generate, "preferences": preferences.generate}[task]
    options = data.arithmetic
    num = options.num_train if split == data.train_split else options.num_test
    # The task's splits: train, test, and test_phrasings (test's problems in held-out wording).
    if split == data.train_split:
        task_split = "train"
    elif split == arithmetic.HELDOUT_PHRASINGS_SPLIT:
        task_split = split
    else:
        task_split = "test"
    rows = generate(
        task_split,
        num,
        seed=seed,
        two_step_fraction=options.two_step_fraction,
        decomposed_solutions=options.decomposed_solutions,
    )
    return Dataset.from_list(rows)


def _load_local(data: DataSettings, path: Path, split: str):
    from datasets import load_dataset

    builder = LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise UserError(
            f"{_source_label(data)}: unsupported file type {path.suffix!r}; use {', '.join(LOCAL_FORMATS)}"
        )
    if not path.is_file():
        raise UserError(f"{_source_label(data)}: no such file {path}")
    if builder in ("json", "csv"):
        _check_text_file(data, path, split)
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    # datasets logs a parse error at ERROR level before raising it; the UserError below says it once.
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        return load_dataset(builder, data_files={split: str(path)}, split=split)
    except Exception as exc:  # datasets raises many types for malformed files
        reason = _json_shape_problem(path) if path.suffix.lower() == ".json" else None
        raise UserError(
            f"{_source_label(data)}: could not read {path} as {builder}: {reason or _root_cause(exc)}"
        ) from None
    finally:
        datasets_logger.setLevel(level)


JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", type(None): "null"}


def _json_shape_problem(path: Path) -> str | None:
    """Why a .json file that parses is not rows (datasets says only "DataFrame constructor not properly
    called"); None when it does not parse as one document (JSON lines, or broken) or is too big to look at."""
    import json

    if path.stat().st_size > 64 << 20:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if isinstance(document, list):
        bad = next((item for item in document if not isinstance(item, dict)), None)
        if bad is None:
            return None
        found = f"a list holding {JSON_KINDS.get(type(bad), 'a list')}"
    elif isinstance(document, dict):
        return None
    else:
        found = JSON_KINDS.get(type(document), type(document).__name__)
    return (
        'a .json file holds a list of rows ([{"prompt": ...}, ...]), an object of columns or one JSON '
        f"object per line; this one holds {found}"
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost error's first line (datasets wraps parse errors in a generic DatasetGenerationError)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _check_text_file(data: DataSettings, path: Path, split: str) -> None:
    """An empty file or one that is not UTF-8 is reported by name (datasets fails obscurely, or later)."""
    if path.stat().st_size == 0:
        raise UserError(f"{_source_label(data)}: split {split!r} is empty ({path} has no rows)")
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                line += exc.object[: exc.start].count(b"\n")
                raise UserError(
                    f"{_source_label(data)}: {path} is not UTF-8 text (line {line}: {exc.reason}); "
                    "re-save it as UTF-8"
                ) from None
            if not chunk:
                return
            line += chunk.count(b"\n")


def _local_path(data: DataSettings, split: str, base_dir: Path | None) -> Path | None:
    """The file for `split`: `source` itself may name a file, or a folder holding `<split>.<ext>`."""
    path = Path(data.source).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
        path = base_dir / path
    if path.is_dir():
        for ext in LOCAL_FORMATS:
            candidate = path / f"{split}{ext}"
            if candidate.is_file():
                return candidate
        raise UserError(f"{_source_label(data)}: folder {path} has no {split}.jsonl/.json/.parquet/.csv")
    if path.suffix.lower() in LOCAL_FORMATS or path.exists() or data.source.startswith((".", "/", "~")):
        if split != data.train_split:
            sibling = path.with_name(f"{split}{path.suffix}")
            if sibling.is_file():
                return sibling
            raise UserError(
                f"{_source_label(data)}: split {split!r} needs its own file; put it beside {path.name} as "
                f"{sibling.name}, or point data.source at a folder with train/test files"
            )
        return path
    return None


def load_rows(data: DataSettings, split: str, seed: int, base_dir: Path | None = None):
    """Load one split as a Dataset, with the column map and answer pattern applied."""
    if data.source.startswith(SYNTHETIC_PREFIX):
        dataset = _load_synthetic(data, split, seed)
    else:
        local = _local_path(data, split, base_dir)
        if local is not None:
            dataset = _load_local(data, local, split)
        else:
            from datasets import load_dataset

            try:
                dataset = load_dataset(data.source, data.subset, split=split)
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"{_source_label(data)}: could not load split {split!r} from the hub ({message}). "
                    "Offline? Point data.source at a local .jsonl/.parquet/.csv file."
                ) from None
    dataset = _apply_column_map(dataset, data)
    if len(dataset) == 0:
        raise UserError(f"{_source_label(data)}: split {split!r} is empty")
    limit = data.max_train_examples if split == data.train_split else data.max_test_examples
    if limit is not None and len(dataset) > limit:
        dataset = dataset.select(range(limit))
    if data.format == "hh":
        from ntp_rl.preference_data import parse_hh_rows

        dataset = parse_hh_rows(dataset, data, split)
    if data.answer_pattern and "answer" in dataset.column_names:
        dataset = _extract_answers(dataset, data)
    return dataset


def _apply_column_map(dataset, data: DataSettings):
    missing = [src for src in data.columns.values() if src not in dataset.column_names]
    if missing:
        raise UserError(
            f"data.columns: source column(s) {missing} not found in {data.source!r}; "
            f"it has {dataset.column_names}"
        )
    renames = {src: ours for ours, src in data.columns.items() if src != ours}
    # A source column that would be shadowed by a rename target is dropped first.
    clashes = [ours for ours in renames.values() if ours in dataset.column_names and ours not in renames]
    if clashes:
        dataset = dataset.remove_columns(clashes)
    return dataset.rename_columns(renames) if renames else dataset


def _extract_answers(dataset, data: DataSettings):
    pattern = re.compile(data.answer_pattern, re.MULTILINE | re.DOTALL)  # type: ignore[arg-type]

    def extract(row: dict[str, Any], index: int) -> dict[str, Any]:
        text = str(row["answer"])
        match = pattern.search(text)
        if match is None:
            raise UserError(
                f"data.answer_pattern {data.answer_pattern!r} does not match the answer of row {index}: {text[:200]!r}"
            )
        gold = (match.group(1) if match.groups() else match.group(0)).strip().replace(",", "")
        solution = text
        if data.solution_answer_line:
            before = text[: match.start()]
            if before and not before.endswith("\n"):
                before += "\n"
            solution = f"{before}{ANSWER_LINE_PREFIX} {gold}{text[match.end() :]}"
        return {"answer": gold, "solution": solution if "solution" not in row else row["solution"]}

    return dataset.map(extract, with_indices=True)


def require_columns(dataset, needed: list[str] | list[list[str]], where: str) -> None:
    """`needed` is a list of columns, or a list of alternatives (each a list of columns)."""
    alternatives = needed if needed and isinstance(needed[0], list) else [needed]
    for option in alternatives:
        if all(col in dataset.column_names for col in option):
            return
    wanted = " or ".join("+".join(opt) for opt in alternatives)  # type: ignore[arg-type]
    raise UserError(
        f"{where}: the data needs column(s) {wanted}; it has {dataset.column_names}. "
        "Map yours with data.columns (e.g. {prompt: question})."
    )


def require_values(dataset, columns: list[str], where: str) -> None:
    """A null in a column the stage reads is an error naming the column and row (it would read "None")."""
    for column in columns:
        values = dataset.with_format("arrow")[column]  # the selected rows, without copying them to Python
        if values.null_count:
            first = values.is_null().to_pylist().index(True)
            raise UserError(
                f"{where}: column {column!r} is null in row {first} ({values.null_count} of {len(values)} "
                "rows); fill in those values or drop the rows"
            )


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return value
    return [{"role": role, "content": str(value)}]


def to_sft_format(dataset, where: str):
    """Conversational prompt/completion rows for SFTTrainer (loss on completions only by default).

    The completion is the `completion` column, else `solution`, else the preferred response `chosen`
    of preference data (SFT on the chosen responses before reward modelling and RLHF).
    """
    if "messages" in dataset.column_names:
        require_values(dataset, ["messages"], where)
        return dataset.select_columns(["messages"])
    require_columns(dataset, [["prompt", "completion"], ["prompt", "solution"], ["prompt", "chosen"]], where)
    target = next(c for c in ("completion", "solution", "chosen") if c in dataset.column_names)
    require_values(dataset, ["prompt", target], where)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": _as_messages(row["prompt"], "user"),
            "completion": _as_messages(row[target], "assistant"),
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


def to_prompt_format(dataset, where: str):
    """Conversational prompts (other columns kept) for RL trainers and eval."""
    require_columns(dataset, ["prompt"], where)
    require_values(dataset, ["prompt"], where)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": _as_messages(row["prompt"], "user")}

    return dataset.map(convert)
