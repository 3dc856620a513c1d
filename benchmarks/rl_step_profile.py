"""One GRPO step of the quickstart, phase by phase, against the step's FLOP-count lower bound.

What it measures: the real ntp-rl rl stage (`ntp_rl.cli.main(["train", recipe])`) on a generated
recipe with one rl stage carrying recipes/quickstart.yaml's rl settings (8 prompts x 4 generations =
32 completions a step, at most 48 new tokens, micro-batches of 16 x 2 accumulated, temperature 1.2,
beta 0, LoRA r16 on all linear layers, reward math_accuracy), the quickstart's model block and data.
The policy is a fresh LoRA adapter on the base, or the SFT adapter given with `--init-adapter PATH`
(a quickstart run's `runs/quickstart/sft/adapter`); the quickstart's prompt filter (sampling done
before step 1) is left out unless `--prompt-filter` keeps it. Each timed step is split into:
- generation:      `trl.GRPOTrainer._generate` (prompt templating, `generate`, decoding);
- reward scoring:  `GRPOTrainer._calculate_rewards`;
- forward (+loss): `GRPOTrainer._compute_loss`, every micro-batch (log-probs, entropies, the loss);
- backward:        `accelerate.Accelerator.backward`, every micro-batch;
- optimizer step:  between the `on_pre_optimizer_step` and `on_optimizer_step` callbacks;
- other:           the step's total minus the phases (padding, advantages, metrics, gradient clipping,
                   the scheduler, zero_grad). A step runs from `on_step_begin` to `on_step_end`; the
                   per-step logging and checkpointing that follow `on_step_end` are outside it.
The methods are wrapped on the classes, so a subclass of GRPOTrainer that ntp-rl may use is timed the
same way (a re-entry guard keeps a subclass that calls `super()` from counting twice). Warm-up steps
are not timed; the table shows the median of each phase over the timed steps, and "other" there is
the median step total minus the phase medians (each timed step's own split is in the JSON).

The FLOP-count lower bound of a phase is its count of matrix-product FLOPs divided by a matmul rate
measured in the same run, on the same machine, at the dtype the run uses and with torch's threads:
the best GFLOP/s of the model's own product shapes (the MLP's up and down projections, the input
gradient through the up projection, the LM head), timed with `ntp_rl.dtypes.round_gflops` before and
after the run (other work on the machine only slows a round, so the best counts), with torch's own
products and, on a CPU, with the oneDNN-packed linear that generation runs (`prepacked_linears`),
which can be faster: the bound is the faster kernel's. The counts, per
sequence of P prompt and C completion tokens (real tokens: padding and the decoding steps of
sequences that already ended are work a step does, but not work it needs):

    N_body = weights of the model's linear layers but the LM head (embeddings are look-ups)
    N_lora = LoRA weights (A and B),   N_head = the LM head's weights (tied or not)
    attention(L) = 4 * layers * (heads * head_dim) * L (L + 1) / 2
                   (the QK^T and attention-times-V products, causal: the token at position t
                   attends to t tokens; softmax, norms, rotary and activations are elementwise
                   and not counted)
    forward(P, C)  = 2 (N_body + N_lora) (P + C) + 2 N_head C + attention(P + C)
                     (logits only where a completion token is predicted, as TRL and `generate` do)
    generation     = forward over the prompt (prefill) and the generated tokens, one sequence per
                     completion (the KV cache makes decoding token by token add up to that), with
                     N_lora = 0: sampling can run on the adapter merged into the weights (ntp-rl's
                     trainer does)
    training forward = forward over prompt + completion of each row the loss is computed on (every
                     completion with TRL's trainer; ntp-rl's skips the rows of zero advantage)
    backward       = forward + 2 N_lora (P + C) + attention(P + C)
                     (LoRA: gradients for the inputs through every frozen weight, one product per
                     weight like the forward; the LoRA weights' own gradients, 2 N_lora per token;
                     attention's backward is two products per forward product)
Reward scoring, the optimizer step (AdamW on the LoRA weights: elementwise) and other have no
matrix products: no bound. The step's bound is generation + forward + backward; "step at X % of its
FLOP bound" is that bound over the measured step. The useful share is the completions whose
advantage is not zero (a group whose completions all score the same teaches nothing) over the
completions generated, beside TRL's `frac_reward_zero_std`.

Run from the repository root (the machine's load moves the figures: say what else was running):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rl_step_profile.py --model tiny --steps 1 --warmup-steps 0
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rl_step_profile.py --steps 3    # the default model
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rl_step_profile.py --init-adapter runs/quickstart/sft/adapter
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/rl_step_profile.py stages.rl.skip_zero_advantage=false

Overrides (`key.path=value`, as for `ntp-rl train`) apply to the generated recipe, whose one stage is
`rl`. The header line prints the settings the run used.

A benchmark, never a timed assert in the tests.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
PHASES = {
    "generation": "generation",
    "reward": "reward scoring",
    "forward": "forward (+loss)",
    "backward": "backward",
    "optimizer": "optimizer step",
}
COUNTED = ("generation", "forward", "backward")  # the phases made of matrix products
RATE_ROUNDS = 3
RATE_ROUND_SECONDS = 0.2


def sync() -> None:
    """Wait for queued GPU work, so that a phase's clock stops when its work is done."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_model_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    from ntp_rl.dtypes import cpu_description

    return cpu_description()


