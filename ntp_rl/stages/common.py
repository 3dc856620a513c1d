"""What every training stage shares: its context, its folders, trainer arguments, metric logging.

A stage folder `runs/<name>/<stage>/` holds `checkpoints/` (the trainer's own, for resume),
`adapter/` (the final LoRA adapter and tokenizer), `metrics.jsonl` (one line per logging step) and,
written last, `COMPLETE` (the stage's results as JSON). A folder without `COMPLETE` is unfinished.

Every trainer also gets two guards: `StopOnNonFinite` (a NaN/inf loss, gradient norm or weight
stops the stage without saving, keeping the last good checkpoint) and `StopOnSignal` (Ctrl-C or
SIGTERM finishes the current step, saves a resumable checkpoint, then stops). `last_checkpoint`
resumes from the newest *complete* checkpoint; an incomplete one (killed while saving) is renamed
aside, kept and reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ntp_rl.common import write_json_atomic
from ntp_rl.config import Recipe, StageBase, build_dataclass, trainer_config_class
from ntp_rl.dtypes import resolve_dtype
from ntp_rl.errors import TrainingDiverged

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


@dataclass
class StageContext:
    recipe: Recipe
    stage: StageBase
    index: int
    run_dir: Path
    base_model_path: str  # resolved folder or hub id of the base model
    recipe_dir: Path  # relative paths in the recipe (data files, reward files) resolve from here
    is_main_process: bool = True
    # Results of earlier stages of this run, by stage name (their COMPLETE markers).
    earlier: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage.stage_name

    @property
    def data(self):
        return self.recipe.stage_data(self.stage)

    @property
    def dtype(self) -> str:
        """The weights' dtype: model.dtype, with `auto` resolved (the pipeline resolved it already)."""
        return resolve_dtype(self.recipe.model.dtype)

    @property
    def seed(self) -> int:
        """The stage's seed (its `seed:`, else run.seed); data splits always use run.seed."""
        seed = getattr(self.stage, "seed", None)
        return self.recipe.run.seed if seed is None else seed

    def trainer_args(self, **defaults: Any):
        """The stage's TRL config: recipe `trainer:` over `defaults`, with pipeline-owned fields set."""
        return trainer_args(self.recipe, self.stage, self.index, self.stage_dir / CHECKPOINT_DIR, **defaults)


def trainer_args(recipe: Recipe, stage: StageBase, index: int, checkpoints: Path, **defaults: Any):
    """A training stage's TRL config: its `trainer:` over `defaults`; output folder and seed set here."""
    import torch

    kwargs = {**defaults, **stage.trainer}  # type: ignore[attr-defined]
    # TRL turns bf16 autocast on by default, which transformers refuses on a CPU unless use_cpu is
    # set. Follow the model's dtype instead (model.dtype, `auto` resolved). Without a GPU, use_cpu
    # also makes several processes (accelerate launch --num_processes 2) train data-parallel over
    # gloo; without it each process would silently train alone on all the data.
    kwargs.setdefault("bf16", resolve_dtype(recipe.model.dtype) == "bfloat16")
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    seed = getattr(stage, "seed", None)
    return build_dataclass(
        trainer_config_class(stage),
        kwargs,
        f"stages[{index}].trainer",
        output_dir=str(checkpoints),
        seed=recipe.run.seed if seed is None else seed,
    )


