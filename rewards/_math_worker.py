"""A math-verify process with a deadline: no sample can hang a run, in any thread.

math-verify bounds its own work with `signal.alarm`, which works only in the main thread of the
main interpreter; TRL may call rewards from other threads, and the eval harness may too. So the
rewards call math-verify with its timeouts disabled, in one long-lived child process, and wait for
each answer with a deadline. A sample past its deadline is reported as timed out and the child is
killed (a thread could not be) and started again. The child is started on first use, or earlier by
`start()` so that its start overlaps the caller's own (the eval harness does, before loading a
model); it serves one request at a time; a lock serialises callers.

The child is a plain `python` subprocess that runs this file by path (not a `multiprocessing`
spawn, which would re-import the user's `__main__`). It imports only the standard library until
it runs, so the parent never imports math-verify or sympy. Protocol: one JSON object per line on
stdin, one JSON reply per line on the child's original stdout; the child's own prints and logs
go to stderr, kept in a temporary file for the message of a failed start.

Requests:  {"op": "gold", "gold": str}                    -> {"parsed": bool, "extracted": str | None}
           {"op": "score", "text": str, "gold": str}      -> {"parsed": bool, "correct": bool,
                                                             "extracted": str | None, "gold_parsed": bool}
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time

# Starting the child imports sympy and math-verify and warms the LaTeX grammar: quick on an idle
# core, far longer on a loaded machine, hence the wide margin.
WORKER_START_TIMEOUT_SECONDS = 120.0

_EXTRACTED_MAX_CHARS = 200  # of the extracted answer returned for logs and eval reports


# --- the child ---------------------------------------------------------------------------------


def _latex_wrapped(answer: str) -> str:
    """A bare LaTeX answer (`\\dfrac{3}{4}`, `2^{10}`) inside `$...$`, where math-verify looks for it.

    Without delimiters math-verify reads `2^{10}` as 2 and finds nothing in `\\dfrac{3}{4}`.
    An escaped dollar (`\\$42`, a currency sign) is dropped first.
    """
    answer = answer.replace("\\$", "").strip()
    if "$" not in answer and re.search(r"[\\^{}_]", answer):
        return f"${answer}$"
    return answer


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    return tuple(parse(_latex_wrapped(gold), extraction_config=configs, parsing_timeout=None))


def _split_parsed(parsed) -> tuple[list, str | None]:
    """math-verify's parse result as (math objects, the matched text)."""
    from sympy import Basic, MatrixBase

    math_objects = [x for x in parsed if isinstance(x, (Basic, MatrixBase))]
    matched = next((x for x in parsed if isinstance(x, str)), None)
    if matched is None and math_objects:
        matched = str(math_objects[0])
    return math_objects, None if matched is None else matched[:_EXTRACTED_MAX_CHARS]


def _handle(request: dict) -> dict:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_objects, gold_extracted = _split_parsed(_parse_gold(request["gold"]))
    if request["op"] == "gold":
        return {"parsed": bool(gold_objects), "extracted": gold_extracted}
    if not gold_objects:
        return {"gold_parsed": False, "parsed": False, "correct": False, "extracted": None}
    text = request["text"]
    if request.get("answer_line"):
        text = _latex_wrapped(text)
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    predicted = parse(text, extraction_config=configs, parsing_timeout=None)
    objects, extracted = _split_parsed(predicted)
    correct = bool(objects) and verify(gold_objects, objects, timeout_seconds=None)
    return {"gold_parsed": True, "parsed": bool(objects), "correct": bool(correct), "extracted": extracted}


def _serve() -> None:
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # stray prints, Python's or C's, must not corrupt the protocol stream
    sys.stdout = sys.stderr
    # Timeouts are disabled on purpose (the parent enforces them); silence math-verify's warning.
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _handle({"op": "score", "text": "\\frac{1}{2}", "gold": "0.5", "answer_line": True})  # warm up
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            reply = _handle(json.loads(line))
        except Exception as exc:  # any failure is reported; the child keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        replies.write(json.dumps(reply) + "\n")


# --- the parent --------------------------------------------------------------------------------

# Runs this file by path with the parent's sys.path, so the child imports what the parent would.
_BOOTSTRAP = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


class WorkerStartError(RuntimeError):
    """The math-verify child did not start (math-verify missing, interpreter broken, ...)."""


class MathVerifyWorker:
    """The parent's handle on the child: `request(message, timeout_seconds) -> reply | None`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._buffer = b""
        self._ready = False
        self.restarts = 0  # children killed for a missed deadline or found dead

    def request(self, message: dict, timeout_seconds: float) -> dict | None:
        """The child's reply, or None when it missed the deadline or died (it is then replaced).

        A reply `{"error": "..."}` reports an exception math-verify let through; the child goes on serving.
        """
        with self._lock:
            self._ensure_ready()
            try:
                self._process.stdin.write(json.dumps(message).encode() + b"\n")
                self._process.stdin.flush()
            except OSError:
                self._replace()
                return None
            line = self._read_line(time.monotonic() + timeout_seconds)
            if line is None:
                self._replace()
                return None
            return json.loads(line)

    def start(self) -> None:
        """Start the child now if none is running, without waiting for it to be ready.

        Its imports (sympy, math-verify) then run on another core while the caller goes on, say
        loading a model, instead of delaying the first request; that request waits for whatever is
        left of the start.
        """
        with self._lock:
            self._ensure_started()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _ensure_started(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._kill()
            self._start()

    def _ensure_ready(self) -> None:
        self._ensure_started()
        if not self._ready:
            line = self._read_line(time.monotonic() + WORKER_START_TIMEOUT_SECONDS)
            if line is None or not json.loads(line).get("ready"):
                detail = self._stderr_tail()
                self._kill()
                raise WorkerStartError(
                    f"the math-verify worker process did not start: {detail or 'no output'}"
                )
            self._ready = True

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__), json.dumps(sys.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            close_fds=True,
        )
        self._buffer = b""
        self._ready = False

    def _replace(self) -> None:
        """Kill the child and start the next one now, so its start overlaps the caller's work."""
        self.restarts += 1
        self._kill()
        self._start()

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._process.stdin, self._process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
        self._process, self._stderr, self._buffer, self._ready = None, None, b"", False

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the child died
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-2000:]

    def _forget_after_fork(self) -> None:
        # A forked child (a DataLoader worker, say) must not talk to or kill its parent's process.
        self._lock = threading.Lock()
        self._process, self._stderr, self._buffer, self._ready = None, None, b"", False


WORKER = MathVerifyWorker()
atexit.register(WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WORKER._forget_after_fork)


if __name__ == "__main__":
    _serve()
