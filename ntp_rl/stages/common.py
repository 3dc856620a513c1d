"""What every training stage shares: its context, its folders, trainer arguments, metric logging.

A stage folder `runs/<name>/<stage>/` holds `checkpoints/` (the trainer's own, for resume),
`adapter/` (the final LoRA adapter and tokenizer), `metrics.jsonl` (one line per logging step) and,
written last, `COMPLETE` (the stage's results as JSON). A folder without `COMPLETE` is unfinished.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ntp_rl.config import Recipe, StageBase, build_dataclass, trainer_config_class

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

    def trainer_args(self, **defaults: Any):
        """The stage's TRL config: recipe `trainer:` over `defaults`, with pipeline-owned fields set."""
        import torch

        kwargs = {**defaults, **self.stage.trainer}
        # TRL turns bf16 autocast on by default, which transformers refuses on a CPU unless use_cpu is
        # set. Follow the recipe's model dtype instead. Without a GPU, use_cpu also makes several
        # processes (accelerate launch --num_processes 2) train data-parallel over gloo; without it
        # each process would silently train alone on all the data.
        kwargs.setdefault("bf16", self.recipe.model.dtype == "bfloat16")
        if not torch.cuda.is_available():
            kwargs.setdefault("use_cpu", True)
        path = f"stages[{self.index}].trainer"
        return build_dataclass(
            trainer_config_class(self.stage),
            kwargs,
            path,
            output_dir=str(self.stage_dir / CHECKPOINT_DIR),
            seed=self.recipe.run.seed,
        )


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


def last_checkpoint(stage_dir: Path) -> str | None:
    """The newest complete trainer checkpoint of a stage, if any (for resuming an interrupted stage)."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = stage_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    return get_last_checkpoint(str(folder))


def read_completion(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / COMPLETE_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def write_completion(stage_dir: Path, results: dict[str, Any]) -> None:
    tmp = stage_dir / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(stage_dir / COMPLETE_MARKER)
