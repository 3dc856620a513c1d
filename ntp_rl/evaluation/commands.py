"""`ntp-rl eval` and `ntp-rl compare`: the command-line side of the harness (argument checks, output folder).

    ntp-rl eval --suite eval/arithmetic.yaml --model base=default --model sft=runs/q/sft [a.b=value ...] [--out DIR]
    ntp-rl compare runs/eval/A/report.json runs/eval/B/report.json --out DIR

Every input is checked before a model loads: the suite (and its overrides), each --model, the
output folder (a folder that holds a report is refused, exit 2), the data and the scorers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ntp_rl.common import utc_stamp
from ntp_rl.errors import UserError
from ntp_rl.evaluation.report import REPORT_JSON, check_out_dir

DEFAULT_EVAL_ROOT = Path("runs") / "eval"


def default_out_dir(prefix: str = "") -> Path:
    """runs/eval/<prefix><UTC timestamp>, with -2, -3, ... when that folder is taken."""
    stamp = utc_stamp()
    candidate = DEFAULT_EVAL_ROOT / f"{prefix}{stamp}"
    suffix = 2
    while candidate.exists():
        candidate = DEFAULT_EVAL_ROOT / f"{prefix}{stamp}-{suffix}"
        suffix += 1
    return candidate


def eval_command(
    suite_text: str,
    model_args: list[str],
    out: str | None,
    overrides: list[str],
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[Path, dict[str, Any]]:
    from ntp_rl.checkpoints import parse_model_args, resolve_checkpoint
    from ntp_rl.evaluation.harness import run_suite
    from ntp_rl.evaluation.suite import load_suite

    suite, suite_file = load_suite(suite_text, overrides)
    pairs = parse_model_args(model_args)
    out_dir = Path(out) if out else default_out_dir()
    check_out_dir(out_dir)
    checkpoints = [resolve_checkpoint(label, spec) for label, spec in pairs]
    report = run_suite(
        suite,
        checkpoints,
        out_dir,
        suite_file=suite_file,
        title=f"{suite.name}: " + ", ".join(f"{c.label}={c.spec}" for c in checkpoints),
        data_base_dir=Path.cwd(),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    return out_dir, report


def compare_command(reports: list[str], out: str | None) -> tuple[Path, dict[str, Any]]:
    from ntp_rl.evaluation.report import compare_reports

    paths = [Path(p) for p in reports]
    for path in paths:
        if not (path.is_file() or (path / REPORT_JSON).is_file()):
            raise UserError(f"{path}: no such report (give report.json files or folders holding one)")
    out_dir = Path(out) if out else default_out_dir("compare-")
    return out_dir, compare_reports(paths, out_dir)
