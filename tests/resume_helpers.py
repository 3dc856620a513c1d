"""Kill-and-resume tests' machinery: training runs under one fixed setting, killed at seeded points.

A resumed run is bit-identical to an uninterrupted one only under the same numerical conditions: the
same machine, the same thread count (a CPU kernel may sum in a different order with more threads)
and the same kind of process. So every run a test compares, the uninterrupted reference, each run
that is killed and the final resume, is a child of one *zygote*: a process started once with
`RUN_ENV` (one OpenMP/MKL thread, offline, no GPU) that imports the training stack and then forks one
child per `ntp-rl train` invocation. Forking also spares every child the stack's import, most of a
short run's time, which is what lets the tests afford ten kills.

Kill points (`KillPoint`) are drawn from a seed, so a failure replays with NTP_RL_KILL_SEED:
- after checkpoint N: once checkpoint-N is complete, wait a drawn fraction of a step (cut short when
  the next checkpoint folder appears), then SIGKILL: the kill lands in a forward, a backward, an
  optimizer step or at the start of the next save;
- while checkpoint N is written: a FIFO stands in for checkpoint-N/trainer_state.json, the file the
  trainer writes last, so the trainer blocks there with the weights, optimizer, scheduler and RNG
  state written or being written; the kill comes once a drawn one of those files exists. The resume
  must skip that checkpoint (renamed `checkpoint-N.incomplete-<time>`) and use the one before it.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED_VARIABLE = "NTP_RL_KILL_SEED"

# The one setting every compared run trains under. CUDA_VISIBLE_DEVICES="" keeps runs on the CPU
# kernels even on a machine with a GPU, whose kernels need not be deterministic.
RUN_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}

# Files of a checkpoint in the order the trainer writes them before trainer_state.json
# (transformers Trainer._save_checkpoint: model, optimizer, scheduler, RNG state, trainer state).
SAVED_BEFORE_STATE = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")
TRAINER_STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
POLL_SECONDS = 0.01
RUN_TIMEOUT_SECONDS = 600  # far above any run here: a hung run fails its test instead of hanging it


# ---------------------------------------------------------------------------------------------------
# The zygote: `python tests/resume_helpers.py serve`, driven by JSON lines on its stdin.


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so no run outlives a killed pytest.

    A run left alone could wait forever on a FIFO the test placed; elsewhere this is a no-op.
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve() -> None:
    """Import the training stack, then fork a child per `start` request; answer `poll` requests."""
    _die_with_parent()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from imports must not reach the protocol channel
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import ntp_rl.pipeline  # noqa: F401
    import ntp_rl.stages.reward_model  # noqa: F401
    import ntp_rl.stages.rl  # noqa: F401
    import ntp_rl.stages.sft  # noqa: F401
    from ntp_rl.cli import main

    # The imports' objects live as long as the process: out of the collector's sight, a child's
    # gc.collect() (TRL calls it every step) is seconds faster and touches no inherited pages.
    gc.freeze()
    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                protocol.close()  # the zygote's channel only: its end of file is the zygote's exit
                _child(main, request)  # never returns
            protocol.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "poll":
            try:
                done, status = os.waitpid(request["pid"], os.WNOHANG)
            except ChildProcessError:  # not a child, or already reaped: a client error
                protocol.write(json.dumps({"error": f"no child {request['pid']}"}) + "\n")
                continue
            code = os.waitstatus_to_exitcode(status) if done else None
            protocol.write(json.dumps({"returncode": code}) + "\n")


def _child(main, request: dict) -> None:
    import traceback

    import torch

    _die_with_parent()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.update(request.get("env") or {})
    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    code = 1
    try:
        code = main(request["argv"])
    except BaseException:  # noqa: B036 - a child must never fall back into the zygote's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedRuns:
    """Client of a zygote: start `ntp-rl` invocations as its children, poll them, kill them."""

    def __init__(self, log: Path):
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=RUN_ENV,
            cwd=REPO,
            text=True,
        )
        self.exit_codes: dict[int, int | None] = {}  # by pid; None while running
        self._reply()  # {"ready": pid}

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the zygote process exited; its log {self.log} ends:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"zygote: {reply['error']}")
        return reply

    def _ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def start(self, argv: list[str], log: Path, threads: int | None = None, env: dict | None = None) -> int:
        """Start `ntp-rl <argv>` as a forked child (output to `log`, appended); its pid."""
        request = {"argv": [str(a) for a in argv], "log": str(log), "threads": threads, "env": env}
        pid = self._ask(op="start", **request)["pid"]
        self.exit_codes[pid] = None
        return pid

    def poll(self, pid: int) -> int | None:
        """The child's exit status (negative: killed by that signal), None while it runs."""
        if self.exit_codes[pid] is None:
            self.exit_codes[pid] = self._ask(op="poll", pid=pid)["returncode"]
        return self.exit_codes[pid]

    def wait(self, pid: int, timeout: float = RUN_TIMEOUT_SECONDS) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll(pid)) is None:
            if time.monotonic() > deadline:
                self.kill(pid)
                raise TimeoutError(f"run {pid} still running after {timeout:.0f} s; killed")
            time.sleep(0.1)
        return code

    def kill(self, pid: int) -> int:
        """SIGKILL the child unless it has ended (and been reaped: its pid may be another's now)."""
        if self.poll(pid) is None:
            os.kill(pid, signal.SIGKILL)
        return self.wait(pid, timeout=60)

    def close(self) -> None:
        for pid, code in self.exit_codes.items():
            if code is None:
                self.kill(pid)
        self.process.stdin.close()  # the zygote leaves its loop at end of input
        self.process.wait(timeout=60)
        self.process.stdout.close()
        self._log_file.close()


