"""`ntp-rl export`: merge a stage's LoRA adapter into its base and write a plain model folder.

The result (safetensors, tokenizer, chat template) loads with `AutoModelForCausalLM.from_pretrained`
and in vLLM, with no peft. A reward_model stage (a SEQ_CLS adapter) exports as a one-label
`...ForSequenceClassification` folder, which an rl stage can name as `reward_model:`. The target folder must not exist: nothing is overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ntp_rl.errors import UserError
from ntp_rl.stages.common import ADAPTER_DIR


def adapter_folder(path: Path) -> Path:
    """Accept a stage folder (runs/x/sft) or its adapter folder (runs/x/sft/adapter)."""
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise UserError(f"{path}: no LoRA adapter here (expected {path / ADAPTER_DIR}/adapter_config.json)")


def export_stage(stage_dir: Path, out: Path) -> Path:
    adapter = adapter_folder(stage_dir)
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new folder (exports never overwrite)")
    from peft import PeftModel

    from ntp_rl.models import check_adapter_weights, check_model_reference, load_causal_lm, load_tokenizer

    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{adapter}/adapter_config.json: no base_model_name_or_path; cannot tell the base model"
        )
    check_adapter_weights(adapter, str(stage_dir))
    check_model_reference(base, chat_template=False)  # merging needs no chat template
    tokenizer = load_tokenizer(str(adapter))
    if json.loads((adapter / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS":
        from ntp_rl.models import load_sequence_classifier

        model = load_sequence_classifier(base, dtype="float32", pad_token_id=tokenizer.pad_token_id)
    else:
        model = load_causal_lm(base, dtype="float32")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
