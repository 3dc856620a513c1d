"""`model.dtype: auto` (ntp_rl/dtypes.py): explicit dtypes pass through; on a CPU the matmul probe
decides, its rates are cached per machine key and re-measured when the cache is unreadable; the
pipeline records the choice in the manifest and trains in it.

The probe itself is replaced by a stub that returns chosen rates (and counts its calls), so these
tests decide nothing by timing; the probe cache goes to a folder of each test's own.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ntp_rl import dtypes
from ntp_rl.cli import main

BF16_FAST = {"float32": 10.0, "bfloat16": 40.0}
BF16_SLOW = {"float32": 28.0, "bfloat16": 0.7}
BF16_LEVEL = {"float32": 10.0, "bfloat16": 11.0}  # faster, but within the margin: not worth it


class StubProbe:
    """Stands in for `measure_matmul_gflops`: rates by thread count (None: the thread count now)."""

    def __init__(self, rates: dict[str, float], one_thread: dict[str, float] | None = None):
        self.rates, self.one_thread, self.calls = rates, one_thread or rates, []

    def __call__(self, threads: int | None = None) -> dict[str, float]:
        threads = threads or torch.get_num_threads()
        self.calls.append(threads)
        return dict(self.one_thread if threads == 1 else self.rates)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A probe cache of the test's own, no GPU, the in-process memo empty before and after."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(dtypes, "cache_root", lambda: cache)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = torch.get_num_threads()
    dtypes._CHOICES.clear()
    yield cache
    dtypes._CHOICES.clear()
    torch.set_num_threads(threads)


def stub(monkeypatch, rates, one_thread=None) -> StubProbe:
    probe = StubProbe(rates, one_thread)
    monkeypatch.setattr(dtypes, "measure_matmul_gflops", probe)
    return probe


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_pass_through_without_a_probe(monkeypatch, dtype):
    probe = stub(monkeypatch, BF16_SLOW)
    assert dtypes.resolve_dtype(dtype) == dtype
    assert dtypes.dtype_choice(dtype) == {"requested": dtype, "resolved": dtype}
    assert probe.calls == []


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="float64"):
        dtypes.resolve_dtype("float64")


@pytest.mark.parametrize(
    ("rates", "expected"),
    [(BF16_FAST, "bfloat16"), (BF16_SLOW, "float32"), (BF16_LEVEL, "float32")],
)
def test_auto_on_a_cpu_follows_the_probe(monkeypatch, rates, expected):
    torch.set_num_threads(1)
    stub(monkeypatch, rates)
    choice = dtypes.dtype_choice("auto")
    assert choice["resolved"] == expected
    assert choice["gflops"] == rates and choice["threads"] == 1 and choice["cached"] is False


def test_with_several_threads_bf16_must_also_win_on_one(monkeypatch):
    # Busy cores can slow a multi-threaded fp32 product more than a bf16 one: one thread decides too.
    torch.set_num_threads(2)
    probe = stub(monkeypatch, BF16_FAST, one_thread=BF16_SLOW)
    choice = dtypes.dtype_choice("auto")
    assert choice["resolved"] == "float32"
    assert sorted(probe.calls) == [1, 2]
    assert choice["gflops"] == BF16_FAST and choice["gflops_1_thread"] == BF16_SLOW
    dtypes._CHOICES.clear()
    stub(monkeypatch, BF16_FAST)
    torch.set_num_threads(3)  # another key, measured afresh
    assert dtypes.resolve_dtype("auto") == "bfloat16"


def test_the_probe_runs_once_per_machine_key_then_the_cache_answers(monkeypatch, isolated):
    torch.set_num_threads(1)
    probe = stub(monkeypatch, BF16_SLOW)
    first = dtypes.dtype_choice("auto")
    assert probe.calls == [1] and first["cached"] is False and first["probe_seconds"] >= 0
    cached = json.loads((isolated / dtypes.CACHE_FILE).read_text())
    assert cached["machines"][dtypes.machine_key()]["gflops"] == BF16_SLOW

    assert dtypes.dtype_choice("auto") is first  # memoised in the process
    dtypes._CHOICES.clear()  # a new process: the cache file answers
    again = dtypes.dtype_choice("auto")
    assert probe.calls == [1]
    assert again["cached"] is True and again["resolved"] == "float32" and again["gflops"] == BF16_SLOW

    dtypes._CHOICES.clear()
    torch.set_num_threads(2)  # another thread count misses the cache
    assert dtypes.resolve_dtype("auto") == "float32"
    assert sorted(probe.calls) == [1, 1, 2]

    dtypes._CHOICES.clear()
    torch.set_num_threads(1)
    monkeypatch.setattr(dtypes, "cpu_description", lambda: "Another CPU (flags 0000)")  # another machine
    assert dtypes.resolve_dtype("auto") == "float32"
    assert sorted(probe.calls) == [1, 1, 1, 2]
    assert len(json.loads((isolated / dtypes.CACHE_FILE).read_text())["machines"]) == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '["a list"]',
        '{"format": 1, "machines": {"KEY": {"gflops": {"float32": "fast"}}}}',
        '{"format": 1, "machines": {"KEY": {"gflops": {"float32": 0, "bfloat16": 1}}}}',
        '{"format": 99, "machines": {}}',
    ],
)
def test_an_unreadable_cache_is_measured_again(monkeypatch, isolated, caplog, content):
    torch.set_num_threads(1)
    isolated.mkdir()
    (isolated / dtypes.CACHE_FILE).write_text(content.replace("KEY", dtypes.machine_key()))
    probe = stub(monkeypatch, BF16_FAST)
    with caplog.at_level(logging.WARNING, logger="ntp_rl.dtypes"):
        choice = dtypes.dtype_choice("auto")
    assert choice["resolved"] == "bfloat16" and choice["cached"] is False and probe.calls == [1]
    rewritten = json.loads((isolated / dtypes.CACHE_FILE).read_text())
    assert rewritten["format"] == dtypes.CACHE_FORMAT
    assert rewritten["machines"][dtypes.machine_key()]["gflops"] == BF16_FAST


def test_a_failing_probe_means_float32(monkeypatch):
    def broken(threads=None):
        raise RuntimeError("no bf16 kernels in this build")

    monkeypatch.setattr(dtypes, "measure_matmul_gflops", broken)
    choice = dtypes.dtype_choice("auto")
    assert choice["resolved"] == "float32" and "no bf16 kernels" in choice["probe_error"]
    assert "the probe failed" in dtypes.describe_choice(choice)


@pytest.mark.parametrize(("supported", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_on_a_gpu_asks_cuda(monkeypatch, supported, expected):
    probe = stub(monkeypatch, BF16_SLOW)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Some GPU")
    choice = dtypes.dtype_choice("auto")
    assert choice["resolved"] == expected and choice["device"] == "cuda: Some GPU"
    assert probe.calls == []


def test_another_process_choice_is_adopted(monkeypatch):
    # The pipeline's non-main ranks take the main process's choice instead of measuring.
    probe = stub(monkeypatch, BF16_SLOW)
    main_choice = {"requested": "auto", "resolved": "bfloat16", "device": "cpu"}
    dtypes.use_dtype_choice(main_choice)
    assert dtypes.resolve_dtype("auto") == "bfloat16" and probe.calls == []


def test_the_log_line_names_the_choice_and_the_rates():
    choice = {
        "requested": "auto",
        "resolved": "float32",
        "threads": 2,
        "gflops": {"float32": 2.5, "bfloat16": 1.5},
        "gflops_1_thread": {"float32": 28.5, "bfloat16": 0.7},
        "cached": True,
    }
    assert dtypes.describe_choice(choice) == (
        "model.dtype auto -> float32 (CPU matmul, 2 threads: float32 2.5, bfloat16 1.5 GFLOP/s; "
        "1 thread: float32 28.5, bfloat16 0.7 GFLOP/s; cached)"
    )


def test_trainer_args_follow_the_resolved_dtype(monkeypatch, tmp_path, isolated):
    from ntp_rl.config import Recipe
    from ntp_rl.stages.common import trainer_args

    recipe = Recipe.model_validate(
        {
            "run": {"name": "t"},
            "model": {"name_or_path": "tiny", "dtype": "auto"},
            "stages": [{"kind": "sft"}],
        }
    )
    for rates, bf16 in ((BF16_SLOW, False), (BF16_FAST, True)):
        dtypes._CHOICES.clear()
        (isolated / dtypes.CACHE_FILE).unlink(missing_ok=True)
        stub(monkeypatch, rates)
        assert trainer_args(recipe, recipe.stages[0], 0, tmp_path).bf16 is bf16


@pytest.mark.parametrize(("rates", "expected"), [(BF16_SLOW, "float32"), (BF16_FAST, "bfloat16")])
def test_a_run_with_dtype_auto_trains_in_the_choice_and_records_it(
    monkeypatch, write_recipe, tmp_path, tiny_model_path, caplog, rates, expected
):
    import ntp_rl.stages.sft as sft

    probe = stub(monkeypatch, rates)
    loaded = []
    real_load = sft.load_causal_lm

    def spy(path, dtype="float32", *args, **kwargs):
        model = real_load(path, dtype, *args, **kwargs)
        loaded.append((dtype, next(model.parameters()).dtype))
        return model

    monkeypatch.setattr(sft, "load_causal_lm", spy)
    recipe = {
        "run": {"name": "auto"},
        "model": {"name_or_path": "tiny", "dtype": "auto", "lora": {"r": 4, "target_modules": "all-linear"}},
        "data": {"arithmetic": {"num_train": 8, "num_test": 2}},
        "stages": [
            {"kind": "sft", "eval_examples": 0, "trainer": {"max_steps": 1, "per_device_train_batch_size": 2}}
        ],
    }
    with caplog.at_level(logging.INFO, logger="ntp_rl"):
        assert main(["train", str(write_recipe(recipe))]) == 0
    assert len(probe.calls) >= 1
    assert loaded == [(expected, getattr(torch, expected))]
    manifest = json.loads((tmp_path / "runs" / "auto" / "manifest.json").read_text())
    assert manifest["config"]["model"]["dtype"] == "auto"  # the config (and its hash) keeps `auto`
    assert manifest["dtype"]["requested"] == "auto" and manifest["dtype"]["resolved"] == expected
    assert manifest["dtype"]["gflops"] == rates
    assert manifest["stages"]["sft"]["dtype"] == expected
    assert f"model.dtype auto -> {expected} (CPU matmul" in caplog.text


def test_a_learned_reward_resolves_dtype_auto_when_it_loads(monkeypatch, tiny_model_path):
    from ntp_rl.rewards.learned import LearnedReward

    import ntp_rl.models as models

    with pytest.raises(ValueError, match="float64"):
        LearnedReward(tiny_model_path, dtype="float64")
    stub(monkeypatch, BF16_FAST)
    asked = []

    def fake_classifier(path, dtype="float32", trust_remote_code=False, pad_token_id=None):
        asked.append(dtype)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(models, "load_sequence_classifier", fake_classifier)
    reward = LearnedReward(tiny_model_path, dtype="auto")
    assert reward.dtype == "auto"  # kept as given: resolved where the model loads
    reward.load()
    assert asked == ["bfloat16"]
