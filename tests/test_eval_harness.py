"""The eval harness end to end on the tiny model: `ntp-rl eval` of tiny and a LoRA adapter, the eval
stage with a suite file, determinism, `ntp-rl compare`, the HTML report (parsed, and rendered in
headless Chromium when it is installed), refusing to overwrite, KL and NLL by hand."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import nullcontext
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from ntp_rl.cli import main

SUITE_OVERRIDES = ["max_examples=3", "generation.num_samples=2", "generation.max_new_tokens=6"]
REPORT_FILES = ("report.json", "report.md", "report.html", "samples.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_path) -> Path:
    """A 1-step SFT run on tiny followed by an eval stage that reads eval/arithmetic.yaml."""
    root = tmp_path_factory.mktemp("eval-run")
    recipe = {
        "run": {"name": "ev", "output_dir": str(root / "runs")},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 0,
                # A large step so that the adapter moves the model measurably (LoRA B starts at zero).
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 2, "warmup_steps": 0,
                            "learning_rate": 0.05, "logging_steps": 1},
            },
            {"kind": "eval", "suite": "eval/arithmetic.yaml", "max_examples": 2, "num_samples": 2,
             "max_new_tokens": 5, "batch_size": 8},
        ],
    }  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    return root / "runs" / "ev"


@pytest.fixture(scope="module")
def reports(run, tmp_path_factory) -> list[Path]:
    """Two `ntp-rl eval` runs of the same suite, models and seed, into two folders."""
    out = tmp_path_factory.mktemp("eval-reports")
    folders = []
    for name in ("a", "b"):
        argv = _eval_argv(run)
        assert main([*argv, *SUITE_OVERRIDES, "--out", str(out / name)]) == 0
        folders.append(out / name)
    return folders


def _eval_argv(run: Path) -> list[str]:
    """`ntp-rl eval` of the arithmetic suite on the base (tiny) and the run's SFT adapter."""
    return [
        "eval",
        "--suite",
        "eval/arithmetic.yaml",
        "--model",
        "base=tiny",
        "--model",
        f"sft={run / 'sft'}",
    ]


