"""The `ntp-rl` command (also `python -m ntp_rl` and `accelerate launch -m ntp_rl`).

    ntp-rl train RECIPE [key.path=value ...] [--stage NAME] [--new-run] [--smoke] [--reuse RUN]
    ntp-rl models pull [default|tiny]
    ntp-rl export runs/<name>/<stage> --out DIR
    ntp-rl rewards check RECIPE [key.path=value ...] [--stage NAME] [--model M] [--json PATH]
    ntp-rl eval --suite eval/arithmetic.yaml --model base=default --model sft=runs/q/sft [a.b=value ...] [--out DIR]
    ntp-rl compare REPORT.json REPORT.json ... [--out DIR]
    ntp-rl probe {future,answer,rhyme,credit} --model base=default --model rl=runs/q/rl [--data SOURCE] [--out DIR]

Exit status: 0 success; 2 bad input (config, paths, data, reward spec), printed as one message
naming the culprit and no traceback; 1 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ntp_rl.errors import DiskFull, TrainingDiverged, UserError, is_disk_full
from ntp_rl.rewards.errors import RewardRuntimeError

logger = logging.getLogger("ntp_rl")


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:  # per-row "Map" bars of datasets drown the training progress bar
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_train(args: argparse.Namespace) -> int:
    from ntp_rl.config import load_recipe
    from ntp_rl.pipeline import run_pipeline

    recipe_path = Path(args.recipe)
    if args.output_dir:
        args.overrides.append(f"run.output_dir={args.output_dir}")
    recipe = load_recipe(recipe_path, args.overrides, smoke=args.smoke)
    run_dir = run_pipeline(
        recipe,
        recipe_path,
        only_stage=args.stage,
        new_run=args.new_run,
        smoke=args.smoke,
        reuse=Path(args.reuse) if args.reuse else None,
    )
    _print_summary(run_dir)
    return 0


def _print_summary(run_dir: Path) -> None:
    import json

    if os.environ.get("RANK", "0") != "0":
        return
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print(f"\nrun folder: {run_dir}")
    for name, info in manifest["stages"].items():
        results = info.get("results", {})
        hidden = ("seconds", "peak_rss_mib")
        shown = {k: v for k, v in results.items() if isinstance(v, (int, float)) and k not in hidden}
        seconds = info.get("seconds")
        timing = f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        peak = results.get("peak_rss_mib")
        timing += f", peak {peak / 1024:.1f} GiB" if isinstance(peak, (int, float)) else ""
        if info.get("reused_from"):  # `--reuse`: the time and peak are the other run's
            timing = f" (copied from {info['reused_from']}, where it ran{timing})"
        numbers = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        print(f"  {name:<14} {info.get('status', '?'):<9}{timing}  {numbers}")
        summary = results.get("summary")
        if summary:
            print("    " + summary.replace("\n", "\n    "))


def _cmd_models_pull(args: argparse.Namespace) -> int:
    from ntp_rl.models import materialise_default, materialise_tiny

    path = materialise_default() if args.name == "default" else materialise_tiny()
    print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ntp_rl.export import export_stage

    out = export_stage(Path(args.stage_dir), Path(args.out))
    print(f"exported to {out}")
    return 0


def _cmd_rewards_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ntp_rl.config import load_recipe
    from ntp_rl.rewards_check import CheckSettings, check_rewards, render, write_json

    recipe_path = Path(args.recipe)
    recipe = load_recipe(recipe_path, args.overrides)
    settings = CheckSettings(
        stage=args.stage,
        model=args.model,
        num_prompts=args.num_prompts,
        samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
    )
    report = check_rewards(recipe, recipe_path, settings)
    render(report, Console())
    if args.json:
        write_json(report, Path(args.json))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ntp_rl.evaluation.commands import eval_command
    from ntp_rl.evaluation.report import summary_text

    out, report = eval_command(
        args.suite, args.model or [], args.out, args.overrides, args.dtype, args.trust_remote_code
    )
    print(summary_text(report))
    print(f"report: {out / 'report.json'} (also report.md, report.html, samples.jsonl)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ntp_rl.evaluation.commands import compare_command
    from ntp_rl.evaluation.report import summary_text

    out, report = compare_command(args.reports, args.out)
    print(summary_text(report))
    print(f"report: {out / 'report.json'} (also report.md, report.html)")
    return 0


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntp-rl", description="SFT, RLHF and RLVR for causal LMs on TRL + PEFT."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a recipe's stages into runs/<name>/")
    train.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    train.add_argument(
        "overrides", nargs="*", help="key.path=value overrides, e.g. stages[0].trainer.max_steps=20"
    )
    train.add_argument("--stage", help="run only this stage (earlier stages must be complete)")
    train.add_argument("--output-dir", help="parent folder of run folders (default: run.output_dir)")
    train.add_argument(
        "--new-run", action="store_true", help="if the run folder holds another config, start NAME-2"
    )
    train.add_argument(
        "--smoke", action="store_true", help="tiny model, a few steps: check a recipe in seconds"
    )
    train.add_argument(
        "--reuse",
        metavar="RUN",
        help="copy the finished stages of another run folder whose recipe is the same up to them "
        "(e.g. draw the rl stage again with another stages[i].seed against the same SFT and reward model)",
    )
    train.set_defaults(func=_cmd_train)

    models = sub.add_parser("models", help="manage built-in models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser(
        "pull", help="materialise a built-in model into the cache and print its folder"
    )
    pull.add_argument("name", nargs="?", default="default", choices=["default", "tiny"])
    pull.set_defaults(func=_cmd_models_pull)

    export = sub.add_parser(
        "export", help="merge a stage's adapter into its base; write a plain model folder"
    )
    export.add_argument("stage_dir", help="a stage folder, e.g. runs/quickstart/rl")
    export.add_argument("--out", required=True, help="new folder to write (must not exist)")
    export.set_defaults(func=_cmd_export)

    rewards = sub.add_parser("rewards", help="reward tools")
    rewards_sub = rewards.add_subparsers(dest="rewards_command", required=True)
    check = rewards_sub.add_parser(
        "check",
        help="score a model's samples with an rl stage's rewards; warn about broken, flat or hackable rewards",
    )
    check.add_argument("recipe", help="recipe YAML with an rl stage")
    check.add_argument("overrides", nargs="*", help="key.path=value overrides, as for train")
    check.add_argument("--stage", help="the rl stage to check (default: the first rl stage)")
    check.add_argument(
        "--model",
        help="default, tiny, a model folder, an adapter or stage folder, or a hub id (default: the "
        "recipe's model, with the stage's init adapter when the run has trained it)",
    )
    check.add_argument("--num-prompts", type=_positive(int), default=16, help="training prompts (16)")
    check.add_argument("--samples", type=_positive(int), default=4, help="completions per prompt (4)")
    check.add_argument(
        "--temperature", type=_positive(float), help="default: the stage's trainer.temperature, else 1.0"
    )
    check.add_argument(
        "--max-new-tokens",
        type=_positive(int),
        help="default: the stage's trainer.max_completion_length, else 64",
    )
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=_cmd_rewards_check)

    evaluate = sub.add_parser("eval", help="evaluate models and run stages on an eval suite; write a report")
    evaluate.add_argument(
        "--suite", required=True, help="suite YAML, e.g. eval/arithmetic.yaml (bundled ones work anywhere)"
    )
    evaluate.add_argument(
        "--model",
        action="append",
        metavar="LABEL=SPEC",
        help="repeatable; SPEC: default, tiny, a model folder, a hub id, or a run stage folder (runs/q/sft); "
        "the one labelled `base` (else the first) is the reference for paired comparisons",
    )
    evaluate.add_argument(
        "overrides", nargs="*", help="suite key.path=value overrides, e.g. data.source=test.jsonl"
    )
    evaluate.add_argument(
        "--out", help="new report folder (default runs/eval/<timestamp>); never overwritten"
    )
    evaluate.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "auto"],
        help="the models' dtype; auto: bfloat16 where it is faster on this machine (default float32)",
    )
    evaluate.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the model folder"
    )
    evaluate.set_defaults(func=_cmd_eval)

    compare = sub.add_parser(
        "compare", help="combine earlier eval reports into one (paired where items match)"
    )
    compare.add_argument("reports", nargs="+", help="report.json files (or folders holding one)")
    compare.add_argument("--out", help="new report folder (default runs/eval/compare-<timestamp>)")
    compare.set_defaults(func=_cmd_compare)

    from ntp_rl.probes.commands import add_probe_parser

    add_probe_parser(sub, _positive)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key.path=value) may come after flags too: `train r.yaml --smoke a.b=1` as well as
    # `train r.yaml a.b=1 --smoke`. argparse stops collecting a positional list at the first flag.
    args, extra = parser.parse_known_args(argv)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    if late and hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *late]
        extra = [item for item in extra if item not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ntp-rl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"ntp-rl: training stopped: {exc}", file=sys.stderr)
        return 1
    except RewardRuntimeError as exc:  # a reward broke mid-run: its message names the reward and sample
        print(f"ntp-rl: run stopped: {exc}", file=sys.stderr)
        return 1
    except DiskFull as exc:  # its message names the disk and the checkpoint to resume from
        print(f"ntp-rl: run stopped: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = f" while writing {exc.filename}" if getattr(exc, "filename", None) else ""
        print(
            f"ntp-rl: run stopped: no space left on the disk{where} ({exc}); free some space and re-run "
            "the same command",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            "ntp-rl: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr
        )
        return 130


def entry() -> None:
    """The `ntp-rl` command and `python -m ntp_rl`: `main`, then exit with its status."""
    code = main()
    from ntp_rl.rewards.guard import abandoned_calls_running

    if abandoned_calls_running():
        # A reward call that timed out is still running in native code in a thread; interpreter
        # shutdown would abort the process (status 134, "terminate called without an active
        # exception") instead of returning this status. Leave without it, output flushed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
