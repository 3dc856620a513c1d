"""The pipeline: a validated Recipe -> `runs/<name>/` with a manifest, then its stages in order.

`manifest.json` records the resolved config, its hash, package versions, the seed, the dtype
`model.dtype` resolved to here (`auto`: ntp_rl/dtypes.py) and each stage's status, dtype, timings
and peak resident memory. A finished stage (its `COMPLETE` marker exists) is skipped when the same
config runs again; an interrupted one resumes from its last trainer checkpoint. A
different config pointed at an existing run is refused unless `new_run` is set, which picks
`<name>-2`, `<name>-3`, ... Nothing is ever deleted or overwritten. With several processes
(accelerate), every rank runs the stages (training is collective) and only the main process writes
the manifest and markers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ntp_rl.common import package_versions, utc_now, write_json_atomic
from ntp_rl.config import EvalStage, Recipe, RewardModelStage, RlStage, SftStage, StageBase
from ntp_rl.dtypes import describe_choice, dtype_choice, use_dtype_choice
from ntp_rl.errors import DiskFull, UserError, is_disk_full
from ntp_rl.models import check_model_reference
from ntp_rl.reuse import MANIFEST, copy_stages, plan_reuse
from ntp_rl.stages.common import StageContext, StageRunner, read_completion, write_completion

logger = logging.getLogger(__name__)


def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux: `clear_refs` 5); False elsewhere.

    The kernel's `ru_maxrss` follows the same mark, so a wrapper such as `/usr/bin/time` sees only
    the last stage's peak; the manifest's top-level `peak_rss_mib` is the run's.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_memory() -> None:
    """Hand what earlier stages freed back to the OS before the next stage starts.

    A finished stage's trainer and models are garbage (reference cycles: `gc.collect`), but glibc keeps
    freed heap mapped, so the next stage would start, and peak, that much higher (an eval after GRPO
    peaked far higher than the same eval run alone). `malloc_trim(0)` returns it.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


def _peak_rss_mib() -> float | None:
    """This process's resident-memory high-water mark (`VmHWM`) in MiB; None where /proc has none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _existing_hash(run_dir: Path) -> str | None:
    manifest = run_dir / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("config_hash")
    except (OSError, json.JSONDecodeError):
        return "unreadable"


def choose_run_dir(recipe: Recipe, new_run: bool) -> Path:
    """The run folder for this config: reuse the same config's folder, refuse a different one."""
    root = Path(recipe.run.output_dir).expanduser()
    wanted = recipe.config_hash()
    run_dir = root / recipe.run.name
    existing = _existing_hash(run_dir)
    if run_dir.exists() and existing is None and any(run_dir.iterdir()):
        existing = "no manifest"
    if existing is None or existing == wanted:
        return run_dir
    if not new_run:
        raise UserError(
            f"{run_dir} holds a run of a different config (hash {existing}, this one {wanted}); "
            "its results are kept. Pass --new-run to start a new run beside it, or set run.name."
        )
    for suffix in range(2, 10_000):
        candidate = root / f"{recipe.run.name}-{suffix}"
        hash_there = _existing_hash(candidate)
        if hash_there == wanted or not candidate.exists():
            return candidate
    raise UserError(f"{root}: too many runs named {recipe.run.name}-N; set run.name")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"output folder {folder} is not writable ({exc.strerror}); set run.output_dir"
        ) from None


# Below this much free disk a run refuses to start (exit 2): a 135M-parameter model's LoRA
# checkpoints are tens of MB each, a full fine-tune's optimizer state is ~12 bytes per parameter.
MIN_FREE_BYTES = 1 << 30  # 1 GiB
MIN_FREE_BYTES_TINY = 64 << 20  # the tiny test model's checkpoints are a few MB