def _load(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_eval_stage_reads_a_suite_with_inline_overrides(run):
    folder = run / "eval"
    assert all((folder / name).is_file() for name in REPORT_FILES)
    report = _load(folder)
    assert report["provenance"]["suite_file"].endswith("arithmetic.yaml")
    assert report["num_items"] == 2 and report["generation"]["num_samples"] == 2
    assert report["generation"]["max_new_tokens"] == 5
    assert set(report["summary"]) == {"base", "sft"}
    assert "sft vs base" in report["comparisons"]
    done = json.loads((folder / "COMPLETE").read_text())
    assert {"base/greedy_accuracy", "sft/sampled_pass1", "summary", "report"} <= set(done)


def test_eval_command_writes_a_full_report(run, reports):
    folder = reports[0]
    assert all((folder / name).is_file() for name in REPORT_FILES)
    report = _load(folder)
    base, sft = report["summary"]["base"], report["summary"]["sft"]
    for key in (
        "greedy_accuracy",
        "greedy_accuracy_ci",
        "sampled_pass1",
        "sampled_pass1_ci",
        "pass_at_k",
        "maj_at_k",
        "greedy_parse_failure_rate_ci",
        "greedy_truncation_rate_ci",
        "reference_nll",
    ):
        assert key in base and key in sft, key  # fmt: skip
    assert set(base["rewards"]["greedy"]) == {"math_accuracy", "format_reward"}
    assert "kl_to_base" not in base
    assert sft["kl_to_base"]["value"] > 0 and sft["kl_to_base"]["num_tokens"] > 0
    low, high = sft["kl_to_base"]["ci"]
    assert low <= sft["kl_to_base"]["value"] <= high
    # The adapter moved the model: the SFT targets are likelier under it than under the random base.
    assert sft["reference_nll"]["value"] < base["reference_nll"]["value"]
    comparison = report["comparisons"]["sft vs base"]
    assert {"diff", "ci_low", "ci_high", "p_value", "wrong_to_right"} <= set(comparison["greedy"])
    assert report["flips"]["sft vs base"]["mode"] == "greedy"
    provenance = report["provenance"]
    weights = run / "sft" / "adapter" / "adapter_model.safetensors"
    assert provenance["models"]["sft"]["adapter_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert provenance["models"]["base"]["base_model"] == provenance["models"]["sft"]["base_model"]
    assert len(provenance["chat_template_sha256"]) == 64
    assert {"torch", "transformers", "peft", "evaluate"} <= set(provenance["versions"])
    assert provenance["seeds"] == {"data": 42, "generation": 1234, "bootstrap": 1234}
    assert "loss" in report["training_curves"]["sft"]
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and len(samples[0]["sft/sampled"]["texts"]) == 2
    assert "| sft |" in (folder / "report.md").read_text()


def test_same_suite_models_and_seed_give_identical_numbers(reports):
    first, second = (_load(folder) for folder in reports)
    for key in ("summary", "comparisons", "flips", "items"):
        assert first[key] == second[key], key


def test_extra_split_is_reported_beside_the_main_one(run, reports):
    """eval/arithmetic.yaml lists test_phrasings: the eval stage and `ntp-rl eval` report it beside test."""
    for folder in (run / "eval", reports[0]):
        report = _load(folder)
        section = report["extra_splits"]["test_phrasings"]
        assert section["split"] == "test_phrasings" and section["num_items"] == report["num_items"]
        assert set(section["summary"]) == {"base", "sft"}
        for label, summary in section["summary"].items():
            for mode, key in (("greedy", "greedy_accuracy"), ("sampled", "sampled_pass1")):
                correct = section["items"]["results"][label][mode]["correct"]
                assert summary[key] == pytest.approx(sum(sum(c) / len(c) for c in correct) / len(correct))
                assert len(summary[f"{key}_ci"]) == 2
            assert "kl_to_base" not in summary and "reference_nll" not in summary  # main split only
        assert set(section["comparisons"]["sft vs base"]) == {"greedy", "sampled_pass1"}
        assert section["flips"]["sft vs base"]["mode"] == "greedy"
        # The main split's problems, in the same order, in other words.
        assert section["items"]["gold"] == report["items"]["gold"]
        prompts = zip(section["items"]["prompts"], report["items"]["prompts"], strict=True)
        assert all(new != old for new, old in prompts)
        gap = section["vs_main_split"]
        assert (gap["split"], gap["num_items"], gap["paired_on"]) == ("test", report["num_items"], "key")
        assert set(gap["comparisons"]) == {"base", "sft"} and "greedy" in gap["comparisons"]["sft"]
        markdown = (folder / "report.md").read_text()
        assert "## Splits side by side" in markdown
        assert "| checkpoint | test greedy % [95% CI] |" in markdown
        assert "| test_phrasings | sft vs base | greedy |" in markdown
        assert "| test | sft vs base | sampled_pass1 |" in markdown
        assert "Splits side by side" in (folder / "report.html").read_text()
    done = json.loads((run / "eval" / "COMPLETE").read_text())
    assert {"sft/test_phrasings/greedy_accuracy", "sft/test_phrasings/sampled_pass1"} <= set(done)


def test_an_extra_split_leaves_the_main_split_unchanged(run, reports, tmp_path):
    argv = _eval_argv(run)
    out = tmp_path / "main-only"
    assert main([*argv, *SUITE_OVERRIDES, "extra_splits=[]", "--out", str(out)]) == 0
    alone, beside = _load(out), _load(reports[0])
    assert "extra_splits" not in alone and "Splits side by side" not in (out / "report.md").read_text()
    for key in ("summary", "comparisons", "flips", "items"):
        assert alone[key] == beside[key], key


def test_out_folder_with_a_report_is_refused(reports, capsys):
    argv = ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", "--out", str(reports[0])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(reports[0] / "report.json") in err and "never overwritten" in err
    assert main(["compare", str(reports[0]), str(reports[1]), "--out", str(reports[0])]) == 2


def test_bad_model_specs_exit_2_before_loading(tmp_path, capsys):
    base = ["eval", "--suite", "eval/arithmetic.yaml", "--out", str(tmp_path / "x")]
    assert main([*base, "--model", f"a={tmp_path}"]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main([*base, "--model", "a=tiny", "--model", "a=tiny"]) == 2
    assert "used twice" in capsys.readouterr().err
    assert main([*base, "--model", "a=./no/such/folder"]) == 2
    assert not (tmp_path / "x").exists()


def test_compare_combines_reports_and_pairs_them(reports, tmp_path):
    out = tmp_path / "combined"
    assert main(["compare", str(reports[0] / "report.json"), str(reports[1]), "--out", str(out)]) == 0
    assert all((out / name).is_file() for name in REPORT_FILES)
    combined = _load(out)
    assert list(combined["summary"]) == ["base", "sft", "base@b", "sft@b"]
    assert combined["summary"]["sft@b"] == _load(reports[1])["summary"]["sft"]
    same = combined["comparisons"]["base@b vs base"]["greedy"]  # identical runs: no difference
    assert same["diff"] == 0 and same["wrong_to_right"] == 0 and same["right_to_wrong"] == 0
    assert "sft vs base" in combined["comparisons"]
    assert [s["path"] for s in combined["provenance"]["sources"]][1] == str(reports[1])
    extra = combined["extra_splits"]["test_phrasings"]  # the extra split is combined and paired too
    assert list(extra["summary"]) == ["base", "sft", "base@b", "sft@b"]
    assert extra["summary"]["sft@b"] == _load(reports[1])["extra_splits"]["test_phrasings"]["summary"]["sft"]
    assert extra["comparisons"]["base@b vs base"]["greedy"]["diff"] == 0
    assert set(extra["vs_main_split"]["comparisons"]) == {"base", "sft", "base@b", "sft@b"}
    assert "| test_phrasings | sft@b vs base | greedy |" in (out / "report.md").read_text()


def test_compare_of_reports_on_different_items_is_side_by_side_only(run, reports, tmp_path):
    out = tmp_path / "unpaired"
    assert main(["compare", str(run / "eval"), str(reports[0]), "--out", str(out)]) == 0
    combined = _load(out)
    assert list(combined["summary"]) == ["base", "sft", "base@a", "sft@a"]
    assert combined["comparisons"] == {} and "different items" in combined["note"]
    assert "extra_splits" not in combined  # 2 and 3 reworded items: nothing to pair there either
    assert "different items" in (out / "report.md").read_text()


class _Counter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag == "script":
            self.scripts += 1


def test_html_is_self_contained_and_escapes_model_text(reports):
    from ntp_rl.evaluation.html import render_html

    html = (reports[0] / "report.html").read_text()
    parsed = _Counter()
    parsed.feed(html)
    assert parsed.tags["table"] >= 5
    assert len(parsed.images) >= 3 and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert "http://" not in html and "https://" not in html and parsed.scripts == 0

    report = _load(reports[0])
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    report["summary"]["<b>sft</b>"] = report["summary"].pop("sft")
    report["disagreements"] = [
        {"index": 0, "prompt": evil, "answer": "&", "mode": "greedy",
         "completions": {"base": {"text": evil, "correct": False}, "<b>sft</b>": {"text": "ok", "correct": True}}}
    ]  # fmt: skip
    report["flips"]["sft vs base"]["examples"]["wrong_to_right"] = [
        {"index": 0, "prompt": evil, "answer": "1", "completions": {"base": evil, "sft": "</td></table>"}}
    ]
    html = render_html(report)
    parsed = _Counter()
    parsed.feed(html)
    assert parsed.scripts == 0 and "<script>" not in html and "<b>sft</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html and "&lt;/td&gt;&lt;/table&gt;" in html
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# CI (.ci/run) sets NTP_RL_REQUIRE_BROWSER=1: there a missing browser fails the test instead of skipping it.
REQUIRE_BROWSER = os.environ.get("NTP_RL_REQUIRE_BROWSER") == "1"


@pytest.mark.skipif(
    _chromium() is None and not REQUIRE_BROWSER,
    reason="no chromium on PATH (apt-get install -y chromium to run this check)",
)
def test_html_renders_in_headless_chromium(reports):
    assert _chromium() is not None, "NTP_RL_REQUIRE_BROWSER=1 but no chromium on PATH"
    page = reports[0] / "report.html"
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--dump-dom", page.as_uri()]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile}
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<table") >= 5
    assert dom.count('<img alt="') >= 3 and dom.count('src="data:image/png;base64,') >= 3
    assert "Paired comparisons" in dom and "sft vs base" in dom


def test_kl_and_nll_by_hand(tiny_model_path):
    import torch

    from ntp_rl.evaluation.logprobs import per_token_kl, per_token_nll
    from ntp_rl.models import load_causal_lm

    model = load_causal_lm(tiny_model_path)
    pairs = [([5, 6, 7, 8, 9], [10, 11, 12]), ([5, 6], [13]), ([7, 8, 9], [14, 15, 16, 17])]
    batched = per_token_nll(model, pairs, pad_id=0, batch_size=3)
    for (prompt, completion), values in zip(pairs, batched, strict=True):
        ids = torch.tensor([prompt + completion])
        with torch.inference_mode():
            log_p = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = [-float(log_p[len(prompt) - 1 + j, t]) for j, t in enumerate(completion)]
        assert values == pytest.approx(expected, abs=1e-4)  # left padding does not change a thing
    kl = per_token_kl(model, pairs, nullcontext, nullcontext, pad_id=0, batch_size=2)
    assert [len(v) for v in kl] == [3, 1, 4] and max(max(v) for v in kl) == pytest.approx(0.0, abs=1e-6)


def test_checkpoints_share_one_base_and_find_it(run, tiny_model_path, tmp_path):
    from ntp_rl.checkpoints import LoadedGroup, group_by_base, resolve_checkpoint
    from ntp_rl.models import load_causal_lm

    specs = [("base", "tiny"), ("a", str(run / "sft")), ("b", str(run / "sft" / "adapter"))]
    checkpoints = [resolve_checkpoint(label, spec) for label, spec in specs]
    assert checkpoints[1].stage_dir == run / "sft" and checkpoints[2].adapter == run / "sft" / "adapter"
    groups = group_by_base(checkpoints)
    assert len(groups) == 1 and [c.label for c in groups[0][1]] == ["base", "a", "b"]
    group = LoadedGroup(groups[0][0], groups[0][1], "float32", False)
    base_numel = sum(p.numel() for n, p in group.model.named_parameters() if "lora_" not in n)
    assert base_numel == sum(p.numel() for p in load_causal_lm(tiny_model_path).parameters())  # one copy
    assert {"a", "b"} <= set(group.model.peft_config)

    # A run copied from elsewhere: the adapter's recorded base is gone; the run's manifest names it.
    moved = tmp_path / "ev"
    shutil.copytree(run / "sft", moved / "sft", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copy(run / "manifest.json", moved / "manifest.json")
    config_path = moved / "sft" / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "/gone/tiny-llama"}))
    assert resolve_checkpoint("sft", str(moved / "sft")).base == tiny_model_path


def test_sampled_checkpoints_skips_the_others_samples_and_their_sampled_comparisons(run, tmp_path):
    argv = _eval_argv(run)
    out = tmp_path / "only-sft"
    assert main([*argv, *SUITE_OVERRIDES, "generation.sampled_checkpoints=[sft]", "--out", str(out)]) == 0
    report = _load(out)
    assert set(report["items"]["results"]["base"]) == {"greedy"}
    assert set(report["items"]["results"]["sft"]) == {"greedy", "sampled"}
    assert "sampled_pass1" not in report["summary"]["base"] and "sampled_pass1" in report["summary"]["sft"]
    assert set(report["comparisons"]["sft vs base"]) == {"greedy"}
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert "base/sampled" not in sample and len(sample["sft/sampled"]["texts"]) == 2


def test_sampled_checkpoints_naming_an_unknown_checkpoint_exits_2(tmp_path, capsys):
    argv = ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", *SUITE_OVERRIDES]
    assert main([*argv, "generation.sampled_checkpoints=[rl]", "--out", str(tmp_path / "x")]) == 2
    assert "generation.sampled_checkpoints: ['rl'] are not checkpoints of this eval (['base'])" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "x" / "report.json").exists()