# --------------------------------------------------------------------------------------------
# FLOP counts (see the module docstring)


def model_shape(model) -> dict[str, int]:
    """Weights of the linear layers by kind (body, LoRA, LM head) and the attention's size."""
    head = model.get_output_embeddings()
    counts = {"body": 0, "lora": 0, "head": 0}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kind = "head" if module is head else "lora" if "lora_" in name else "body"
            counts[kind] += module.weight.numel()
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        **counts,
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * head_dim,
    }


def forward_flops(shape: dict[str, int], rows: list[tuple[int, int]], lora: bool = True) -> float:
    """Matrix-product FLOPs of a forward over sequences of (prompt, completion) tokens.

    `lora=False`: the adapter merged into the weights (generation), no LoRA products.
    """
    tokens = sum(p + c for p, c in rows)
    logits = sum(c for _, c in rows)
    return (
        2 * (shape["body"] + (shape["lora"] if lora else 0)) * tokens
        + 2 * shape["head"] * logits
        + attention_flops(shape, rows)
    )


def attention_flops(shape: dict[str, int], rows: list[tuple[int, int]]) -> float:
    pairs = sum((p + c) * (p + c + 1) // 2 for p, c in rows)
    return 4 * shape["layers"] * shape["attention_width"] * pairs


def backward_flops(shape: dict[str, int], rows: list[tuple[int, int]]) -> float:
    tokens = sum(p + c for p, c in rows)
    return forward_flops(shape, rows) + 2 * shape["lora"] * tokens + attention_flops(shape, rows)


def matmul_rate(model_path: str, dtype: str) -> float:
    """Best GFLOP/s of the model's own product shapes at `dtype`, with torch's threads (one timed burst)."""
    import torch.nn.functional as F
    from transformers import AutoConfig

    from ntp_rl.dtypes import round_gflops
    from ntp_rl.generation import _prepacking_works, pack_linear_weight, packed_linear
    from ntp_rl.models import torch_dtype

    config = AutoConfig.from_pretrained(model_path)
    hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    calls = 10 if device == "cuda" else 1  # a GPU runs a few queued products between clock reads

    def repeated(product):
        def call(x, w):
            for _ in range(calls):
                product(x, w)
            sync()

        return call

    generator = torch.Generator().manual_seed(0)

    def operand(*size):
        return torch.randn(*size, generator=generator).to(device=device, dtype=torch_dtype(dtype))

    cases = [  # (product, x, w, FLOPs of one product)
        (F.linear, operand(512, hidden), operand(inner, hidden), 2 * 512 * hidden * inner),  # up
        (F.linear, operand(512, inner), operand(hidden, inner), 2 * 512 * inner * hidden),  # down
        (torch.matmul, operand(512, inner), operand(inner, hidden), 2 * 512 * inner * hidden),  # input grad
        (F.linear, operand(64, hidden), operand(vocab, hidden), 2 * 64 * hidden * vocab),  # LM head
    ]
    if device == "cpu" and _prepacking_works(torch_dtype(dtype)):
        # Generation runs its linear layers on weights packed once for oneDNN (`prepacked_linears`),
        # faster than `F.linear` here; a bound must not be beaten by a kernel the step uses.
        cases += [
            (packed_linear, x, pack_linear_weight(w), flops)
            for product, x, w, flops in list(cases)
            if product is F.linear
        ]
    best = 0.0
    with torch.no_grad():
        for product, x, w, flops in cases:
            call = repeated(product)
            call(x, w)  # warm-up: the first call picks and prepares kernels
            for _ in range(RATE_ROUNDS):
                best = max(best, round_gflops(call, x, w, calls * flops, RATE_ROUND_SECONDS))
    return best


# --------------------------------------------------------------------------------------------
# The clock: callbacks for the step's boundaries and the optimizer, class-level wrappers for the rest


class PhaseClock(TrainerCallback):
    def __init__(self):
        self.steps: list[dict[str, Any]] = []  # every step, warm-up included (its index says which)
        self.current: dict[str, Any] | None = None
        self.busy: set[str] = set()
        self.shape: dict[str, int] | None = None
        self.model_dtype: str | None = None
        self.pending_backward: list[float] = []  # FLOPs of the micro-batches whose backward is next
        self._optimizer_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self.current = {
            "index": state.global_step,
            "seconds": dict.fromkeys(PHASES, 0.0),
            "flops": dict.fromkeys(COUNTED, 0.0),
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "completions": 0,
            "useful_completions": 0,
            "frac_reward_zero_std": None,
            "start": time.perf_counter(),
        }

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        sync()
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        sync()
        if self.current is not None:
            self.current["seconds"]["optimizer"] += time.perf_counter() - self._optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        if self.current is None:
            return
        step = self.current
        step["total"] = time.perf_counter() - step.pop("start")
        step["seconds"]["other"] = step["total"] - sum(step["seconds"].values())
        self.steps.append(step)
        self.current = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        # A step's log comes after its on_step_end, when global_step already counts it.
        if logs and "frac_reward_zero_std" in logs and self.steps:
            if self.steps[-1]["index"] == state.global_step - 1:
                self.steps[-1]["frac_reward_zero_std"] = logs["frac_reward_zero_std"]

    # What the wrapped methods report

    def generated(self, trainer, result) -> None:
        if self.shape is None:
            model = trainer.accelerator.unwrap_model(trainer.model)
            self.shape = model_shape(model)
            self.model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        prompt_ids, completion_ids = result[0], result[1]
        rows = [(len(p), len(c)) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        self.current["flops"]["generation"] += forward_flops(self.shape, rows, lora=False)
        self.current["prompt_tokens"] += sum(p for p, _ in rows)
        self.current["completion_tokens"] += sum(c for _, c in rows)

    def scored(self, output) -> None:
        advantages = output["advantages"]
        self.current["completions"] += advantages.shape[0]
        nonzero = advantages != 0
        self.current["useful_completions"] += int(
            (nonzero if nonzero.dim() == 1 else nonzero.any(dim=1)).sum()
        )

    def loss_computed(self, inputs) -> None:
        prompt = inputs["prompt_mask"].sum(dim=1).tolist()
        completion = inputs["completion_mask"].sum(dim=1).tolist()
        rows = list(zip(prompt, completion, strict=True))
        self.current["flops"]["forward"] += forward_flops(self.shape, rows)
        self.pending_backward.append(backward_flops(self.shape, rows))

    def backward_done(self) -> None:
        if self.pending_backward:
            self.current["flops"]["backward"] += self.pending_backward.pop(0)


def wrap(cls, name: str, clock: PhaseClock, phase: str | None, report=None) -> None:
    """Replace `cls.name` by a version that adds its wall time to `phase` of the open step.

    `report(self, args, result)` hands the call's inputs and result to the clock. Calls outside a step
    (evaluation, the prompt filter) and nested calls of the same method pass through untouched.
    """
    original = getattr(cls, name)
    guard = f"{cls.__name__}.{name}"

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        if clock.current is None or guard in clock.busy:
            return original(self, *args, **kwargs)
        clock.busy.add(guard)
        try:
            sync()
            start = time.perf_counter()
            result = original(self, *args, **kwargs)
            sync()
            if phase is not None:
                clock.current["seconds"][phase] += time.perf_counter() - start
        finally:
            clock.busy.discard(guard)
        if report is not None:
            report(self, args, result)
        return result

    setattr(cls, name, timed)


def install(clock: PhaseClock) -> None:
    import accelerate
    import transformers.trainer
    from trl import GRPOTrainer

    wrap(GRPOTrainer, "_generate", clock, "generation", lambda t, a, r: clock.generated(t, r))
    wrap(GRPOTrainer, "_calculate_rewards", clock, "reward")
    wrap(GRPOTrainer, "_generate_and_score_completions", clock, None, lambda t, a, r: clock.scored(r))
    wrap(GRPOTrainer, "_compute_loss", clock, "forward", lambda t, a, r: clock.loss_computed(a[1]))
    wrap(accelerate.Accelerator, "backward", clock, "backward", lambda t, a, r: clock.backward_done())
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)  # every Trainer built in this process gets it


# --------------------------------------------------------------------------------------------
# The run


def write_recipe(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict]:
    """The quickstart's model, data and rl stage, alone, for warm-up + timed steps, with the overrides."""
    quickstart = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    stage = copy.deepcopy(next(s for s in quickstart["stages"] if s["kind"] == "rl"))
    if not args.prompt_filter:
        stage.pop("prompt_filter", None)
    stage["trainer"].update(
        max_steps=args.warmup_steps + args.steps,
        logging_steps=1,
        save_steps=1_000_000,  # no checkpoint among the steps
    )
    model = {**quickstart["model"], "name_or_path": args.model}
    if args.dtype:
        model["dtype"] = args.dtype
    recipe = {
        "run": {**quickstart["run"], "name": "profile", "output_dir": str(workdir / "runs")},
        "model": model,
        "data": quickstart["data"],
        "stages": [stage],
    }
    from ntp_rl.config import apply_override

    for override in args.overrides:  # ntp-rl's own `key.path=value` overrides, on this recipe
        apply_override(recipe, override)
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path, recipe


def run(args: argparse.Namespace) -> dict:
    from ntp_rl.cli import main as ntp_rl_main
    from ntp_rl.dtypes import resolve_dtype
    from ntp_rl.models import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="rl-step-profile-") as tmp:
        recipe_path, recipe = write_recipe(args, Path(tmp))
        model_path = resolve_model_path(args.model)
        dtype = resolve_dtype(recipe["model"]["dtype"])  # memoised: the run resolves `auto` the same way
        rate_before = matmul_rate(model_path, dtype)
        if args.init_adapter:
            import ntp_rl.stages.rl

            adapter = Path(args.init_adapter).resolve()
            ntp_rl.stages.rl.init_adapter_dir = lambda ctx: adapter  # the rl stage starts from it
        clock = PhaseClock()
        install(clock)
        start = time.perf_counter()
        status = ntp_rl_main(["train", str(recipe_path)])
        run_seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"ntp-rl train exited {status}")
        rate_after = matmul_rate(model_path, dtype)
    if clock.model_dtype != dtype:
        raise SystemExit(f"the run trained in {clock.model_dtype}, the matmul rate was measured in {dtype}")
    timed = [step for step in clock.steps if step["index"] >= args.warmup_steps]
    if len(timed) != args.steps:
        raise SystemExit(f"expected {args.steps} timed steps, got {len(timed)}")
    return {
        "recipe": recipe,
        "dtype": dtype,
        "matmul_gflops": max(rate_before, rate_after),
        "matmul_gflops_before_after": [round(rate_before, 2), round(rate_after, 2)],
        "shape": clock.shape,
        "run_seconds": run_seconds,
        "steps": timed,
    }


