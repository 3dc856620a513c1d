"""`ntp-rl train --reuse RUN`: start a run from another run's finished stages where nothing differs.

To draw a later stage again (the rl stage with another `stages[i].seed`, as #18's three draws of
`recipes/rlhf.yaml` do), every stage before it would otherwise run again and give the same result.
With `--reuse`, each stage of the new run, in order, is copied from the other run's folder when
- that stage is finished there (its `COMPLETE` marker) and not yet in the new run's folder;
- the recipe is the same up to and including it: `model`, `data`, `run` but its name and
  output_dir, and every stage from the first to this one, key by key (keys added in later versions
  count as absent where they hold their defaults, as in the config hash);
- both runs are smoke runs or neither, and the stage ran there in the dtype `model.dtype` resolves
  to here (`auto` can pick another on another machine).
The first stage that fails a condition, and every stage after it, runs as usual. The copy keeps the
other run as it is; the manifest's entry of a copied stage is the other run's, with `reused_from`.
Stages find each other by their folder in the run (`run_dir / stage_name`), so a copy is complete.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ntp_rl.config import Recipe, without_later_defaults
from ntp_rl.errors import UserError
from ntp_rl.stages.common import read_completion

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Keys of `run` that name the folder, not what runs in it.
RUN_FOLDER_KEYS = ("name", "output_dir")


def read_source(source: Path, run_dir: Path) -> dict[str, Any]:
    """The other run's manifest; UserError naming `--reuse` when it is no usable run folder."""
    if not source.is_dir():
        raise UserError(f"--reuse {source}: no such folder; give a run folder (runs/<name>)")
    if source.resolve() == run_dir.resolve():
        raise UserError(
            f"--reuse {source}: that is this run's own folder; its finished stages are skipped anyway"
        )
    path = source / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--reuse {source}: not a run folder (no {MANIFEST}); give runs/<name>") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--reuse {source}: {path} cannot be read ({exc})") from None
    if not isinstance(manifest.get("config"), dict):
        raise UserError(f"--reuse {source}: {path} holds no recipe config (`config`)")
    return manifest


def first_difference(left: Any, right: Any, path: str = "") -> str | None:
    """The key path (`stages[1].trainer.seed`) of the first place two JSON values differ, else None."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in list(left) + [k for k in right if k not in left]:
            child = f"{path}.{key}" if path else str(key)
            if key not in left or key not in right:
                return child
            found = first_difference(left[key], right[key], child)
            if found is not None:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        for index, (a, b) in enumerate(zip(left, right, strict=False)):  # lengths: below
            found = first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None if len(left) == len(right) else f"{path} (length)".strip()
    return None if left == right else path


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a stage's result depends on besides the stages: model, data, and run less its folder."""
    run = {k: v for k, v in config.get("run", {}).items() if k not in RUN_FOLDER_KEYS}
    return {"run": run, "model": config.get("model"), "data": config.get("data")}


def why_not(
    source_manifest: dict[str, Any],
    config: dict[str, Any],
    index: int,
    name: str,
    dtype: str,
    smoke: bool,
    source: Path,
) -> str | None:
    """Why stage `index` (`name`) of `config` cannot be copied from the other run; None when it can.

    `config` and the other run's `config` are both `without_later_defaults`.
    """
    stages = config["stages"]
    theirs = source_manifest["config"]
    if bool(source_manifest.get("smoke")) != smoke:
        if smoke:
            return f"this is a smoke run (--smoke) and {source} is not"
        return f"{source} is a smoke run and this one is not"
    if read_completion(source / name) is None:
        return f"stage {name} is not finished in {source}"
    difference = first_difference(_settings(theirs), _settings(config))
    if difference is not None:
        return f"the recipes differ at {difference}"
    their_stages = theirs.get("stages", [])
    if len(their_stages) <= index:
        return f"{source}'s recipe has no stages[{index}]"
    for position in range(index + 1):
        difference = first_difference(their_stages[position], stages[position], f"stages[{position}]")
        if difference is not None:
            return f"the recipes differ at {difference}"
    ran_in = (source_manifest.get("stages", {}).get(name) or {}).get("dtype")
    if ran_in is not None and ran_in != dtype:
        return f"stage {name} ran in {ran_in} there and model.dtype resolves to {dtype} here (set it explicitly to match)"
    return None


def plan_reuse(
    recipe: Recipe, run_dir: Path, source: Path, dtype: str, smoke: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The stages `--reuse` copies from `source` into `run_dir`, checked before anything is written:
    (name, manifest entry: the other run's, with `reused_from`) of each.

    Stages already finished in `run_dir` stay as they are (a rerun of the same command). UserError
    when not one stage can come from `source` and none is finished here yet: the user asked for a copy.
    """
    source_manifest = read_source(source, run_dir)
    source_manifest["config"] = without_later_defaults(copy.deepcopy(source_manifest["config"]))
    config = without_later_defaults(recipe.model_dump(mode="json"))
    plan: list[tuple[str, dict[str, Any]]] = []
    reason = None
    for index, stage in enumerate(recipe.stages):
        name = stage.stage_name
        if read_completion(run_dir / name) is not None:
            continue
        reason = why_not(source_manifest, config, index, name, dtype, smoke, source)
        if reason is None and (run_dir / name).exists():
            # An interrupted attempt of this stage: its checkpoints are this run's own.
            reason = f"stage {name} has started in {run_dir} already"
        if reason is not None:
            break
        entry = dict(source_manifest.get("stages", {}).get(name) or {})
        plan.append((name, {**entry, "reused_from": str(source / name)}))
    finished_here = any(read_completion(run_dir / s.stage_name) is not None for s in recipe.stages)
    if not plan and not finished_here:
        raise UserError(f"--reuse {source}: no stage can be copied: {reason}")
    if reason is not None and plan:
        logger.info("--reuse: stage %s and the stages after it run here: %s", name, reason)
    return plan


def copy_stages(plan: list[tuple[str, dict[str, Any]]], run_dir: Path) -> None:
    """Copy each planned stage folder (`plan_reuse`) into `run_dir`, whole or not at all."""
    for name, entry in plan:
        partial = run_dir / f".{name}.reusing"
        if partial.exists():
            shutil.rmtree(partial)  # a copy that was itself interrupted; never a stage's results
        shutil.copytree(entry["reused_from"], partial, symlinks=True)
        partial.rename(run_dir / name)
        logger.info("stage %s: copied from %s (the same recipe up to it)", name, entry["reused_from"])
