"""A wheel that installs: build it, install it into a fresh virtualenv, run the CLI from outside the checkout.

Editable installs (and the tests, which import from the checkout) hide a package missing from the wheel:
the editable finder serves every `ntp_rl.*` module from the source tree. Here the wheel is built from a
copy of the tree, installed with pip into a new virtualenv that sees the project's dependencies (the
test interpreter's site-packages, listed in a .pth file: a folder named there is put on sys.path, but
the .pth files inside it, among them the editable install's finder, are not run) and not the checkout,
and the console script is run from a temporary folder: `--help`, a `--smoke` training run of the
quickstart recipe, and an eval of the tiny model on the bundled arithmetic suite.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Build outputs and caches that do not belong to the source tree a wheel is built from.
NOT_SOURCE = (".git", ".venv", "runs", "build", "dist", "__pycache__", "*.egg-info", ".*_cache", "*.pyc")
# Source folder -> where its files land in the wheel (see [tool.setuptools] in pyproject.toml).
SHIPPED = {"ntp_rl": "ntp_rl", "rewards": "ntp_rl/rewards", "eval": "ntp_rl/_bundled_eval"}
EVAL_OVERRIDES = ["max_examples=3", "generation.num_samples=2", "generation.max_new_tokens=6"]


def _expected_wheel_files(source: Path) -> list[str]:
    """Every module under ntp_rl/, rewards/ and eval/ and every eval suite, as wheel paths."""
    expected = []
    for folder, target in SHIPPED.items():
        for path in sorted((source / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                expected.append(f"{target}/{path.relative_to(source / folder).as_posix()}")
    expected += [f"ntp_rl/_bundled_eval/{p.name}" for p in sorted((source / "eval").glob("*.yaml"))]
    return expected


def _dependency_site_dirs() -> list[str]:
    """The site-packages folders the test interpreter loads the project's dependencies from."""
    dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    assert dirs, f"no site-packages folder on sys.path: {sys.path}"
    return list(dict.fromkeys(dirs))


def _purelib(python: str | Path) -> str:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source, wheel): a copy of the source tree and the wheel built from it."""
    # No skip: a wheel that cannot be built here is a missing package that goes unnoticed. torch
    # requires setuptools>=77.0.3, so the project's own install brings it.
    version = importlib.metadata.version("setuptools")
    assert int(version.split(".")[0]) >= 77, (
        f"building the wheel without isolation needs setuptools>=77, not {version}"
    )
    tmp = tmp_path_factory.mktemp("wheel")
    source, dist = tmp / "src", tmp / "dist"
    # A copy, so that the build's egg-info and build/ folders stay out of the checkout.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    proc = subprocess.run([*build, str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return source, next(dist.glob("ntp_rl-*.whl"))


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory, tiny_model_path):
    """(venv, work, run): a fresh virtualenv with the wheel installed; `run` runs a command in the folder `work`."""
    _, wheel = built
    tmp = tmp_path_factory.mktemp("venv")
    venv, work, home = tmp / "venv", tmp / "work", tmp / "home"
    work.mkdir()
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    Path(_purelib(python), "_ntp_rl_test_dependencies.pth").write_text(
        "\n".join(_dependency_site_dirs()) + "\n"
    )

    from ntp_rl.models import cache_root

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        HOME=str(home),  # caches, matplotlib and HF folders under a temporary home ...
        NTP_RL_CACHE=str(cache_root()),  # ... but the tiny model built once for the test session
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(venv),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
    )

    def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    # Without the wheel, ntp_rl must not be importable: neither from the checkout nor through the
    # editable install's finder in the dependencies' site-packages.
    proc = run(str(python), "-c", "import ntp_rl; print(ntp_rl.__file__)")
    assert proc.returncode != 0 and "No module named 'ntp_rl'" in proc.stderr, (
        f"the test virtualenv imports ntp_rl before the wheel is installed: {proc.stdout}{proc.stderr[-1000:]}"
    )
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return venv, work, run


def test_the_wheel_ships_every_module_and_suite(built):
    """Every .py file under ntp_rl/, rewards/, eval/ (and eval/*.yaml) is in the wheel, where it belongs."""
    source, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in _expected_wheel_files(source) if name not in names]
    assert not missing, (
        f"{wheel.name} lacks {missing}: a package folder is missing from [tool.setuptools] packages "
        "in pyproject.toml"
    )
    assert not any(name.startswith(("eval/", "rewards/", "tests/")) for name in names)


def test_the_installed_wheel_runs_the_cli_outside_the_checkout(installed):
    venv, work, run = installed
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "ntp-rl")
    site = _purelib(python)
    where = (
        "import ntp_rl, ntp_rl.rewards, ntp_rl.cli\n"
        "from ntp_rl.evaluation.suite import bundled_eval_dir\n"
        "print(ntp_rl.__file__); print(ntp_rl.rewards.__file__); print(bundled_eval_dir())\n"
    )
    proc = run(python, "-c", where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    package, rewards, bundled = proc.stdout.split()
    assert package == f"{site}/ntp_rl/__init__.py"
    assert rewards == f"{site}/ntp_rl/rewards/__init__.py"
    assert bundled == f"{site}/ntp_rl/_bundled_eval"

    for argv in (
        [cli, "--help"],
        [cli, "probe", "--help"],
        [cli, "train", "--help"],
        [cli, "eval", "--help"],
    ):
        proc = run(*argv, timeout=120)
        assert proc.returncode == 0, f"{' '.join(argv[1:])}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert "usage: ntp-rl" in proc.stdout

    # The recipe is a user's file: a copy in the working folder, nothing read from the checkout.
    recipe = work / "quickstart.yaml"
    shutil.copy(REPO / "recipes" / "quickstart.yaml", recipe)
    # --smoke leaves the eval stage's probes at the recipe's sizes (minutes on 2 CPU cores): one small
    # probe instead, enough to run ntp_rl.probes from the wheel.
    probes = "stages.eval.probes={credit: {texts: 1, max_tokens: 8}}"
    proc = run(cli, "train", str(recipe), probes, "--smoke", "--output-dir", str(work / "runs"))
    assert proc.returncode == 0, f"train --smoke: exit {proc.returncode}\n{proc.stderr[-4000:]}"
    reports = list((work / "runs").rglob("report.json"))
    assert reports, f"train --smoke wrote no eval report under {work / 'runs'}"

    out = work / "report"
    proc = run(
        cli,
        "eval",
        "--suite",
        "eval/arithmetic.yaml",
        "--model",
        "base=tiny",
        *EVAL_OVERRIDES,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, f"eval: exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert (out / "report.json").is_file()
