"""Extra eval splits (`extra_splits`, e.g. synthetic:arithmetic's `test_phrasings`) without a model:
settings, smoke sizes, preflight errors, pairing by problem key, and the side-by-side tables. The
end-to-end runs on the tiny model are in tests/test_eval_harness.py."""

from __future__ import annotations

import pytest
import yaml

from ntp_rl.config import load_recipe
from ntp_rl.errors import UserError
from ntp_rl.evaluation.formatting import split_tables
from ntp_rl.evaluation.report import across_splits, extra_split_section, render_markdown
from ntp_rl.evaluation.suite import EvalSuite, validate_suite
from ntp_rl.stages.evaluate import stage_suite

QUICKSTART = "recipes/quickstart.yaml"


def _greedy(*verdicts: bool) -> dict:
    return {"greedy": {"correct": [[v] for v in verdicts], "texts": [[f"Answer: {v}"] for v in verdicts]}}


def test_across_splits_pairs_items_by_key_whatever_their_order():
    main_keys = ["k1", "k2", "k3", "k4"]
    main = {"sft": _greedy(True, False, True, False)}
    keys = ["k3", "k1", "k5"]  # another order, one problem the main split does not hold
    extra = {"sft": _greedy(False, False, True)}
    gap = across_splits(main_keys, main, keys, extra, seed=0)
    assert gap["num_items"] == 2 and gap["paired_on"] == "key"
    greedy = gap["comparisons"]["sft"]["greedy"]  # k1 and k3: right on the main split, wrong here
    assert greedy["diff"] == pytest.approx(-1.0)
    assert (greedy["wrong_to_right"], greedy["right_to_wrong"]) == (0, 2)
    assert across_splits(["k1", "k1"], main, keys, extra, seed=0) is None  # keys must pair one to one
    assert across_splits(main_keys, main, ["x", "y", "z"], extra, seed=0) is None


def test_extra_split_section_and_tables_show_both_splits_and_their_comparisons():
    results = {"sft": _greedy(True, True, False, False), "rl": _greedy(True, False, False, False)}
    items = {"prompts": ["p1", "p2", "p3", "p4"], "gold": ["1", "2", "3", "4"], "results": results}
    summary = {"sft": {"greedy_accuracy": 0.5}, "rl": {"greedy_accuracy": 0.25}}
    main_results = {"sft": _greedy(True, True, False, True), "rl": _greedy(True, True, True, True)}
    section = extra_split_section(
        "test_phrasings",
        items,
        summary,
        main=("test", ["a", "b", "c", "d"], main_results),
        keys=["a", "b", "c", "d"],
        seed=0,
        max_examples=1,
    )
    assert section["comparisons"]["rl vs sft"]["greedy"]["diff"] == pytest.approx(-0.25)
    assert section["vs_main_split"]["comparisons"]["rl"]["greedy"]["diff"] == pytest.approx(-0.75)
    report = {
        "split": "test",
        "num_items": 4,
        "summary": {"sft": {"greedy_accuracy": 0.75}, "rl": {"greedy_accuracy": 1.0}},
        "comparisons": {"rl vs sft": {}},
        "extra_splits": {"test_phrasings": section},
    }
    (caption, header, rows, _), comparisons, gap = split_tables(report)
    assert "test: 4 items, test_phrasings: 4 items" in caption
    assert header[1:4:2] == ["test greedy % [95% CI]", "test_phrasings greedy % [95% CI]"]
    assert rows == [["sft", "75.0", "-", "50.0", "-"], ["rl", "100.0", "-", "25.0", "-"]]
    row = comparisons[2][0]  # split, comparison, metric, diff [CI], wrong->right, right->wrong, p
    assert row[:3] == ["test_phrasings", "rl vs sft", "greedy"] and row[3].startswith("-25.0 [")
    assert row[4:6] == ["0", "1"]
    assert [(r[0], r[1], r[2].split(" ")[0]) for r in gap[2]] == [
        ("sft", "greedy", "-25.0"),
        ("rl", "greedy", "-75.0"),
    ]
    assert split_tables({**report, "extra_splits": {}}) == []


def test_suite_extra_splits_accept_a_name_or_a_mapping_and_refuse_repeats():
    suite = validate_suite({"extra_splits": ["test_phrasings", {"split": "train", "max_examples": 5}]}, "s")
    assert [(e.split, e.max_examples) for e in suite.extra_splits] == [("test_phrasings", None), ("train", 5)]
    with pytest.raises(UserError, match=r"extra_splits: 'test' is the main split"):
        validate_suite({"extra_splits": ["test"]}, "s")
    with pytest.raises(UserError, match=r"extra_splits: split\(s\) \['a'\] listed twice"):
        validate_suite({"extra_splits": ["a", "a"]}, "s")
    with pytest.raises(UserError, match=r"extra_splits\[0\]\.max_exampels: unknown key"):
        validate_suite({"extra_splits": [{"split": "a", "max_exampels": 3}]}, "s")


def test_quickstart_evaluates_160_reworded_problems_and_smoke_shrinks_them(tmp_path):
    from ntp_rl.evaluation.harness import load_extra_items, load_items

    for smoke, size in ((False, 160), (True, 4)):
        recipe = load_recipe(QUICKSTART, smoke=smoke)
        index = len(recipe.stages) - 1
        suite, _ = stage_suite(recipe, recipe.stages[index], index, tmp_path)
        assert [e.split for e in suite.extra_splits] == ["test_phrasings"]
        rows = load_items(suite, tmp_path)
        extra = load_extra_items(suite, tmp_path, rows)["test_phrasings"]
        assert len(extra) == size
        assert extra["key"] == rows["key"][:size] and extra["prompt"] != rows["prompt"][:size]


def test_an_extra_split_equal_to_the_main_one_exits_2_before_any_model_loads(write_recipe, capsys):
    from ntp_rl.cli import main

    path = write_recipe(
        {"model": {"name_or_path": "tiny"}, "stages": [{"kind": "eval", "extra_splits": ["test"]}]}
    )
    assert main(["train", str(path)]) == 2
    assert "extra_splits: 'test' is the stage's main split already" in capsys.readouterr().err


def test_an_extra_split_a_local_source_lacks_exits_2(tmp_path, capsys):
    from ntp_rl.cli import main

    data = tmp_path / "test.jsonl"
    data.write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n')
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"data": {"source": str(data)}, "reference_nll": None, "extra_splits": ["test_phrasings"]}
        )
    )
    argv = ["eval", "--suite", str(suite), "--model", "base=tiny", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "split 'test_phrasings' needs its own file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_markdown_without_extra_splits_has_no_split_section():
    suite = EvalSuite()
    assert suite.extra_splits == []
    report = {
        "title": "t",
        "num_items": 1,
        "data_source": "x",
        "split": "test",
        "generation": {},
        "summary": {"base": {"greedy_accuracy": 1.0}},
        "comparisons": {},
    }
    assert "Splits side by side" not in render_markdown(report)
