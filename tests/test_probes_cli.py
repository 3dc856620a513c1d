"""`ntp-rl probe ...` on tiny (reports written, never overwritten, bad inputs exit 2), and the eval
report's "Beyond next-token prediction" section when a suite or an eval stage enables probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ntp_rl.cli import main

SMALL_PROBES = (
    "probes={future: {texts: 12, k: 2, max_tokens: 64}, answer: {examples: 40}, "
    "rhyme: {generate: 4, max_new_tokens: 4}, credit: {texts: 3, k: 3, max_tokens: 24}}"
)


def test_probe_future_on_tiny_writes_its_report_and_never_overwrites(tmp_path, capsys, tiny_model_path):
    out = tmp_path / "future"
    argv = ["probe", "future", "--model", "base=tiny", "--data", "synthetic:arithmetic", "--k", "2"]
    assert main([*argv, "--texts", "12", "--max-tokens", "64", "--out", str(out)]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert report["format"] == "ntp-rl-probe-report/1" and report["instrument"] == "future"
    future = report["beyond_ntp"]["future"]["base"]
    assert future["distances"] == [0, 1, 2] and set(future["by_distance"]) == {"0", "1", "2"}
    assert len(future["by_distance"]["1"]["accuracy"]) == future["num_layers"] == 3
    markdown = (out / "probe.md").read_text()
    assert "Future-token probes" in markdown and "(probe_future.png)" in markdown
    assert (out / "probe_future.png").read_bytes().startswith(b"\x89PNG")
    assert "report:" in capsys.readouterr().out

    before = (out / "probe.json").read_bytes()
    assert main([*argv, "--texts", "12", "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (out / "probe.json").read_bytes() == before


def test_probe_of_an_adapter_merges_it(tmp_path, tiny_model_path):
    """A fresh LoRA adapter (B = 0) is the base itself: the same numbers, and the adapter's hash recorded."""
    from peft import LoraConfig, get_peft_model

    from ntp_rl.models import load_causal_lm

    adapter = tmp_path / "adapter"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    get_peft_model(load_causal_lm(tiny_model_path), config).save_pretrained(str(adapter))
    out = tmp_path / "answer"
    argv = ["probe", "answer", "--model", "base=tiny", "--model", f"lora={adapter}", "--examples", "40"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "probe.json").read_text())
    answer = report["beyond_ntp"]["answer"]
    for target in ("last_digit", "bucket"):
        assert answer["lora"]["targets"][target]["accuracy"] == answer["base"]["targets"][target]["accuracy"]
    assert report["models"]["lora"]["adapter_sha256"]


def test_probe_credit_on_a_text_file_with_its_control(tmp_path, tiny_model_path):
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "The cat sat on the mat and looked at the door.\n\nA bird sang in the tall green tree.\n"
    )
    out = tmp_path / "credit"
    assert (
        main(["probe", "credit", "--model", "base=tiny", "--data", str(texts), "--k", "3", "--out", str(out)])
        == 0
    )
    credit = json.loads((out / "probe.json").read_text())["beyond_ntp"]["credit"]["base"]
    assert credit["num_sequences"] == 2 and credit["share_beyond_1"] > 0
    assert credit["control"]["share_beyond_1"] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", "future", "--model", "base=tiny", "--data", "missing.jsonl"], "no such file"),
        (
            ["probe", "future", "--model", "base=tiny", "--data", "{rows}", "--column", "body"],
            "no column 'body'",
        ),
        (["probe", "credit", "--model", "base=tiny", "--data", "data.xlsx"], "use synthetic:arithmetic"),
        (["probe", "future", "--model", "base=tiny", "--k", "99"], "--k"),
        (["probe", "rhyme", "--model", "base=tiny", "--fit-fraction", "1.5"], "--fit-fraction"),
        (["probe", "answer", "--model", "base=/no/such/model"], "/no/such/model"),
    ],
)
def test_probe_bad_inputs_exit_2_before_loading_a_model(tmp_path, capsys, argv, message):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a"}\n{"text": "b"}\n')
    argv = [a.replace("{rows}", str(rows)) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "probe.json").exists()