def test_generation_from_the_merged_adapter_matches_the_unmerged_one(run, tmp_path):
    """In float32 merging is exact to rounding: the merged copy computes what the adapter does."""
    import torch

    from ntp_rl.checkpoints import LoadedGroup, resolve_checkpoint

    base, sft = resolve_checkpoint("base", "tiny"), resolve_checkpoint("sft", str(run / "sft"))
    group = LoadedGroup(sft.base, [base, sft], "float32", False)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        with group.active(sft) as model:
            unmerged = model(input_ids=ids).logits
        with group.for_generation(sft) as merged_model:
            assert not hasattr(merged_model, "peft_config")  # a plain model, adapter folded in
            merged = merged_model(input_ids=ids).logits
        with group.for_generation(base) as model:
            plain = model(input_ids=ids).logits
        with group.active(sft) as model:  # the shared model is untouched by the merged copy
            again = model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert (unmerged - plain).abs().max() > 1e-2  # the adapter matters: this is not a vacuous match
    assert torch.equal(again, unmerged)

    argv = _eval_argv(run)
    assert (
        main([*argv, *SUITE_OVERRIDES, "generation.merge_adapters=false", "--out", str(tmp_path / "u")]) == 0
    )
    assert _load(tmp_path / "u")["generation"]["merge_adapters"] is False


