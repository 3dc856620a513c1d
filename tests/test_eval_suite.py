"""Eval suites and metric modules without a model: validation with key paths, where files are found
(clone, cwd, wheel), GSM8K-layout parsing, and the metric modules on hand-computed cases."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from ntp_rl.errors import UserError
from ntp_rl.evaluation.suite import (
    EvalSuite,
    MetricSpec,
    bundled_eval_dir,
    load_suite,
    resolve_metric_path,
    resolve_suite_path,
    validate_suite,
)
from tests.conftest import REPO

SUITES = sorted((REPO / "eval").glob("*.yaml"))
GSM8K_SMALL = REPO / "tests" / "data" / "eval" / "gsm8k_small.jsonl"


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_bundled_suite_validates_and_finds_its_metrics(path):
    suite, found = load_suite(path)
    assert found == path and suite.metrics and suite.scorers
    for index, spec in enumerate(suite.metrics):
        assert resolve_metric_path(spec, path.parent, f"metrics[{index}]").is_dir()


BAD_SUITES = [
    ({"generation": {"temprature": 0.7}}, ["generation.temprature: unknown key", "did you mean temperature"]),
    ({"metrics": ["accuracy", {"nme": "pass_at_k"}]}, ["metrics[1].nme: unknown key", "did you mean name"]),
    ({"data": {"colums": {"prompt": "q"}}}, ["data.colums: unknown key", "did you mean columns"]),
    ({"reference_nll": {"colum": "solution"}}, ["reference_nll.colum: unknown key", "did you mean column"]),
    ({"scorers": [{"name": "format", "path": "x.py:f"}]}, ["scorers[0]", "exactly one of"]),
    (
        {"generation": {"greedy": False, "num_samples": 0}},
        ["generation: greedy is false and num_samples is 0: nothing to generate"],
    ),
    ({"max_examples": 0}, ["max_examples: Input should be greater than 0"]),
    ({"answer_check": "regex"}, ["answer_check"]),
    ({"metrics": ["accuracy", "accuracy"]}, ["metrics: metric(s) ['accuracy'] listed twice"]),
    ({"spilt": "test"}, ["spilt: unknown key", "did you mean split"]),
    (
        {"kl_to_base": {"max_exampels": 8}},
        ["kl_to_base.max_exampels: unknown key", "did you mean max_examples"],
    ),
]


@pytest.mark.parametrize(("raw", "fragments"), BAD_SUITES, ids=[str(i) for i in range(len(BAD_SUITES))])
def test_suite_errors_name_key_paths(raw, fragments):
    with pytest.raises(UserError) as error:
        validate_suite(raw, "my_suite.yaml")
    message = str(error.value)
    assert message.startswith("my_suite.yaml: invalid eval suite")
    for fragment in fragments:
        assert fragment in message


def test_overrides_and_unknown_metric_and_scorer(tmp_path):
    suite, _ = load_suite("eval/arithmetic.yaml", ["max_examples=5", "generation.num_samples=2"])
    assert suite.max_examples == 5 and suite.generation.num_samples == 2
    assert validate_suite({"kl_to_base": False}, "s").kl_to_base is None
    assert validate_suite({"kl_to_base": True}, "s").kl_to_base.max_examples == 64
    with pytest.raises(UserError, match=r"generation\.num_smples: unknown key; did you mean num_samples"):
        load_suite("eval/arithmetic.yaml", ["generation.num_smples=2"])
    with pytest.raises(
        UserError, match=r"metrics\[0\]\.name 'pass_at_kk': unknown metric; did you mean pass_at_k"
    ):
        resolve_metric_path(MetricSpec(name="pass_at_kk"), None, "metrics[0]")
    from ntp_rl.evaluation.harness import resolve_scorers

    bad = EvalSuite(scorers=[{"name": "math_acuracy"}])
    with pytest.raises(UserError, match=r"scorers\[0\].*math_accuracy"):
        resolve_scorers(bad, ["prompt", "answer"], tmp_path)


def test_suite_lookup_order_recipe_folder_then_cwd_then_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no eval/ here: the bundled copy answers
    assert resolve_suite_path("eval/arithmetic.yaml") == bundled_eval_dir() / "arithmetic.yaml"
    assert resolve_suite_path("gsm8k") == bundled_eval_dir() / "gsm8k.yaml"
    (tmp_path / "eval").mkdir()
    mine = tmp_path / "eval" / "arithmetic.yaml"
    mine.write_text(yaml.safe_dump({"name": "mine"}))
    assert resolve_suite_path("eval/arithmetic.yaml") == tmp_path / "eval" / "arithmetic.yaml"
    recipe_dir = tmp_path / "recipes"
    (recipe_dir / "eval").mkdir(parents=True)
    (recipe_dir / "eval" / "arithmetic.yaml").write_text(yaml.safe_dump({"name": "beside the recipe"}))
    suite, _ = load_suite("eval/arithmetic.yaml", base_dirs=[recipe_dir])
    assert suite.name == "beside the recipe"
    with pytest.raises(
        UserError, match=r"suite eval/nope.yaml: not found .*Bundled suites: eval/arithmetic.yaml"
    ):
        resolve_suite_path("eval/nope.yaml")


def test_no_bare_eval_module_and_every_metric_folder_is_packaged():
    assert not (REPO / "eval" / "__init__.py").exists()
    assert not list((REPO / "eval").rglob("__init__.py"))
    pyproject = (REPO / "pyproject.toml").read_text()
    for folder in (REPO / "eval" / "metrics").iterdir():
        if folder.is_dir() and (folder / f"{folder.name}.py").is_file():
            assert f'"ntp_rl._bundled_eval.metrics.{folder.name}"' in pyproject


def test_a_built_wheel_carries_suites_and_metrics(tmp_path):
    """Build the wheel from a copy of the tree and look suites and metrics up from the unpacked wheel."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("ntp_rl", "rewards", "eval"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run([*build, "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("ntp_rl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ntp_rl/_bundled_eval/arithmetic.yaml" in names
    assert "ntp_rl/_bundled_eval/metrics/pass_at_k/pass_at_k.py" in names
    assert not any(name.startswith("eval/") for name in names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = (
        "import ntp_rl\n"
        "from ntp_rl.evaluation.suite import MetricSpec, resolve_metric_path, resolve_suite_path\n"
        "print(ntp_rl.__file__)\n"
        "print(resolve_suite_path('eval/arithmetic.yaml'))\n"
        "print(resolve_metric_path(MetricSpec(name='maj_at_k'), None, 'm'))\n"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    site = str(tmp_path / "site")
    assert lines[0].startswith(site)
    assert lines[1] == f"{site}/ntp_rl/_bundled_eval/arithmetic.yaml"
    assert lines[2] == f"{site}/ntp_rl/_bundled_eval/metrics/maj_at_k"


def test_gsm8k_suite_reads_a_local_gsm8k_layout_file(tmp_path):
    from ntp_rl.evaluation.harness import load_items

    suite, _ = load_suite("eval/gsm8k.yaml", [f"data.source={GSM8K_SMALL}"])
    rows = load_items(suite, tmp_path)
    assert rows["prompt"][0].startswith("Lena has 4 boxes")
    assert rows["answer"] == ["39", "29", "1400"]  # "#### 1,400" -> "1400"
    assert rows["solution"][0].splitlines()[-1] == "Answer: 39"
    with pytest.raises(UserError, match="no such file"):
        load_items(load_suite("eval/gsm8k.yaml", [f"data.source={tmp_path / 'missing.jsonl'}"])[0], tmp_path)


@pytest.fixture(scope="module")
def metric():
    import evaluate

    def load(name: str):
        return evaluate.load(str(bundled_eval_dir() / "metrics" / name), keep_in_memory=True)

    return load


def test_metric_modules_by_hand(metric):
    correct = [[True, False, False, False], [True, True, False, False], [False] * 4]
    out = metric("accuracy").compute(correct=correct)
    assert out["accuracy"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert out["per_item"]["accuracy"] == [0.25, 0.5, 0.0]
    out = metric("pass_at_k").compute(correct=correct, ks=[1, 2])
    assert out["pass@2"] == pytest.approx((0.5 + (1 - 1 / 6) + 0) / 3)
    assert set(metric("pass_at_k").compute(correct=correct)) == {"pass@1", "pass@2", "pass@4", "per_item"}
    with pytest.raises(ValueError, match="at least that many samples"):
        metric("pass_at_k").compute(correct=correct, ks=[8])
    answers = [["5", "5", "", "6"], ["", "", "", "7"], ["", "", "", ""]]
    votes = [[True, True, False, False], [False, False, False, True], [False] * 4]
    out = metric("maj_at_k").compute(answers=answers, correct=votes, ks=[1, 4])
    assert out["per_item"]["maj@4"] == [1.0, 1.0, 0.0]  # "" (unreadable) never votes
    assert out["per_item"]["maj@1"] == [1.0, 0.0, 0.0]
    failed = [[False, True], [True, True]]
    assert metric("extraction_failure_rate").compute(parse_failed=failed)["extraction_failure_rate"] == 0.75


def test_scorers_are_called_in_chunks_in_order():
    """Rewards see calls of a training step's size, not all of an eval's samples at once (timeouts)."""
    from datasets import Dataset

    from ntp_rl.evaluation.harness import SCORE_CHUNK, _score
    from ntp_rl.generation import Generation

    n_items, n_samples = 50, 4  # 200 completions: more than three chunks
    rows = Dataset.from_dict(
        {"prompt": [f"q{i}" for i in range(n_items)], "answer": [str(i) for i in range(n_items)]}
    )
    generations = [
        Generation(
            [f"Answer: {i + j}" for j in range(n_samples)], [3] * n_samples, [False] * n_samples, [[1]] * 4
        )
        for i in range(n_items)
    ]
    sizes = []

    def echo(completions, answer, **kwargs):
        sizes.append(len(completions))
        assert len(answer) == len(completions) == len(kwargs["prompts"]) == len(kwargs["completion_ids"])
        return [
            float(c[0]["content"].split()[-1]) - float(a) for c, a in zip(completions, answer, strict=True)
        ]

    echo.__name__ = "echo"
    fields = _score(generations, rows, [echo])
    assert max(sizes) == SCORE_CHUNK and sum(sizes) == n_items * n_samples
    assert fields["rewards"]["echo"] == [[float(j) for j in range(n_samples)]] * n_items
    assert fields["correct"][3] == [True, False, False, False]