def test_eval_report_has_the_beyond_ntp_section_when_probes_are_on(tmp_path, tiny_model_path):
    out = tmp_path / "eval"
    overrides = ["max_examples=3", "generation.num_samples=0", "generation.max_new_tokens=4", SMALL_PROBES]
    assert (
        main(
            ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", *overrides, "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    section = report["beyond_ntp"]
    assert set(section) >= {"settings", "future", "answer", "rhyme", "credit", "distance_from_ntp"}
    assert section["credit"]["base"]["control"]["share_beyond_1"] == 0.0  # the reference runs the control
    assert section["distance_from_ntp"]["points"]["base"]["reward_gained"] == 0.0
    assert section["rhyme"]["base"]["generation"]["num_generated"] == 4
    markdown = (out / "report.md").read_text()
    assert "## Beyond next-token prediction" in markdown and "### Gradient credit by distance" in markdown
    html = (out / "report.html").read_text()
    assert "<h2>Beyond next-token prediction</h2>" in html
    assert html.count('alt="future-token probe accuracy') == 1 and html.count("data:image/png;base64,") >= 6


def test_compare_carries_the_beyond_ntp_section_under_its_labels(tmp_path, tiny_model_path):
    overrides = ["max_examples=3", "generation.num_samples=0", "generation.max_new_tokens=4"]
    probes = "probes={future: {texts: 8, k: 1, max_tokens: 48}}"
    suite = ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", *overrides]
    assert main([*suite, probes, "--out", str(tmp_path / "a")]) == 0
    assert main([*suite, "--out", str(tmp_path / "b")]) == 0  # no probes: nothing to carry
    assert main([*suite, probes.replace("k: 1", "k: 2"), "--out", str(tmp_path / "c")]) == 0

    out = tmp_path / "ab"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    source = json.loads((tmp_path / "a" / "report.json").read_text())["beyond_ntp"]
    section = json.loads((out / "report.json").read_text())["beyond_ntp"]
    assert section["checkpoints"] == ["base"] and section["future"]["base"] == source["future"]["base"]
    assert section["distance_from_ntp"]["points"]["base"]["reward_gained"] == 0.0
    assert set(section["distance_from_ntp"]["points"]) == {"base", "base@b"}
    assert "note" not in section
    assert "## Beyond next-token prediction" in (out / "report.md").read_text()

    out = tmp_path / "ac"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out)]) == 0
    section = json.loads((out / "report.json").read_text())["beyond_ntp"]
    assert section["checkpoints"] == ["base", "base@c"] and set(section["future"]) == {"base", "base@c"}
    assert "settings differ" in section["note"] and len(section["settings_by_report"]) == 2
    assert "Note: probe settings differ" in (out / "report.md").read_text()


def test_a_probe_that_cannot_measure_exits_2_alone_and_is_recorded_in_an_eval(
    tmp_path, capsys, tiny_model_path
):
    argv = ["probe", "credit", "--model", "base=tiny", "--k", "30", "--max-tokens", "8"]
    assert main([*argv, "--out", str(tmp_path / "alone")]) == 2
    assert "too short for k = 30" in capsys.readouterr().err

    out = tmp_path / "eval"
    overrides = ["max_examples=2", "generation.num_samples=0", "generation.max_new_tokens=2"]
    probes = "probes={future: {texts: 8, k: 1, max_tokens: 48}, credit: {k: 30, max_tokens: 8}}"
    argv = ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", *overrides, probes]
    assert main([*argv, "--out", str(out)]) == 0  # the eval is not lost to one probe
    section = json.loads((out / "report.json").read_text())["beyond_ntp"]
    assert "future" in section and "credit" not in section
    assert "too short" in section["errors"]["credit"]["base"]
    assert "credit on base: not measured" in (out / "report.md").read_text()


