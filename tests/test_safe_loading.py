"""Safe loading: no pickles from model or adapter folders, YAML without code, confined names."""

from __future__ import annotations

import ast
import json

import pytest

from ntp_rl.errors import UserError
from tests.conftest import REPO


def _adapter_folder(path, weights: str):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    (path / weights).write_bytes(b"not inspected")
    return path


def test_pickled_adapter_is_refused_before_peft_sees_it(tmp_path):
    from ntp_rl.models import check_adapter_weights

    check_adapter_weights(_adapter_folder(tmp_path / "good", "adapter_model.safetensors"), "x")
    with pytest.raises(UserError, match=r"stages\[2\]: .*only pickled weights \(adapter_model.bin\)"):
        check_adapter_weights(_adapter_folder(tmp_path / "bad", "adapter_model.bin"), "stages[2]")


def test_export_refuses_a_pickled_adapter(tmp_path, capsys):
    from ntp_rl.cli import main

    stage = tmp_path / "runs" / "r" / "sft"
    _adapter_folder(stage / "adapter", "adapter_model.bin")
    assert main(["export", str(stage), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "only pickled weights" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_model_folder_with_pickled_weights_only_is_refused(tmp_path):
    from ntp_rl.models import check_model_reference

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="no safetensors weights .* it has pytorch_model.bin"):
        check_model_reference(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")  # present, but not safetensors inside
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        check_model_reference(str(tmp_path / "m"))
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(UserError, match="has no chat template"):
        check_model_reference(str(tmp_path / "m"))
    check_model_reference(str(tmp_path / "m"), chat_template=False)
    (tmp_path / "m" / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    check_model_reference(str(tmp_path / "m"))


def test_no_unsafe_loaders_in_the_code():
    """yaml.safe_load only; no pickle.load / torch.load of files (TRL's own resume uses weights_only)."""
    offenders = []
    for path in [*(REPO / "ntp_rl").rglob("*.py"), *(REPO / "rewards").rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = f"{node.value.id}.{node.attr}"
                if name in {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "torch.load"}:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert offenders == []


def test_model_loader_asks_for_safetensors(monkeypatch):
    import transformers

    from ntp_rl import models

    seen = {}

    class FakeModel:
        def get_output_embeddings(self):
            return None

    model = FakeModel()

    def fake(path, **kwargs):
        seen.update(kwargs)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    assert models.load_causal_lm("somewhere") is model
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_eval_and_rewards_check_refuse_a_pickled_adapter_before_loading_a_model(tmp_path):
    from ntp_rl.checkpoints import Checkpoint, LoadedGroup
    from ntp_rl.rewards_check import Policy, load_policy

    adapter = _adapter_folder(tmp_path / "a", "adapter_model.bin")
    missing_base = str(tmp_path / "no-model")  # would fail differently if a model load were tried
    member = Checkpoint(label="sft", spec="x", base=missing_base, adapter=adapter)
    with pytest.raises(UserError, match="checkpoint 'sft': .*only pickled weights"):
        LoadedGroup(missing_base, [member], "float32", False)
    with pytest.raises(UserError, match="--model: .*only pickled weights"):
        load_policy(Policy(base=missing_base, adapter=adapter, dtype="float32", label="p"), False)
