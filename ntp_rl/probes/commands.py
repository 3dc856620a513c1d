"""`ntp-rl probe ...`: one instrument on some checkpoints, into its own report folder.

    ntp-rl probe future --model base=default --model sft=runs/q/sft --data synthetic:arithmetic [--k 3] [--out DIR]
    ntp-rl probe answer --model base=default --model rl=runs/q/rl [--examples 300]
    ntp-rl probe rhyme  --model base=default --model rl=runs/q/rl [--generate 64]
    ntp-rl probe credit --model base=default --model rl=runs/q/rl --data texts.jsonl [--column text] [--k 4]

`--model` takes the same `label=spec` as `ntp-rl eval` (default, tiny, a model folder, a hub id, a
run stage folder); each is loaded in turn, its adapter merged into the weights. Inputs (models,
data, settings, output folder) are checked before any model loads; bad ones exit with status 2.
The folder (default `runs/probes/<UTC timestamp>-<instrument>`) gets `probe.json` (the source of
truth), `probe.md` and the plots as PNG files; one that holds a probe report already is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from ntp_rl.common import utc_now, utc_stamp, write_json_atomic
from ntp_rl.dtypes import DTYPE_CHOICES, resolve_dtype
from ntp_rl.errors import UserError

PROBE_FORMAT = "ntp-rl-probe-report/1"
PROBE_JSON, PROBE_MD = "probe.json", "probe.md"
DEFAULT_PROBE_ROOT = Path("runs") / "probes"
HELP = {
    "future": "linear probes from the hidden state at t to the token at t+k, by layer (Future Lens)",
    "answer": "the final answer's last digit and size, read at the last prompt token (before generation)",
    "rhyme": "the rhyme family of the next line, read at the line break of built-in couplets; rhyme rate",
    "credit": "share of the gradient reaching position t from the loss at t+1 vs t+k, with a stop-gradient control",
}


def _option(parser: argparse.ArgumentParser, flag: str, kind: Any, what: str, instrument: str | None) -> None:
    """A flag whose help shows its default, read from settings.py (the one place defaults live)."""
    from ntp_rl.probe_settings import ProbeSettings

    field = flag.removeprefix("--").replace("-", "_")
    owner: Any = ProbeSettings
    if instrument is not None:
        owner = typing.get_args(ProbeSettings.model_fields[instrument].annotation)[0]
    parser.add_argument(flag, type=kind, help=f"{what} (default {owner.model_fields[field].default})")


def add_probe_parser(sub: Any, positive: Any) -> None:
    """Add `probe {future,answer,rhyme,credit}` to the `ntp-rl` subcommands (`positive`: a type factory)."""
    probe = sub.add_parser("probe", help="instruments beyond next-token prediction, on any checkpoint")
    instruments = probe.add_subparsers(dest="instrument", required=True)
    for name, text in HELP.items():
        parser = instruments.add_parser(name, help=text, description=text)
        parser.add_argument(
            "--model",
            action="append",
            required=True,
            metavar="LABEL=SPEC",
            help="repeatable, as for `ntp-rl eval`: default, tiny, a model folder, a hub id, a run stage folder",
        )
        if name in ("future", "credit", "answer"):
            parser.add_argument(
                "--data",
                default="synthetic:arithmetic",
                help="synthetic:arithmetic (default) or a local .jsonl/.json/.csv/.parquet/.txt file",
            )
        if name in ("future", "credit"):
            parser.add_argument("--column", default="text", help="text column of a data file (default text)")
            _option(parser, "--texts", positive(int), "texts read", name)
            _option(parser, "--max-tokens", positive(int), "tokens per text, longer ones cut", name)
            _option(parser, "--k", positive(int), "largest distance", name)
        if name == "future":
            _option(parser, "--vocab", positive(int), "target classes besides 'other'", name)
            _option(parser, "--max-positions", positive(int), "positions probed", name)
        if name == "answer":
            _option(parser, "--examples", positive(int), "items", name)
            _option(parser, "--buckets", positive(int), "answer size buckets", name)
        if name == "rhyme":
            _option(parser, "--generate", int, "second lines generated to check rhyming", name)
            _option(parser, "--max-new-tokens", positive(int), "tokens per second line", name)
        if name == "credit":
            _option(parser, "--max-targets", positive(int), "target positions per batch", name)
            parser.add_argument(
                "--no-control", action="store_true", help="skip the stop-gradient control run"
            )
        _option(parser, "--fit-fraction", float, "share of texts/items fitting the probes", None)
        _option(parser, "--seed", int, "data and split seed", None)
        _option(parser, "--batch-size", positive(int), "sequences per forward pass", None)
        parser.add_argument("--out", help="new folder (default runs/probes/<timestamp>-<instrument>)")
        parser.add_argument(
            "--dtype",
            default="float32",
            choices=DTYPE_CHOICES,
            help="the models' dtype; auto: bfloat16 where it is faster on this machine (default float32)",
        )
        parser.add_argument(
            "--trust-remote-code", action="store_true", help="allow model code from the model folder"
        )
        parser.set_defaults(func=probe_command)


_ARGUMENT_FIELDS = {
    "future": ("data", "column", "texts", "max_tokens", "k", "vocab", "max_positions"),
    "answer": ("data", "examples", "buckets"),
    "rhyme": ("generate", "max_new_tokens"),
    "credit": ("data", "column", "texts", "max_tokens", "k", "max_targets"),
}


def settings_from_args(args: argparse.Namespace):
    """The `ProbeSettings` of one instrument from its flags (UserError naming a bad flag)."""
    from pydantic import ValidationError

    from ntp_rl.probe_settings import ProbeSettings

    name = args.instrument
    instrument = {f: getattr(args, f) for f in _ARGUMENT_FIELDS[name] if getattr(args, f, None) is not None}
    if name == "credit":
        instrument["control"] = not args.no_control
    shared = {
        f: getattr(args, f) for f in ("fit_fraction", "seed", "batch_size") if getattr(args, f) is not None
    }
    try:
        return ProbeSettings.model_validate({name: instrument, **shared})
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            flag = "--" + str(item["loc"][-1]).replace("_", "-")
            problems.append(
                f"{flag}: {item['msg'].removeprefix('Value error, ')} (got {item.get('input')!r})"
            )
        raise UserError(f"ntp-rl probe {name}: " + "; ".join(problems)) from None


def default_out_dir(instrument: str) -> Path:
    stamp = utc_stamp()
    candidate, suffix = DEFAULT_PROBE_ROOT / f"{stamp}-{instrument}", 2
    while candidate.exists():
        candidate = DEFAULT_PROBE_ROOT / f"{stamp}-{instrument}-{suffix}"
        suffix += 1
    return candidate


def check_probe_out(out: Path) -> None:
    for name in (PROBE_JSON, PROBE_MD):
        if (out / name).exists():
            raise UserError(
                f"--out {out}: {out / name} already exists; probe reports are never overwritten. "
                "Choose another --out folder (or leave it out for runs/probes/<timestamp>-<instrument>)."
            )


def write_probe_report(report: dict[str, Any], out: Path) -> Path:
    """probe.md and the plots, then probe.json last (a folder with probe.json holds a whole report)."""
    from ntp_rl.probes.render import plots, render_markdown_section

    out.mkdir(parents=True, exist_ok=True)
    check_probe_out(out)
    images = {}
    for stem, _, png in plots(report["beyond_ntp"]):
        (out / f"{stem}.png").write_bytes(png)
        images[stem] = f"{stem}.png"
    models = "\n".join(f"- {label}: `{json.dumps(info)}`" for label, info in report["models"].items())
    text = (
        f"# Probe: {report['instrument']}\n\n{report['created_at']}; `{report['command']}`\n\n{models}\n\n"
        + render_markdown_section(report["beyond_ntp"], images)
    )
    (out / PROBE_MD).write_text(text, encoding="utf-8")
    write_json_atomic(out / PROBE_JSON, report, indent=1)
    return out / PROBE_JSON


def probe_command(args: argparse.Namespace) -> int:
    from ntp_rl.checkpoints import parse_model_args, resolve_checkpoint
    from ntp_rl.probes.render import render_markdown_section
    from ntp_rl.probes.run import beyond_ntp_section, load_and_probe, prepare_inputs

    settings = settings_from_args(args)
    pairs = parse_model_args(args.model or [])
    out = Path(args.out) if args.out else default_out_dir(args.instrument)
    check_probe_out(out)
    inputs = prepare_inputs(settings, Path.cwd(), where=None)
    checkpoints = [resolve_checkpoint(label, spec) for label, spec in pairs]
    dtype = resolve_dtype(args.dtype)  # `auto` measured here (ntp_rl/dtypes.py)
    results = load_and_probe(settings, inputs, checkpoints, dtype, args.trust_remote_code)
    section = beyond_ntp_section(settings, results)
    report = {
        "format": PROBE_FORMAT,
        "instrument": args.instrument,
        "created_at": utc_now(),
        "command": " ".join(["ntp-rl", *sys.argv[1:]]) if sys.argv else "ntp-rl probe",
        "models": {c.label: c.describe() for c in checkpoints},
        "dtype": dtype,
        "beyond_ntp": section,
    }
    path = write_probe_report(report, out)
    print(render_markdown_section(section))
    print(f"report: {path} (also {PROBE_MD} and the plots)")
    return 0
