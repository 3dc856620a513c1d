"""Math correctness with math-verify: the `math_accuracy` reward and the `score_math_answer` check.

One check serves training and eval (one source of truth): `score_math_answer(text, gold)` returns a
`MathScore` that tells a wrong answer (`correct=False`) from one that could not be read at all
(`parse_failed=True`, with the `failure` reason); `math_accuracy` is that check as a reward, 1.0 or
0.0 per completion, reporting the parse-failure rate through TRL's `log_metric`.

How an answer is read:
1. The value of the last `Answer: <value>` line; without such a line, the last 2,000 characters of
   the completion, where math-verify looks for a `\\boxed{}`, an "answer is ..." or the last number.
2. Fast path: when the gold and the answer are both plain numbers (`1,234`, `-7`, `3.0`, `$42$`,
   `\\boxed{42}`), they are compared exactly as decimals, in this process (a few microseconds).
3. Otherwise math-verify parses and compares, in a child process with a deadline (see
   `_math_worker.py`): a sample past `MATH_VERIFY_TIMEOUT_SECONDS` scores 0.0 and counts as a parse
   failure ("timeout"). The round trip to the child is small beside math-verify's own work. Its
   replies are remembered per (answer, gold), timeouts excepted: an eval asks twice per completion.

A gold answer that cannot be parsed is a data error (`GoldAnswerError`), never a free reward or a
silently skipped row; `check_gold_answers` finds such rows before training.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from ._math_worker import WORKER
from .completions import ANSWER_LINE_PREFIX, completion_text, final_answer
from .errors import RewardDataError

logger = logging.getLogger(__name__)

__all__ = [
    "ANSWER_LINE_PREFIX",
    "GoldAnswerError",
    "MathScore",
    "check_gold_answers",
    "math_accuracy",
    "plain_number",
    "score_math_answer",
]

# Deadline for math-verify on one sample (parse and compare). Its own defaults are 5 s to parse
# plus 5 s per comparison; a well-formed answer takes well under 10 ms, so 5 s in all only ever
# cuts off inputs built to be slow (power towers such as 9^9^9^9, thousands of nested braces).
MATH_VERIFY_TIMEOUT_SECONDS = 5.0

# Longest answer read: longer `Answer:` values are parse failures without being parsed, and without
# an `Answer:` line only the completion's tail this long is searched. No real answer is this long.
MAX_ANSWER_CHARS = 2000

_EXTRACTED_MAX_CHARS = 200

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


class GoldAnswerError(RewardDataError):
    """A gold answer that math-verify cannot parse: no completion could ever score on that row."""


class MathScore(NamedTuple):
    """The verdict on one completion.

    `failure` says why a parse failed: "no_answer" (nothing to read), "too_long" (an answer over
    `MAX_ANSWER_CHARS`), "unparseable" (math-verify found no expression), "timeout" (past the
    deadline, or the child process died) or "error" (math-verify raised; logged as a warning).
    """

    correct: bool
    parse_failed: bool
    extracted: str | None
    failure: str | None = None


def plain_number(answer: str) -> Decimal | None:
    """`answer` as an exact decimal when it is a plain number, else None.

    Plain means: optional sign, digits, optional decimals, optionally with thousands commas
    (`1,234`), dollar signs (`$42$`, `\\$5`), one `\\boxed{}` around it or a final full stop.
    Exponents, fractions and words are left to math-verify.
    """
    text = answer.strip().replace("\\$", "").replace("$", "").replace("\u2212", "-").strip()
    boxed = _BOXED.fullmatch(text)
    if boxed:
        text = boxed.group(1).strip()
    if text.endswith("."):
        text = text[:-1]
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(text):
        return Decimal(text)
    return None


def score_math_answer(
    completion_text: str, gold: str | int | float, *, timeout_seconds: float | None = None
) -> MathScore:
    """Whether the completion's final answer equals `gold`, telling wrong answers from unreadable ones.

    Raises `GoldAnswerError` when `gold` cannot be parsed. Never hangs: math-verify's work is cut
    off after `timeout_seconds` (default `MATH_VERIFY_TIMEOUT_SECONDS`), in any thread.
    """
    timeout_seconds = MATH_VERIFY_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    gold_text = _gold_string(gold)
    gold_value = _gold_value(gold_text)

    answer = final_answer(completion_text)
    from_answer_line = answer is not None
    candidate = answer if from_answer_line else completion_text[-MAX_ANSWER_CHARS:]
    if not candidate.strip():
        return MathScore(False, True, None, "no_answer")
    if len(candidate) > MAX_ANSWER_CHARS:
        return MathScore(False, True, candidate[:_EXTRACTED_MAX_CHARS], "too_long")

    number = plain_number(candidate)
    if number is not None and isinstance(gold_value, Decimal):
        return MathScore(number == gold_value, False, candidate.strip()[:_EXTRACTED_MAX_CHARS])

    reply = _verify(candidate, gold_text, from_answer_line, timeout_seconds)
    if reply is None:
        return MathScore(False, True, None, "timeout")
    if "error" in reply:
        logger.warning(
            "math-verify failed on answer %.200r (gold %.80r): %s", candidate, gold_text, reply["error"]
        )
        return MathScore(False, True, None, "error")
    if not reply["gold_parsed"]:
        raise GoldAnswerError(_bad_gold_message(gold_text))
    if not reply["parsed"]:
        return MathScore(False, True, reply["extracted"], "unparseable")
    return MathScore(reply["correct"], False, reply["extracted"])


# math-verify's replies by (answer, gold, from an `Answer:` line): an eval checks each completion twice
# (its verdict, then `math_accuracy` as a reward), and samples repeat answers. Bounded; oldest out.
_REPLIES: dict[tuple[str, str, bool], dict] = {}
_REPLIES_MAX = 8192


def _verify(candidate: str, gold_text: str, from_answer_line: bool, timeout_seconds: float) -> dict | None:
    """math-verify's reply for one answer and gold, remembered; None (a timeout or a dead child) is not,
    so the next call tries again."""
    key = (candidate, gold_text, from_answer_line)
    if key in _REPLIES:
        return _REPLIES[key]
    request = {"op": "score", "text": candidate, "gold": gold_text, "answer_line": from_answer_line}
    reply = WORKER.request(request, timeout_seconds)
    if reply is not None:
        if len(_REPLIES) >= _REPLIES_MAX:
            del _REPLIES[next(iter(_REPLIES))]
        _REPLIES[key] = reply
    return reply


def start_math_verify() -> None:
    """Start math-verify's worker process now, without waiting: its start (sympy, math-verify) then
    overlaps the caller's work, such as loading a model, instead of delaying the first answer that needs
    it. Optional; the worker starts on first use anyway."""
    WORKER.start()


def math_accuracy(
    completions: list,
    answer: list[str],
    log_metric: Callable[[str, float], None] | None = None,
    log_extra: Callable[[str, list], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when a completion's final answer equals the row's gold `answer`, else 0.0.

    Reports `math_accuracy/parse_failure_rate` (answers that could not be read, timeouts included,
    as a fraction of the batch) through TRL's `log_metric`, and the extracted answers as the
    `math_accuracy/extracted` column of TRL's completions table through `log_extra`.
    """
    scores = [
        score_math_answer(completion_text(completion), gold)
        for completion, gold in zip(completions, answer, strict=True)
    ]
    if log_metric is not None and scores:
        log_metric("math_accuracy/parse_failure_rate", sum(s.parse_failed for s in scores) / len(scores))
    if log_extra is not None:
        log_extra("math_accuracy/extracted", [s.extracted for s in scores])
    return [1.0 if s.correct else 0.0 for s in scores]