def test_kl_to_a_checkpoint_measures_against_that_adapter(run, tmp_path):
    """kl_to=[sft]: an identical copy of sft's adapter is 0 from it; a scaled one is not, and differs
    from its KL to the base; the reports get a column per reference."""
    import torch
    from safetensors.torch import load_file, save_file

    same = tmp_path / "same"
    shutil.copytree(run / "sft" / "adapter", same)
    scaled = tmp_path / "scaled"
    shutil.copytree(run / "sft" / "adapter", scaled)
    weights = load_file(scaled / "adapter_model.safetensors")
    save_file(
        {k: (3 * t if "lora_B" in k else t).contiguous() for k, t in weights.items()},
        str(scaled / "adapter_model.safetensors"),
    )
    models = ["--model", f"same={same}", "--model", f"scaled={scaled}"]
    out = tmp_path / "kl"
    assert main([*_eval_argv(run), *models, *SUITE_OVERRIDES, "kl_to=[sft]", "--out", str(out)]) == 0
    summary = _load(out)["summary"]
    assert "kl_to_sft" not in summary["sft"] and "kl_to_sft" not in summary["base"]
    assert summary["same"]["kl_to_sft"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert summary["same"]["kl_to_base"]["value"] == pytest.approx(summary["sft"]["kl_to_base"]["value"])
    assert summary["scaled"]["kl_to_sft"]["value"] > 1e-4
    assert summary["scaled"]["kl_to_sft"]["value"] != pytest.approx(summary["scaled"]["kl_to_base"]["value"])
    assert summary["scaled"]["kl_to_sft"]["num_tokens"] == summary["scaled"]["kl_to_base"]["num_tokens"]
    assert torch.isfinite(torch.tensor(summary["scaled"]["kl_to_sft"]["ci"])).all()
    text = (out / "report.md").read_text()
    assert "KL to base /token | KL to sft /token" in text
    assert "KL to sft / token" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[base]", "'base' is measured by `kl_to_base`"),
        ("[rl]", "kl_to: 'rl' is not a checkpoint of this eval (['base', 'sft'])"),
    ],
)
def test_kl_to_naming_the_base_or_an_unknown_checkpoint_exits_2(run, tmp_path, capsys, value, message):
    argv = _eval_argv(run)
    assert main([*argv, *SUITE_OVERRIDES, f"kl_to={value}", "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "report.json").exists()
