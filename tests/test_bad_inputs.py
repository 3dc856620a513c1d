"""The bad-input corpus: every case in tests/bad_inputs/ exits 2 with a message naming the culprit.

Each case is a folder: `recipe.yaml` (often broken on purpose), any data or plug-in files it names,
and `case.yaml`:

    about: what is wrong, in a few words
    args: [recipe.yaml, stages[0].trainer.max_steps=abc]   # after `ntp-rl train` (default: [recipe.yaml])
    expect: [fragments the message must contain]
    subprocess: true   # optional: run as a real `python -m ntp_rl` process, not in-process
    make:              # optional: small model folders built into the case folder first (no binaries
      - {model: models/short, max_position_embeddings: 64, chat_template: true}   # in the corpus)
      - {reward_adapter: rm, base: models/short, trained_on: {hidden_size: 32}}

The case folder is copied to a temporary folder and run from there (so `runs/` and relative paths
land inside it). Before the call, a run folder already exists where the recipe would write (with a
manifest carrying the recipe's own config hash when the recipe loads, so a pipeline that got past
its checks would write into it); afterwards every byte in the case folder, that run included, must
be as it was, and nothing may have been added. Most cases
run in-process through `ntp_rl.cli.main` (a subprocess costs seconds of imports here); the few
marked `subprocess` prove the real exit status and the absence of a traceback end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CORPUS = REPO / "tests" / "bad_inputs"
CASES = sorted(p for p in CORPUS.iterdir() if (p / "case.yaml").is_file())


def _run_folder(work: Path, args: list[str]) -> tuple[Path, str]:
    """Where this invocation would put its run, and the config hash it would carry (if it loads)."""
    from ntp_rl.cli import build_parser
    from ntp_rl.config import load_recipe
    from ntp_rl.errors import UserError

    parsed = build_parser().parse_args(["train", *args])
    try:
        recipe = load_recipe(work / parsed.recipe, parsed.overrides, smoke=parsed.smoke)
    except UserError:
        return work / "runs" / "bad", "0123456789abcdef"
    output_dir = Path(recipe.run.output_dir)
    root = output_dir if output_dir.is_absolute() else work / output_dir
    return root / recipe.run.name, recipe.config_hash()


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _small_model(
    folder: Path, hidden_size: int = 16, max_position_embeddings: int = 512, chat_template: bool = True
):
    """A random one-layer Llama with a byte-level tokenizer (256 bytes + 3 specials): a few KB on disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({special: len(vocab) + i for i, special in enumerate(("<s>", "</s>", "<pad>"))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return model, tokenizer


def _reward_adapter(folder: Path, base: str, trained_on: dict) -> None:
    """A reward-model LoRA adapter (SEQ_CLS) trained on a small model built from `trained_on`, whose
    adapter_config.json names `base` as its base model."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    with tempfile.TemporaryDirectory() as other:
        _, tokenizer = _small_model(Path(other), **trained_on)
        model = LlamaForSequenceClassification.from_pretrained(other, num_labels=1)
    lora = LoraConfig(
        task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["score"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # peft looks for the deleted base's config.json
        get_peft_model(model, lora).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))


def _make(work: Path, items: list[dict]) -> None:
    for item in items:
        item = dict(item)
        if "model" in item:
            _small_model(work / item.pop("model"), **item)
        else:
            _reward_adapter(work / item["reward_adapter"], item["base"], item.get("trained_on", {}))


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder` with its bytes (bytecode caches of plug-ins aside)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


def _existing_run(run_dir: Path, config_hash: str) -> None:
    try:
        run_dir.mkdir(parents=True)
    except OSError:  # the case is an output folder that cannot be made
        return
    manifest = {"name": run_dir.name, "config_hash": config_hash, "stages": {}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (run_dir / "sentinel.txt").write_text("an earlier run's results\n")


def test_corpus_is_large_and_well_formed():
    assert len(CASES) >= 30
    for case_dir in CASES:
        case = yaml.safe_load((case_dir / "case.yaml").read_text())
        assert set(case) <= {"about", "args", "expect", "subprocess", "make"}, case_dir.name
        assert case["about"] and case["expect"], case_dir.name
    assert sum(bool(yaml.safe_load((c / "case.yaml").read_text()).get("subprocess")) for c in CASES) >= 3


@pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_naming_the_culprit(case_dir, tmp_path, monkeypatch, capsys):
    case = yaml.safe_load((case_dir / "case.yaml").read_text())
    args = [str(a) for a in case.get("args") or ["recipe.yaml"]]
    work = tmp_path / "case"
    shutil.copytree(case_dir, work, ignore=shutil.ignore_patterns("case.yaml"))
    _make(work, case.get("make") or [])
    run_dir, config_hash = _run_folder(work, args)
    _existing_run(run_dir, config_hash)
    before = _snapshot(work)

    if case.get("subprocess"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "ntp_rl", "train", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        from ntp_rl.cli import main

        monkeypatch.chdir(work)
        capsys.readouterr()
        status = main(["train", *args])
        out, err = capsys.readouterr()

    assert status == 2, f"exit {status}\n{err[-3000:]}"
    assert "Traceback" not in out + err
    assert err.startswith("ntp-rl: error: "), err[-3000:]
    for fragment in case["expect"]:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert _snapshot(work) == before  # the earlier run, the inputs, and nothing new beside them