def check_gold_answers(answers: Iterable[Any]) -> None:
    """Raise `GoldAnswerError` listing the first bad rows (by index) if any gold answer cannot be parsed.

    Run it on the answer column before training: a row with an unparseable gold would otherwise stop
    the run at the first batch that holds it.
    """
    answers = list(answers)
    bad: list[tuple[int, Any]] = []
    for index, gold in enumerate(answers):
        try:
            _gold_value(_gold_string(gold))
        except GoldAnswerError:
            bad.append((index, gold))
    if bad:
        shown = "; ".join(f"row {index}: {gold!r:.80}" for index, gold in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise GoldAnswerError(
            f"{len(bad)} of {len(answers)} gold answers cannot be parsed as math ({shown}{more}). "
            "Fix or drop these rows, or map the answer column to the final value only "
            "(for GSM8K, the number after '####')."
        )


def _gold_string(gold: Any) -> str:
    if isinstance(gold, str):
        return gold
    if isinstance(gold, (int, float)) and not isinstance(gold, bool) and math.isfinite(gold):
        return str(gold)
    raise GoldAnswerError(
        f"a gold answer must be a string or a finite number, got {type(gold).__name__}: {gold!r:.80}"
    )


@functools.lru_cache(maxsize=65536)
def _gold_value(gold: str) -> Decimal | str:
    """The gold as an exact number for the fast path, else the gold text once math-verify parsed it.

    Cached per distinct gold string: a data set repeats each gold once per generation.
    """
    if len(gold) > MAX_ANSWER_CHARS or not gold.strip():
        raise GoldAnswerError(_bad_gold_message(gold))
    number = plain_number(gold)
    if number is not None:
        return number
    reply = WORKER.request({"op": "gold", "gold": gold}, MATH_VERIFY_TIMEOUT_SECONDS)
    if reply is None:
        raise GoldAnswerError(f"gold answer {gold!r:.200} took over {MATH_VERIFY_TIMEOUT_SECONDS} s to parse")
    if "error" in reply:
        raise GoldAnswerError(f"{_bad_gold_message(gold)} (math-verify failed: {reply['error']})")
    if not reply["parsed"]:
        raise GoldAnswerError(_bad_gold_message(gold))
    return gold


def _bad_gold_message(gold: str) -> str:
    return (
        f"gold answer {gold!r:.200} cannot be parsed as math, so no completion could score on it; "
        "give the final value only (e.g. '42', '\\frac{1}{2}', '$3.5$'), and check the data's answer column"
    )
