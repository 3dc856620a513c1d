"""`prepacked_linears`: linear layers on weights laid out once for oneDNN, for generation on a CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ntp_rl import generation
from ntp_rl.generation import Decoding, _prepacking_works, prepacked_linears

pytestmark = pytest.mark.skipif(
    not _prepacking_works(torch.float32), reason="no oneDNN packed linear in this torch build"
)


def _tiny(tiny_model_path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=dtype).eval()


def _linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_the_same_logits_inside_and_every_layer_restored(tiny_model_path, dtype, tolerance):
    model = _tiny(tiny_model_path, dtype)
    ids = torch.randint(100, 4000, (3, 17))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with prepacked_linears(model):
            assert all("forward" in m.__dict__ for m in _linears(model))  # every linear layer packed
            packed = model(input_ids=ids).logits
    torch.testing.assert_close(packed.float(), plain.float(), rtol=tolerance, atol=tolerance)
    assert not any("forward" in m.__dict__ for m in _linears(model))  # the class's forward is back


def test_a_pass_that_needs_gradients_runs_plain_linear(tiny_model_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        _tiny(tiny_model_path, torch.float32),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    ids = torch.randint(100, 4000, (2, 9))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    want = grads()
    with prepacked_linears(model):
        got = grads()
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_layers_with_their_own_forward_or_unsupported_machines_are_left_alone(tiny_model_path, monkeypatch):
    model = _tiny(tiny_model_path, torch.float32)
    hooked = _linears(model)[0]
    own = hooked.forward
    hooked.forward = own  # as accelerate's hooks set it
    with prepacked_linears(model):
        assert hooked.__dict__["forward"] is own
        assert all("forward" in m.__dict__ for m in _linears(model)[1:])
    assert hooked.__dict__["forward"] is own

    monkeypatch.setattr(generation, "_prepacking_works", lambda dtype: False)
    with prepacked_linears(model):
        assert not any("forward" in m.__dict__ for m in _linears(model)[1:])


@pytest.mark.parametrize(
    "decoding", [Decoding(max_new_tokens=12), Decoding(4, 1.2, max_new_tokens=12, seed=3)]
)
def test_generate_writes_the_same_completions(tiny_model_path, monkeypatch, decoding):
    from transformers import AutoTokenizer

    model = _tiny(tiny_model_path, torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["What is 2 + 3?", "A farmer had 12 sheep and sold 5. How many are left?", "Count to five."]
    packed = generation.generate(model, tokenizer, prompts, decoding, batch_size=8)
    monkeypatch.setattr(generation, "prepacked_linears", lambda model: contextlib.nullcontext(model))
    plain = generation.generate(model, tokenizer, prompts, decoding, batch_size=8)
    assert [g.token_ids for g in packed] == [g.token_ids for g in plain]