_shared: ForkedRuns | None = None


def forked_runs(log_dir: Path) -> ForkedRuns:
    """The session's one zygote (started on first use; it exits with pytest, at the latest)."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        _shared = ForkedRuns(log_dir / "zygote.log")
        atexit.register(_shared.close)
    return _shared


# ---------------------------------------------------------------------------------------------------
# Kill points.


def kill_seed() -> int:
    """NTP_RL_KILL_SEED if set (to replay a failure), else a fresh random seed."""
    return int(os.environ.get(SEED_VARIABLE) or random.randrange(1 << 30))


@dataclass(frozen=True)
class KillPoint:
    checkpoint: int
    while_saving: bool = False
    fraction: float = 0.0  # after the checkpoint: this fraction of a step's time, then the kill
    saved_file: str = SAVED_BEFORE_STATE[0]  # while saving: the kill comes once this file exists

    def __str__(self) -> str:
        if self.while_saving:
            return f"while checkpoint-{self.checkpoint} is saved (once {self.saved_file} exists)"
        return f"{self.fraction:.2f} of a step after checkpoint-{self.checkpoint}"


def draw_kill_points(seed: int, stage: str, max_steps: int, save_steps: int, count: int) -> list[KillPoint]:
    """`count` kill points at distinct checkpoints before the last, one of them while saving."""
    rng = random.Random(f"{seed}:{stage}")
    checkpoints = sorted(rng.sample(range(save_steps, max_steps, save_steps), count))
    saving = rng.randrange(count)
    return [
        KillPoint(
            checkpoint=n,
            while_saving=i == saving,
            fraction=round(rng.random(), 2),
            saved_file=rng.choice(SAVED_BEFORE_STATE),
        )
        for i, n in enumerate(checkpoints)
    ]


def is_complete(checkpoint: Path) -> bool:
    """What the stage's resume asks of a checkpoint (ntp_rl.stages.common.checkpoint_is_complete)."""
    state = checkpoint / TRAINER_STATE
    if not state.is_file():  # absent, or a FIFO standing in for it
        return False
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return any(checkpoint.glob("*.safetensors"))


def newest_complete_checkpoint(stage_dir: Path) -> int:
    """The step of the checkpoint a run started now resumes from; 0 when there is none."""
    folder = stage_dir / "checkpoints"
    steps = [
        int(match.group(1))
        for path in (folder.iterdir() if folder.is_dir() else [])
        if (match := CHECKPOINT.match(path.name)) and is_complete(path)
    ]
    return max(steps, default=0)


def _metrics(stage_dir: Path) -> list[dict]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]  # whole lines only


@dataclass
class KillOutcome:
    point: KillPoint
    resumed_at: int  # the newest complete checkpoint when the run started
    first_logged_step: int  # the first step this run logged: resumed_at + 1 when it resumed
    fifo_placed: bool  # while saving: the FIFO was in place before the trainer reached the checkpoint

    def __str__(self) -> str:
        note = "" if self.fifo_placed or not self.point.while_saving else " (missed the save: after it)"
        return f"run from checkpoint-{self.resumed_at} killed {self.point}{note}"


