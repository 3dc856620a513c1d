"""SFT stage: base model + LoRA, trained with TRL's `SFTTrainer` on prompt/completion data.

Loss is on completions only (TRL's default for prompt/completion data). Eval loss on held-out rows
is measured before and after training, so a run shows what SFT did. Output: `<stage>/adapter/`.
"""

from __future__ import annotations

import logging
from typing import Any

from ntp_rl.config import build_dataclass
from ntp_rl.data import load_rows, to_sft_format
from ntp_rl.models import load_causal_lm, load_tokenizer
from ntp_rl.stages.common import ADAPTER_DIR, StageContext, StageRunner, last_checkpoint, stage_callbacks

logger = logging.getLogger(__name__)

SFT_DEFAULTS: dict[str, Any] = {
    "max_steps": 100,
    "per_device_train_batch_size": 8,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    "logging_steps": 5,
    "save_steps": 50,
    "save_total_limit": None,
    "report_to": "none",
    "max_length": 512,
}


class SftRunner(StageRunner):
    def check(self) -> None:
        """The stage's training rows and held-out rows, loaded and in TRL's SFT shape."""
        data, seed = self.data, self.recipe.run.seed
        self.train = to_sft_format(load_rows(data, data.train_split, seed, self.recipe_dir), self.where)
        self.held_out = None
        if self.stage.eval_examples:  # type: ignore[attr-defined]
            rows = load_rows(data, data.test_split, seed, self.recipe_dir)
            rows = rows.select(range(min(len(rows), self.stage.eval_examples)))  # type: ignore[attr-defined]
            self.held_out = to_sft_format(rows, self.where)
        self.check_trainer_args(**SFT_DEFAULTS)
        if "prompt" in self.train.column_names:  # a prompt alone must leave room for its completion
            self.check_prompts_fit(self.train["prompt"], new_tokens=1)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_sft(ctx, self.train, self.held_out)


def run_sft(ctx: StageContext, train, held_out) -> dict[str, Any]:
    from peft import LoraConfig
    from trl import SFTTrainer

    args = ctx.trainer_args(**SFT_DEFAULTS)
    lora = build_dataclass(LoraConfig, ctx.recipe.model.lora, "model.lora", task_type="CAUSAL_LM")
    tokenizer = load_tokenizer(ctx.base_model_path, ctx.recipe.model.trust_remote_code)
    model = load_causal_lm(
        ctx.base_model_path,
        ctx.dtype,
        ctx.recipe.model.trust_remote_code,
        ctx.recipe.model.attn_implementation,
    )

    callbacks, stop = stage_callbacks(ctx)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    results: dict[str, Any] = {"train_rows": len(train)}
    resume = last_checkpoint(ctx.stage_dir, ctx.is_main_process)
    if held_out is not None and resume is None:
        results["eval_loss_before"] = trainer.evaluate(metric_key_prefix="before")["before_loss"]
    with stop.catching_signals():
        train_output = trainer.train(resume_from_checkpoint=resume)
    stop.raise_if_stopped()  # a checkpoint was saved; the stage is not complete
    results["train_loss"] = train_output.training_loss
    results["global_step"] = trainer.state.global_step
    results["resumed_from"] = resume
    if held_out is not None:
        results["eval_loss_after"] = trainer.evaluate(metric_key_prefix="after")["after_loss"]
    if ctx.is_main_process:
        trainer.model.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR))
        tokenizer.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR))
    trainer.accelerator.wait_for_everyone()
    return results