def test_eval_report_has_no_section_without_probes(tmp_path, tiny_model_path):
    out = tmp_path / "plain"
    overrides = ["max_examples=2", "generation.num_samples=0", "generation.max_new_tokens=2"]
    assert (
        main(
            ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", *overrides, "--out", str(out)]
        )
        == 0
    )
    assert "beyond_ntp" not in json.loads((out / "report.json").read_text())
    assert "Beyond next-token prediction" not in (out / "report.md").read_text()


def test_eval_stage_passes_its_probes_to_the_suite_and_keeps_old_config_hashes(tmp_path):
    from ntp_rl.config import load_recipe
    from ntp_rl.stages.evaluate import stage_suite

    def recipe(eval_stage: dict) -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "run": {"name": "p", "output_dir": str(tmp_path / "runs")},
                    "model": {"name_or_path": "tiny"},
                    "stages": [{"kind": "sft"}, {"kind": "eval", **eval_stage}],
                }
            )
        )
        return path

    plain = load_recipe(recipe({}))
    with_null = load_recipe(recipe({"probes": None}))
    assert plain.config_hash() == with_null.config_hash()  # runs from before probes existed resume
    on = load_recipe(
        recipe({"suite": "eval/arithmetic.yaml", "probes": {"future": {"k": 2}, "credit": True}})
    )
    assert on.config_hash() != plain.config_hash()
    suite, _ = stage_suite(on, on.stages[1], 1, tmp_path)
    assert suite.probes is not None and suite.probes.enabled() == ["future", "credit"]
    inline = load_recipe(recipe({"probes": True}))
    assert stage_suite(inline, inline.stages[1], 1, tmp_path)[0].probes.enabled() == [
        "future", "answer", "rhyme", "credit"
    ]  # fmt: skip


def test_probes_key_errors_name_their_path(tmp_path, capsys):
    out = tmp_path / "bad"
    argv = ["eval", "--suite", "eval/arithmetic.yaml", "--model", "base=tiny", "probes={futur: {k: 2}}"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "probes.futur: unknown key; did you mean future?" in capsys.readouterr().err


def test_eval_stage_with_probes_probes_base_and_adapter_in_place(write_recipe, tmp_path, tiny_model_path):
    """A 1-step SFT run then an eval stage with probes: the adapter is probed through the shared
    PeftModel (credit needs gradients through it), and the distance plot gets the adapter's KL."""
    recipe = {
        "run": {"name": "pr"},
        "model": {"name_or_path": "tiny", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 8, "num_test": 4}},
        "stages": [
            {"kind": "sft", "eval_examples": 0,
             "trainer": {"max_steps": 1, "per_device_train_batch_size": 2, "warmup_steps": 0,
                         "learning_rate": 0.05, "logging_steps": 1}},
            {"kind": "eval", "max_examples": 2, "num_samples": 0, "max_new_tokens": 3,
             "probes": {"future": {"texts": 8, "k": 1, "max_tokens": 48}, "credit": {"texts": 2, "k": 2},
                        "answer": {"examples": 30}}},
        ],
    }  # fmt: skip
    assert main(["train", str(write_recipe(recipe))]) == 0
    section = json.loads((tmp_path / "runs" / "pr" / "eval" / "report.json").read_text())["beyond_ntp"]
    assert section["checkpoints"] == ["base", "sft"] and "rhyme" not in section
    assert set(section["future"]) == set(section["credit"]) == {"base", "sft"}
    assert section["credit"]["sft"]["share_beyond_1"] > 0 and "control" not in section["credit"]["sft"]
    assert section["credit"]["base"]["control"]["share_beyond_1"] == 0.0
    points = section["distance_from_ntp"]["points"]
    assert points["base"]["kl_to_base"] == 0.0 and points["sft"]["kl_to_base"] > 0
