"""Model resolution and the cache: local folders, clear errors, safe concurrent materialisation."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntp_rl import models
from ntp_rl.errors import UserError


def test_local_folder_resolves_to_itself(tiny_model_path):
    assert models.resolve_model_path(tiny_model_path) == tiny_model_path
    model = models.load_causal_lm(tiny_model_path)
    assert model.config.num_hidden_layers == 2


def test_tiny_has_the_default_tokenizer_and_chat_template(tiny_model_path):
    tokenizer = models.load_tokenizer(tiny_model_path)
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text


def test_tests_use_their_own_model_cache(tiny_model_path, monkeypatch):
    """conftest points NTP_RL_CACHE at a folder of this session: the user's cache is never read or built."""
    session_cache = models.cache_root()
    assert Path(tiny_model_path) == session_cache / "models" / models.TINY_MODEL_DIRNAME
    monkeypatch.delenv("NTP_RL_CACHE")
    assert models.cache_root() != session_cache  # what the user's cache would have been
    monkeypatch.undo()
    child = subprocess.run(  # the commands tests start see it too
        [sys.executable, "-c", "from ntp_rl.models import cache_root; print(cache_root())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == str(session_cache)


def test_hub_ids_pass_through_and_bad_paths_fail(tmp_path, monkeypatch):
    import huggingface_hub

    # Offline (the tests' HF_HUB_OFFLINE=1) and not in the local cache: the hub id cannot load.
    with pytest.raises(UserError, match="the Hugging Face Hub is unreachable .* no copy in the local cache"):
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    cached = tmp_path / "snapshot" / "config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(cached))
    assert (
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(UserError, match="no such folder"):
        models.resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_model_path(str(tmp_path / "empty"))


def _slow_build(out: Path) -> None:
    (out / "part1").write_text("a")
    time.sleep(0.5)  # a second process arriving now must wait, not see a half-built folder
    (out / "part2").write_text("b")


def _materialise_in_child(cache: str, queue) -> None:
    import os

    os.environ["NTP_RL_CACHE"] = cache
    from ntp_rl import models as child_models

    calls = []

    def build(out):
        calls.append(1)
        _slow_build(out)

    path = child_models._materialise("thing", build)
    queue.put((str(path), sorted(p.name for p in path.iterdir()), len(calls)))


def test_two_processes_materialise_once_without_corruption(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_materialise_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert {r[0] for r in results} == {str(tmp_path / "models" / "thing")}
    for _, files, _ in results:
        assert files == [".ntp_rl_complete", "part1", "part2"]
    assert sum(r[2] for r in results) == 1  # built exactly once
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".thing-")]
    assert leftovers == []


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NTP_RL_CACHE", str(tmp_path))

    def broken(out):
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        models._materialise("broken", broken)
    assert not (tmp_path / "models" / "broken").exists()
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("hook", [True, False])
def test_output_head_gets_a_contiguous_slice(tiny_model_path, hook):
    """A frozen head fed transformers' strided `logits_to_keep` slice must not broadcast its weight.

    Without the pre-hook `torch.matmul` falls back to a batched product over a copied, batch-wide
    weight (`aten::bmm`, batch x vocab x hidden elements); with it, one matrix product (`aten::mm`).
    Both give the same logits.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = models.load_causal_lm(tiny_model_path)
    model.requires_grad_(False)  # as under LoRA or in a merged copy
    head = model.get_output_embeddings()
    if not hook:
        head._forward_pre_hooks.clear()
    ids = torch.randint(0, 1000, (4, 12))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits[:, -1:]
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            logits = model(input_ids=ids, logits_to_keep=1).logits
    head_products = [
        e.key
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::mm", "aten::bmm") and any(head.weight.shape[0] in s for s in e.input_shapes)
    ]
    torch.testing.assert_close(logits, expected)
    assert head_products == (["aten::mm"] if hook else ["aten::bmm"])


def test_generate_runs_with_its_own_attention(tiny_model_path):
    """`generation_attn_implementation`: `generate` (through peft and ntp-rl's own wrappers) runs with it,
    every other pass with `attn_implementation`, also after a `generate` call that failed."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ntp_rl.generation import inverse_cdf_sampling, merged_lora_weights

    model = models.load_causal_lm(str(tiny_model_path), "float32", False, "eager", "sdpa")
    seen: list[str] = []
    attention = model.model.layers[0].self_attn
    hook = attention.register_forward_pre_hook(
        lambda module, args: seen.append(module.config._attn_implementation)
    )
    policy = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with merged_lora_weights(policy), inverse_cdf_sampling(policy):
        policy.generate(input_ids=ids, max_new_tokens=3, do_sample=True, temperature=1.0, min_new_tokens=3)
    assert seen == ["sdpa"] * 3
    seen.clear()
    policy(input_ids=ids)
    assert seen == ["eager"]
    with pytest.raises(ValueError):
        policy.generate(input_ids=ids, max_new_tokens=-1)
    assert model.config._attn_implementation == "eager"

    # A merged copy for sampling (generation.merged_copy deep-copies) generates with its own weights.
    from ntp_rl.generation import merged_copy

    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)  # an adapter that changes the output
    hook.remove()  # not copied with the model
    copy = merged_copy(policy)
    ran: list[tuple[bool, str]] = []
    for layer in (attention, copy.model.layers[0].self_attn):
        layer.register_forward_pre_hook(
            lambda module, args: ran.append((module is attention, module.config._attn_implementation))
        )
    out = copy.generate(input_ids=ids, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert ran == [(False, "sdpa")] * 3  # the copy ran, with its generation attention; not the original
    assert torch.equal(
        out, policy.generate(input_ids=ids, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    )


def test_an_attention_this_machine_cannot_run_is_a_clear_error(tiny_model_path):
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - a machine with flash-attn installed
        pytest.skip("flash-attn is installed here")
    for load, key in [
        (("flash_attention_2", None), "model.attn_implementation"),
        ((None, "flash_attention_2"), "model.generation_attn_implementation"),
    ]:
        with pytest.raises(UserError, match=rf"{key}: 'flash_attention_2' cannot be used here"):
            models.load_causal_lm(str(tiny_model_path), "float32", False, *load)


def test_a_model_that_cannot_switch_attention_is_a_clear_error(tiny_model_path, monkeypatch):
    """transformers only logs a warning where a model's attention cannot change at run time."""
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "_can_set_attn_implementation", classmethod(lambda cls: False))
    with pytest.raises(UserError, match="cannot change its attention at run time"):
        models.load_causal_lm(str(tiny_model_path), "float32", False, "eager", "sdpa")