def check_free_disk(folder: Path, model: str) -> None:
    """Refuse to start a run on a nearly full disk rather than die writing a checkpoint."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = MIN_FREE_BYTES_TINY if model == "tiny" else MIN_FREE_BYTES
    if free < need:
        raise UserError(
            f"output folder {folder}: only {free / 2**20:.0f} MiB free on its disk; a run of model "
            f"{model!r} needs at least {need / 2**20:.0f} MiB for checkpoints. Free some space or set "
            "run.output_dir (or --output-dir) to another disk."
        )


def _disk_full_message(stage_name: str, run_dir: Path, stage_dir: Path) -> str:
    """What a stage that ran out of disk says: which disk, and the checkpoint the same command resumes from."""
    from ntp_rl.stages.common import last_checkpoint

    mount = run_dir.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = f", {shutil.disk_usage(run_dir).free / 2**20:.0f} MiB free now"
    except OSError:
        free = ""
    good = last_checkpoint(stage_dir, is_main_process=False)  # renamed aside by the resume, not here
    resume = (
        f"the same command resumes from its newest complete checkpoint, {good}"
        if good
        else "the same command starts the stage again (it saved no complete checkpoint)"
    )
    return (
        f"stage {stage_name}: no space left on the disk holding {run_dir} (the file system mounted at "
        f"{mount}{free}). Free some space, or move the run folder to another disk and point "
        f"run.output_dir (or --output-dir) at its parent; {resume}."
    )


class Manifest:
    """The run's manifest; only the main process writes it."""

    def __init__(self, run_dir: Path, recipe: Recipe, recipe_path: Path, is_main: bool, smoke: bool):
        self.path = run_dir / MANIFEST
        self.is_main = is_main
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {
                "name": run_dir.name,
                "created_at": utc_now(),
                "recipe_file": str(recipe_path),
                "config_hash": recipe.config_hash(),
                "config": recipe.model_dump(mode="json"),
                "seed": recipe.run.seed,
                # Whether model code from the model folder or hub may run; off unless the recipe says so.
                "trust_remote_code": recipe.model.trust_remote_code,
                "smoke": smoke,
                "stages": {s.stage_name: {"kind": s.kind, "status": "pending"} for s in recipe.stages},
            }
        self.data["versions"] = package_versions()
        self.save()

    def update_stage(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        if self.is_main:
            write_json_atomic(self.path, self.data)


def stage_runner(recipe: Recipe, stage: StageBase, index: int, recipe_dir: Path) -> StageRunner:
    """The runner of a stage's kind (imported here, so that a recipe's stage kinds alone are loaded)."""
    if isinstance(stage, SftStage):
        from ntp_rl.stages.sft import SftRunner as Runner
    elif isinstance(stage, RewardModelStage):
        from ntp_rl.stages.reward_model import RewardModelRunner as Runner
    elif isinstance(stage, RlStage):
        from ntp_rl.stages.rl import RlRunner as Runner
    elif isinstance(stage, EvalStage):
        from ntp_rl.stages.evaluate import EvalRunner as Runner
    else:
        raise TypeError(f"no runner for stage kind {stage.kind!r}")  # type: ignore[attr-defined]
    return Runner(recipe, stage, index, recipe_dir)


def preflight(recipe: Recipe, recipe_dir: Path) -> list[StageRunner]:
    """Every check that needs data or code but no model, for every stage, before any stage runs.

    The model reference (a local folder needs config.json and safetensors weights), then each
    stage's `check()`: its data (files, encoding, splits, columns, answer pattern), reward specs
    (importable, callable, right signature, the columns they need) and optional dependencies. A
    problem is a `UserError` naming the culprit (exit status 2), so a bad input never leaves a
    half-written run folder behind. Returns the checked runners, holding what they prepared.
    """
    check_model_reference(recipe.model.name_or_path)
    runners = [stage_runner(recipe, stage, index, recipe_dir) for index, stage in enumerate(recipe.stages)]
    for runner in runners:
        runner.check()
    return runners


def run_pipeline(
    recipe: Recipe,
    recipe_path: Path,
    only_stage: str | None = None,
    new_run: bool = False,
    smoke: bool = False,
    reuse: Path | None = None,
) -> Path:
    import torch
    from accelerate import PartialState

    # cpu=True where there is no GPU: several CPU processes then form a gloo group (MULTI_CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    names = [s.stage_name for s in recipe.stages]
    if only_stage is not None and only_stage not in names:
        raise UserError(f"--stage {only_stage!r}: the recipe has stages {names}")
    recipe_dir = recipe_path.resolve().parent
    dtype = _agree_on_dtype(state, recipe.model.dtype)  # before preflight, which builds trainer configs
    runners = preflight(recipe, recipe_dir)

    run_dir = choose_run_dir(recipe, new_run)
    state.wait_for_everyone()  # every rank has chosen the same folder before rank 0 creates it
    run_lock = FileLock(str(run_dir.parent / f".{run_dir.name}.lock"))

    def claim_run_folder() -> None:
        check_free_disk(run_dir, recipe.model.name_or_path)
        check_writable(run_dir)
        try:  # one ntp-rl process tree per run folder: a second one would write into the same stages
            run_lock.acquire(timeout=0)
        except Timeout:
            raise UserError(
                f"{run_dir} is in use by another ntp-rl run; wait for it to finish (or stop it), then re-run"
            ) from None

    _on_main_process(state, claim_run_folder)
    try:
        plan: list | None = None  # `--reuse`: the stages to copy, planned on the main process only
        if reuse is not None:  # checked before the run folder gets anything
            plan = []
            _on_main_process(
                state, lambda: plan.extend(plan_reuse(recipe, run_dir, reuse, dtype["resolved"], smoke))
            )
        return _run_stages(
            recipe, recipe_path, recipe_dir, run_dir, state, only_stage, smoke, runners, dtype, plan
        )
    finally:
        if run_lock.is_locked:
            run_lock.release()


def _agree_on_dtype(state, requested: str) -> dict[str, Any]:
    """Resolve model.dtype on the main process and hand the choice to every rank.

    `auto` rests on a timing (ntp_rl/dtypes.py), which ranks measuring for themselves could read
    differently; ranks that load the model in different dtypes would not train as one. The other
    ranks wait while the main process measures, so they do not slow its probe down either.
    """
    from accelerate.utils import broadcast_object_list

    choice = [dtype_choice(requested) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(choice, from_process=0)
    use_dtype_choice(choice[0])
    if requested == "auto":
        logger.info(describe_choice(choice[0]))
    return choice[0]


def _on_main_process(state, check) -> None:
    """Run `check` on the main process only; a UserError it raises is raised on every rank (no rank hangs)."""
    from accelerate.utils import broadcast_object_list

    message = [None]
    if state.is_main_process:
        try:
            check()
        except UserError as exc:
            message = [str(exc)]
    if state.num_processes > 1:
        broadcast_object_list(message, from_process=0)
    if message[0] is not None:
        raise UserError(message[0])


def _run_stages(
    recipe, recipe_path, recipe_dir, run_dir, state, only_stage, smoke, runners, dtype, reuse_plan=None
) -> Path:
    from ntp_rl.models import resolve_model_path

    manifest = Manifest(run_dir, recipe, recipe_path, state.is_main_process, smoke)
    manifest.data["world_size"] = state.num_processes
    earlier_dtype = (manifest.data.get("dtype") or {}).get("resolved")
    if earlier_dtype not in (None, dtype["resolved"]):  # a resume on another machine, or other threads
        logger.warning(
            "model.dtype %s resolves to %s here; this run's earlier stages ran in %s (each stage's "
            "entry in the manifest says which)",
            dtype["requested"],
            dtype["resolved"],
            earlier_dtype,
        )
    manifest.data["dtype"] = dtype
    manifest.save()
    logger.info("run folder: %s", run_dir)
    if reuse_plan is not None:  # every rank meets here; the main process copies, the others wait
        _on_main_process(state, lambda: copy_stages(reuse_plan, run_dir))
        for name, entry in reuse_plan:  # empty but on the main process, the one that writes it
            manifest.update_stage(name, **entry)

    # Materialise the base model once, on the main process first (the cache is also lock-protected).
    with state.main_process_first():
        base_model_path = resolve_model_path(recipe.model.name_or_path)

    earlier: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(recipe.stages):
        ctx = StageContext(
            recipe=recipe,
            stage=stage,
            index=index,
            run_dir=run_dir,
            base_model_path=base_model_path,
            recipe_dir=recipe_dir,
            is_main_process=state.is_main_process,
            earlier=dict(earlier),
        )
        done = read_completion(ctx.stage_dir)
        if done is not None:
            logger.info("stage %s: already complete, skipped", stage.stage_name)
            earlier[stage.stage_name] = done
            continue
        if only_stage is not None and stage.stage_name != only_stage:
            continue
        if state.is_main_process:
            ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        state.wait_for_everyone()
        _release_memory()
        started = time.time()
        measure_memory = _reset_peak_rss()
        manifest.update_stage(
            stage.stage_name, status="running", started_at=utc_now(), dtype=dtype["resolved"]
        )
        try:
            results = runners[index].run(ctx)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:  # on a full disk this write can fail as well; the stage's own error is the one to report
                manifest.update_stage(
                    stage.stage_name, status=status, error=f"{type(exc).__name__}: {exc}"[:500]
                )
            except OSError as write_error:
                if not is_disk_full(write_error):
                    raise
            if is_disk_full(exc):
                raise DiskFull(_disk_full_message(stage.stage_name, run_dir, ctx.stage_dir)) from exc
            raise
        seconds = round(time.time() - started, 1)
        results = {"stage": stage.stage_name, "kind": stage.kind, "seconds": seconds, **results}  # type: ignore[attr-defined]
        peak = _peak_rss_mib() if measure_memory else None
        if peak is not None:  # the main process's peak during this stage (each rank has its own)
            results["peak_rss_mib"] = peak
            # the run's: its highest stage peak, kept across resumed invocations
            manifest.data["peak_rss_mib"] = max(manifest.data.get("peak_rss_mib", 0.0), peak)
        if state.is_main_process:
            write_completion(ctx.stage_dir, results)
        state.wait_for_everyone()
        manifest.update_stage(
            stage.stage_name, status="complete", finished_at=utc_now(), seconds=seconds, results=results
        )
        earlier[stage.stage_name] = results
    return run_dir