class StageRunner:
    """One stage kind, torchtune-style: `check()` before any model loads, then `run(ctx)`.

    The pipeline builds a runner per stage of the recipe and calls every `check()` before the first
    `run()`, so a bad input in the last stage stops the run before the first one spends compute.
    `check()` loads and checks what the stage needs that costs no model (data, reward specs,
    settings) and keeps it; `run()` uses what `check()` prepared rather than deriving it again.
    Errors in `check()` are `UserError`s naming `stages[i]` (exit status 2).
    """

    def __init__(self, recipe: Recipe, stage: StageBase, index: int, recipe_dir: Path):
        self.recipe, self.stage, self.index, self.recipe_dir = recipe, stage, index, recipe_dir
        self.where = f"stages[{index}] ({stage.stage_name})"

    @property
    def data(self):
        return self.recipe.stage_data(self.stage)

    def check(self) -> None:
        raise NotImplementedError

    def run(self, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError

    def check_trainer_args(self, **defaults: Any):
        """The stage's TRL config, built as `run()` builds it, so that TRL's own checks of it (e.g.
        num_generations dividing the generation batch) fail here rather than after the run folder is
        written. Nothing is created in the checkpoint folder it names."""
        recipe = self.recipe
        stage_dir = Path(recipe.run.output_dir) / recipe.run.name / self.stage.stage_name
        return trainer_args(recipe, self.stage, self.index, stage_dir / CHECKPOINT_DIR, **defaults)

    def check_prompts_fit(self, prompts: list, new_tokens: int) -> None:
        """Each prompt, chat-templated, leaves `new_tokens` of room in the model's context."""
        from ntp_rl.models import check_prompts_fit

        model = self.recipe.model
        check_prompts_fit(model.name_or_path, prompts, new_tokens, self.where, model.trust_remote_code)


class JsonlMetricsCallback(TrainerCallback):
    """Append every `logs` dict the trainer emits to `metrics.jsonl` (main process only)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        # `time`: wall clock (Unix seconds) at logging, for throughput and step-time comparisons.
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[key] = value
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def check_stage_adapter(adapter: Path, where: str) -> Path:
    """An earlier stage's adapter folder, checked before a model loads from it; UserError if unusable."""
    from ntp_rl.errors import UserError
    from ntp_rl.models import check_adapter_weights

    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{where}: {adapter} holds no adapter; run the {adapter.parent.name!r} stage first")
    check_adapter_weights(adapter, where)
    return adapter


def checkpoint_is_complete(path: Path) -> bool:
    """The trainer writes weights, optimizer and RNG state first and `trainer_state.json` last."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(path.glob("*.safetensors"))


def last_checkpoint(stage_dir: Path, is_main_process: bool = True) -> str | None:
    """The newest complete trainer checkpoint of a stage, if any (for resuming an interrupted stage).

    Kept, not transformers' `get_last_checkpoint`: that returns the newest `checkpoint-N` folder
    whether or not its save finished, and resuming from one killed mid-save fails (transformers#35782).
    A newer checkpoint that is incomplete (the process was killed while saving it) is skipped and,
    by the main process, renamed to `checkpoint-N.incomplete-<time>`: kept for inspection, and out
    of the way of the trainer, which will write `checkpoint-N` afresh when it gets there again.
    """
    folder = stage_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))
    )
    for _, path in reversed(found):
        if checkpoint_is_complete(path):
            return str(path)
        aside = path.with_name(f"{path.name}.incomplete-{int(time.time())}")
        logger.warning(
            "checkpoint %s is incomplete (killed while saving?); skipped, kept as %s", path, aside.name
        )
        if is_main_process:
            path.rename(aside)
    return None


def _non_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value)


def _trainable_weights_finite(model: Any) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


class StopOnNonFinite(TrainerCallback):
    """Stop the stage, unsaved, when the logged loss or grad_norm, or a trainable weight, is NaN/inf.

    The check runs on every log (loss, grad_norm) and before every checkpoint and at the end of
    training (the trainable weights: a NaN between two logs must not reach a checkpoint or the
    final adapter). It sets `should_save` off and raises `TrainingDiverged` (exit status 1), so the
    newest checkpoint on disk is the last good one. Every process sees the same gathered loss, so
    all ranks stop together.
    """

    WATCHED = ("loss", "grad_norm")

    def __init__(self, stage_name: str, stage_dir: Path):
        self.stage_name = stage_name
        self.stage_dir = stage_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = [f"{key} = {logs[key]}" for key in self.WATCHED if _non_finite((logs or {}).get(key))]
        if bad:
            self._stop(control, state, " and ".join(bad))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None and not _trainable_weights_finite(model):
            self._stop(control, state, "a trainable weight is NaN/inf")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and not _trainable_weights_finite(model):
            self._stop(control, state, "a trainable weight is NaN/inf")

    def _stop(self, control, state, what: str) -> None:
        control.should_save = False
        control.should_training_stop = True
        good = last_checkpoint(self.stage_dir, is_main_process=False)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise TrainingDiverged(
            f"stage {self.stage_name}: {what} at step {state.global_step}; stopped without saving, {kept}. "
            "Lower the learning rate or check the data and rewards, and start a new run (--new-run)."
        )


class StopOnSignal(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM while training: finish the step, save a checkpoint, stop.

    Use `with stop.catching_signals(): trainer.train(...)`, then `stop.raise_if_stopped()`, which
    raises KeyboardInterrupt (exit status 130) so the stage is not marked complete; the same command
    resumes from that checkpoint. A second signal takes the default path at once (no checkpoint).
    With several processes the ranks agree (all-reduce) to stop after the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def catching_signals(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            self._restore()

    def _handle(self, signum, frame) -> None:
        self.requested = signum
        self._restore()
        logger.warning(
            "%s: stopping after this step and saving a checkpoint (again to abort without saving)",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self._all_agree_to_stop(args):
            control.should_save = True
            control.should_training_stop = True

    def _all_agree_to_stop(self, args) -> bool:
        import torch
        import torch.distributed as dist

        flag = self.requested is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensor = torch.tensor([int(flag)], device=args.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
            if flag and self.requested is None:
                self.requested = signal.SIGINT  # another rank was interrupted
        return flag

    def raise_if_stopped(self) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f"stopped by {signal.Signals(self.requested).name}")


def stage_callbacks(ctx: StageContext) -> tuple[list[TrainerCallback], StopOnSignal]:
    """The callbacks every training stage gives its trainer: metrics log and the two guards."""
    stop = StopOnSignal()
    # StopOnSignal asks for a save before StopOnNonFinite checks the weights that would be saved.
    callbacks = [
        JsonlMetricsCallback(ctx.stage_dir / METRICS_FILE),
        stop,
        StopOnNonFinite(ctx.stage.stage_name, ctx.stage_dir),
    ]
    return callbacks, stop


def read_completion(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / COMPLETE_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def write_completion(stage_dir: Path, results: dict[str, Any]) -> None:
    write_json_atomic(stage_dir / COMPLETE_MARKER, results)