def _newer_checkpoint_started(stage_dir: Path, step: int) -> bool:
    folder = stage_dir / "checkpoints"
    return any(
        (match := CHECKPOINT.match(path.name)) and int(match.group(1)) > step for path in folder.iterdir()
    )


def _place_fifo(checkpoint: Path) -> bool:
    """A FIFO as `checkpoint`'s trainer_state.json: the trainer blocks writing it until killed.

    False if the trainer wrote the real file first (the save went by). Only safe once the run's
    resume is behind it: the resume reads the trainer_state.json of checkpoints it tries.
    """
    checkpoint.mkdir(parents=True, exist_ok=True)
    try:
        os.mkfifo(checkpoint / TRAINER_STATE)
    except FileExistsError:
        return False
    return True


def run_and_kill(
    runs: ForkedRuns, argv: list[str], stage_dir: Path, point: KillPoint, last_step: int, log: Path
) -> KillOutcome:
    """Start a run, SIGKILL it at `point`; what it resumed from and whether the kill went as drawn.

    `last_step` is the run's last checkpoint: a FIFO holds the run there too, so that however late
    this process gets to look (a loaded machine), the run is still there to kill, not finished.
    """
    resumed_at = newest_complete_checkpoint(stage_dir)
    logged_before = len(_metrics(stage_dir))
    target = stage_dir / "checkpoints" / f"checkpoint-{point.checkpoint}"
    placed: list[Path] = []
    pid = runs.start(argv, log)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS

    def wait_for(condition) -> None:
        while not condition():
            if runs.poll(pid) is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"the run ended before its kill point ({point}); its log ends:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no kill point ({point}) within {RUN_TIMEOUT_SECONDS} s")
            time.sleep(POLL_SECONDS)

    try:
        # This run's first logged step: its resume (which renames incomplete checkpoints aside and
        # reads every trainer_state.json it tries) is behind it, and training has started.
        wait_for(lambda: len(_metrics(stage_dir)) > logged_before)
        first_logged_step = int(_metrics(stage_dir)[logged_before]["step"])
        last = stage_dir / "checkpoints" / f"checkpoint-{last_step}"
        for checkpoint in (last, target) if point.while_saving else (last,):
            if _place_fifo(checkpoint):
                placed.append(checkpoint)
        if target in placed:
            wait_for(lambda: (target / point.saved_file).exists())
        else:
            wait_for(lambda: is_complete(target))
            new = _metrics(stage_dir)[logged_before:]
            step_seconds = new[-1]["time"] - new[-2]["time"] if len(new) >= 2 else 0.5
            until = time.monotonic() + point.fraction * step_seconds
            wait_for(
                lambda: time.monotonic() >= until or _newer_checkpoint_started(stage_dir, point.checkpoint)
            )
    finally:
        code = runs.kill(pid)
        for checkpoint in placed:
            (checkpoint / TRAINER_STATE).unlink()  # as a kill right before it is written leaves it
    assert code == -signal.SIGKILL, f"run {pid} exited with {code} before it was killed ({point})"
    return KillOutcome(point, resumed_at, first_logged_step, fifo_placed=target in placed)


# ---------------------------------------------------------------------------------------------------
# The test itself, shared by the stages: reference and killed chain side by side, then the resume.


def resumed_step(results: dict) -> int:
    """The checkpoint step a stage's results (`COMPLETE`) say it resumed from; 0 for none."""
    resumed_from = results.get("resumed_from")
    if resumed_from is None:
        return 0
    match = CHECKPOINT.match(Path(resumed_from).name)
    assert match, f"resumed_from {resumed_from!r} names no checkpoint-N folder"
    return int(match.group(1))


def write_recipe(recipe: dict, folder: Path) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@dataclass
class Reference:
    """An uninterrupted run, started as a child of the zygote (it may still be running)."""

    runs: ForkedRuns
    pid: int
    recipe: Path
    root: Path  # its --output-dir
    log: Path

    def stage_dir(self, run_name: str, stage: str) -> Path:
        """The finished run's stage folder (waits for the run; asserts it succeeded, unresumed)."""
        assert self.runs.wait(self.pid) == 0, self.log.read_text(errors="replace")[-3000:]
        stage_dir = self.root / run_name / stage
        assert resumed_step(json.loads((stage_dir / "COMPLETE").read_text())) == 0
        return stage_dir