def summarise(result: dict) -> dict:
    steps = result["steps"]
    rate = result["matmul_gflops"] * 1e9
    seconds = {phase: statistics.median(s["seconds"][phase] for s in steps) for phase in PHASES}
    total = statistics.median(s["total"] for s in steps)
    seconds["other"] = total - sum(seconds.values())
    flops = {phase: statistics.median(s["flops"][phase] for s in steps) for phase in COUNTED}
    bound = {phase: flops[phase] / rate for phase in COUNTED}
    completions = sum(s["completions"] for s in steps)
    useful = sum(s["useful_completions"] for s in steps)
    zero_std = [s["frac_reward_zero_std"] for s in steps if s["frac_reward_zero_std"] is not None]
    return {
        "seconds": seconds,
        "step_seconds": total,
        "flops": flops,
        "bound_seconds": bound,
        "step_bound_seconds": sum(bound.values()),
        "step_share_of_bound": sum(bound.values()) / total,
        "completions": completions,
        "useful_completions": useful,
        "useful_share": useful / completions if completions else None,
        "frac_reward_zero_std": statistics.fmean(zero_std) if zero_std else None,
        "prompt_tokens": statistics.median(s["prompt_tokens"] for s in steps),
        "completion_tokens": statistics.median(s["completion_tokens"] for s in steps),
    }