def start_reference(runs: ForkedRuns, recipe_path: Path, root: Path) -> Reference:
    log = root.with_suffix(".log")
    pid = runs.start(["train", recipe_path, "--output-dir", root], log)
    return Reference(runs, pid, recipe_path, root, log)


def kill_resume_and_compare(
    runs: ForkedRuns,
    recipe: dict,
    tmp_path: Path,
    stage: str,
    points: list[KillPoint],
    replay: str,
    reference: Reference | None = None,
) -> list[str]:
    """Run `recipe` uninterrupted and, beside it, killed at each point and resumed each time.

    Asserts that every run after a kill resumed from the newest complete checkpoint, that the last
    one resumed from a checkpoint N > 0, that a checkpoint killed while being saved was skipped, and
    then that the final adapter equals the uninterrupted run's (`reference`, started here if not
    given: the same recipe) bit for bit. Returns the kill report.
    """
    from safetensors.torch import load_file

    path = write_recipe(recipe, tmp_path)
    run_name, trainer = recipe["run"]["name"], recipe["stages"][0]["trainer"]
    max_steps, save_steps = trainer["max_steps"], trainer["save_steps"]
    assert max_steps % save_steps == 0, "the kill guard needs a checkpoint at the last step"
    train = ["train", str(path), "--output-dir", str(tmp_path / "killed")]

    # Both chains run at once (one thread each): on 2 cores the reference costs little wall time.
    if reference is None:
        reference = start_reference(runs, path, tmp_path / "straight")
    stage_dir = tmp_path / "killed" / run_name / stage
    report, outcomes = [replay], []
    for index, point in enumerate(points):
        log = tmp_path / f"killed-{index}.log"
        outcome = run_and_kill(runs, train, stage_dir, point, max_steps, log)
        report.append(str(outcome))
        outcomes.append(outcome)
        assert outcome.first_logged_step == outcome.resumed_at + 1, (
            f"run {index} started at step {outcome.first_logged_step}, not after checkpoint-"
            f"{outcome.resumed_at}\n" + "\n".join(report)
        )
    resumed_at = newest_complete_checkpoint(stage_dir)
    report.append(f"final run from checkpoint-{resumed_at}")
    message = "\n".join(report)
    final = runs.start(train, tmp_path / "resumed.log")
    assert runs.wait(final) == 0, f"{message}\n{(tmp_path / 'resumed.log').read_text()[-3000:]}"

    results = json.loads((stage_dir / "COMPLETE").read_text())
    assert resumed_at > 0, f"no complete checkpoint before the final run: nothing was resumed\n{message}"
    assert resumed_step(results) == resumed_at, f"resumed_from {results['resumed_from']}\n{message}"
    assert results["global_step"] == max_steps, message
    for outcome in outcomes:
        if outcome.fifo_placed:  # the next run found it incomplete and put it aside
            name = f"checkpoint-{outcome.point.checkpoint}"
            aside = list((stage_dir / "checkpoints").glob(f"{name}.incomplete-*"))
            assert aside, f"{name}, killed while it was saved, was not skipped\n{message}"
    straight_dir = reference.stage_dir(run_name, stage)
    straight = load_file(straight_dir / "adapter" / "adapter_model.safetensors")
    resumed = load_file(stage_dir / "adapter" / "adapter_model.safetensors")
    assert sorted(resumed) == sorted(straight), message
    different = [name for name in straight if not bool((straight[name] == resumed[name]).all())]
    if different:  # rounding-sized differences point at the numerical conditions, larger at the resume
        largest = max(float((straight[name] - resumed[name]).abs().max()) for name in different)
        raise AssertionError(
            f"{message}\nthe resumed adapter differs in {len(different)} of {len(straight)} tensors, "
            f"by up to {largest:.1e}: {different[:4]}"
        )
    return report


def truncated_copy(run_dir: Path, stage: str, checkpoint: int, destination: Path) -> Path:
    """A copy of a finished run as if it had been killed right after `checkpoint`; its stage folder."""
    import shutil

    shutil.copytree(run_dir, destination)
    stage_dir = destination / stage
    (stage_dir / "COMPLETE").unlink()
    shutil.rmtree(stage_dir / "adapter")
    for path in (stage_dir / "checkpoints").iterdir():
        match = CHECKPOINT.match(path.name)
        if match and int(match.group(1)) > checkpoint:
            shutil.rmtree(path)
    return stage_dir


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