def report(args: argparse.Namespace, result: dict, summary: dict) -> None:
    trainer = result["recipe"]["stages"][0]["trainer"]
    batch = trainer["per_device_train_batch_size"] * trainer["gradient_accumulation_steps"]
    shape = result["shape"]
    threads = torch.get_num_threads()
    policy = f"SFT adapter {args.init_adapter}" if args.init_adapter else "a fresh LoRA adapter"
    print(
        f"\nGRPO step profile: model {args.model}, the quickstart's rl settings: {batch // trainer['num_generations']} "
        f"prompts x {trainer['num_generations']} = {batch} completions, max {trainer['max_completion_length']} new "
        f"tokens, micro-batches {trainer['per_device_train_batch_size']} x {trainer['gradient_accumulation_steps']}, "
        f"temperature {trainer['temperature']}, beta {trainer['beta']}; policy {policy}; "
        f"prompt filter {'on' if args.prompt_filter else 'off'}"
        + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
    )
    print(
        f"CPU: {cpu_model_name()}; torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); dtype {result['dtype']}"
        + (f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    before, after = result["matmul_gflops_before_after"]
    print(
        f"matmul rate: {result['matmul_gflops']:.1f} GFLOP/s ({result['dtype']}, the model's product shapes; "
        f"best of {before:.1f} before and {after:.1f} after the run)"
    )
    print(
        f"model: linear weights {shape['body'] / 1e6:.1f} M in the layers, {shape['lora'] / 1e6:.2f} M LoRA, "
        f"{shape['head'] / 1e6:.1f} M LM head; {shape['layers']} layers, attention width {shape['attention_width']}"
    )
    print(
        f"{args.steps} timed step(s) after {args.warmup_steps} warm-up (medians); a step: "
        f"{summary['prompt_tokens']:.0f} prompt + {summary['completion_tokens']:.0f} completion tokens; "
        f"run {result['run_seconds']:.0f} s in all\n"
    )
    print(f"{'phase':<16} {'seconds':>9} {'share':>7} {'GFLOP':>9} {'bound s':>9} {'% of bound':>11}")
    total = summary["step_seconds"]
    for phase, label in {**PHASES, "other": "other"}.items():
        took = summary["seconds"][phase]
        if phase in COUNTED:
            bound = summary["bound_seconds"][phase]
            share = f"{100 * bound / took:>10.1f}%" if took > 0 else f"{'-':>11}"  # a phase skipped
            counted = f"{summary['flops'][phase] / 1e9:>9.1f} {bound:>9.3f} {share}"
        else:
            counted = f"{'-':>9} {'-':>9} {'-':>11}"
        print(f"{label:<16} {took:>9.3f} {100 * took / total:>6.1f}% {counted}")
    step_flops = sum(summary["flops"].values())
    print(
        f"{'step':<16} {total:>9.3f} {100.0:>6.1f}% {step_flops / 1e9:>9.1f} "
        f"{summary['step_bound_seconds']:>9.3f} {100 * summary['step_share_of_bound']:>10.1f}%"
    )
    print(f"\nstep at {100 * summary['step_share_of_bound']:.1f} % of its FLOP bound")
    zero_std = summary["frac_reward_zero_std"]
    print(
        f"useful completions (non-zero advantage): {summary['useful_completions']} / {summary['completions']}"
        f" = {100 * summary['useful_share']:.1f} %; frac_reward_zero_std "
        + ("-" if zero_std is None else f"{zero_std:.3f}")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", help="tiny (quick), default (the real number), or a folder"
    )
    parser.add_argument("--dtype", default=None, help="override the quickstart's model.dtype (auto)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    parser.add_argument("--init-adapter", help="start the policy from this adapter folder (the SFT adapter)")
    parser.add_argument("--prompt-filter", action="store_true", help="keep the quickstart's prompt filter")
    parser.add_argument("--json", help="also write the numbers (per step and summary) as JSON here")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="recipe overrides as for ntp-rl train, e.g. stages.rl.skip_zero_advantage=false",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup_steps < 0:
        parser.error("--steps must be >= 1 and --warmup-steps >= 0")
    if args.init_adapter and not (Path(args.init_adapter) / "adapter_config.json").is_file():
        parser.error(f"--init-adapter {args.init_adapter}: no adapter_config.json there")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args)
    summary = summarise(result)
    report(args, result, summary)
    if args.json:
        payload = {"settings": vars(args), **result, "summary": summary}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
