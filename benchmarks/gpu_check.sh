#!/usr/bin/env bash
# The quickstart on one NVIDIA GPU in at most 8 minutes: its SFT, then a few GRPO steps from that
# adapter with transformers' generate and with TRL's vLLM (use_vllm: true, vllm_mode: colocate).
# Prints seconds per step and tokens per second for each, from the stages' metrics.jsonl.
#
# Run from the repository root, after the set-up of docs/install.md (vLLM: `pip install 'trl[vllm]'`):
#
#   bash benchmarks/gpu_check.sh
#   SFT_STEPS=20 RL_STEPS=3 KEEP=1 bash benchmarks/gpu_check.sh   # smaller budgets; keep the run folder
#
# How: one run folder in a temporary directory (--output-dir) and three calls of
# `python -m ntp_rl train recipes/quickstart.yaml --stage NAME` (the same as `ntp-rl train`) with the
# same overrides, so that the later stages find the first one's adapter:
#   sft      SFT_STEPS steps (default: the recipe's 60);
#   rl       RL_STEPS GRPO steps (default 5) without the prompt filter (its sampling before step 1 is
#            not a step), generation by transformers;
#   rl_vllm  the same rl stage with vLLM, put by an override where the eval stage was, starting from
#            the sft adapter (init_from: sft), so both rl stages start from the same policy.
# Each call runs under `timeout` with what is left of BUDGET_S (480 s; TERM first, so the stage
# saves after its current step, then KILL GRACE_S later). A stage cut short reports the steps it
# logged. Without a GPU it says so and exits 0; without an importable vllm it runs sft and rl and
# says the vLLM half was skipped. Exit 1 when a stage fails otherwise than by the time limit.
#
# A benchmark, never a timed assert in the tests (tests/test_benchmarks.py checks the no-GPU exit).
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
SFT_STEPS="${SFT_STEPS:-60}"
RL_STEPS="${RL_STEPS:-5}"
BUDGET_S="${BUDGET_S:-480}"
GRACE_S="${GRACE_S:-20}"
START=$SECONDS

# ---- a GPU, or nothing to do
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check: needs a machine with an NVIDIA GPU (nvidia-smi is missing or lists no GPU); nothing run."
    exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: needs a GPU that torch can use (torch.cuda.is_available() is false in $PY: a CPU build of torch?); nothing run."
    exit 0
fi
if VLLM_ERROR="$("$PY" -c 'import vllm' 2>&1)"; then
    HAVE_VLLM=1
else
    HAVE_VLLM=0
    VLLM_ERROR="$(tail -n 1 <<<"$VLLM_ERROR")"
fi

WORK="$(mktemp -d -t ntp-rl-gpu-check-XXXXXX)"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi

# ---- the overrides, the same for every call (one config, one run folder)
OVERRIDES=(
    "stages.sft.trainer.max_steps=$SFT_STEPS"
    "stages.rl.trainer.max_steps=$RL_STEPS"
    "stages.rl.prompt_filter=null"
)
STAGES=(sft rl)
if [[ $HAVE_VLLM == 1 ]]; then
    # The quickstart's rl stage again, as JSON (a YAML value), with vLLM and the same budget.
    VLLM_STAGE="$("$PY" - "$RL_STEPS" <<'EOF'
import json, sys
import yaml
recipe = yaml.safe_load(open("recipes/quickstart.yaml", encoding="utf-8"))
stage = next(s for s in recipe["stages"] if s["kind"] == "rl")
stage.pop("prompt_filter", None)
stage.update(name="rl_vllm", init_from="sft")
stage["trainer"].update(max_steps=int(sys.argv[1]), use_vllm=True, vllm_mode="colocate")
print(json.dumps(stage))
EOF
)" || { echo "gpu_check: could not read recipes/quickstart.yaml"; exit 1; }
    # Last: the overrides above name the rl stage by kind, which is one stage only until this one.
    OVERRIDES+=("stages[2]=$VLLM_STAGE")  # replaces the eval stage, not run here
    STAGES+=(rl_vllm)
fi

# ---- the stages, each under what is left of the budget
declare -A STATUS
FAILED=0
caps=([0]=150 [1]=120 [2]=100000)  # seconds at most per stage: sft, rl, then whatever is left for rl_vllm
for i in "${!STAGES[@]}"; do
    stage="${STAGES[$i]}"
    if (( FAILED )); then
        STATUS[$stage]="not run (a stage failed)"
        continue
    fi
    left=$(( BUDGET_S - (SECONDS - START) - GRACE_S - 15 ))  # 15 s kept for the summary
    limit=$(( left < caps[i] ? left : caps[i] ))
    if (( limit < 30 )); then
        STATUS[$stage]="skipped (the ${BUDGET_S} s budget is spent)"
        continue
    fi
    echo "gpu_check: $stage (at most ${limit} s) ..."
    timeout -k "$GRACE_S" "$limit" "$PY" -m ntp_rl train recipes/quickstart.yaml --output-dir "$WORK" \
        --stage "$stage" "${OVERRIDES[@]}" >"$WORK/$stage.log" 2>&1
    code=$?
    case $code in
        0) STATUS[$stage]="complete" ;;
        124 | 137) STATUS[$stage]="cut short at ${limit} s" ;;
        *)
            STATUS[$stage]="failed (exit $code)"
            FAILED=1
            echo "gpu_check: $stage failed (exit $code); the end of its log ($WORK/$stage.log):"
            tail -n 25 "$WORK/$stage.log"
            ;;
    esac
done

# ---- the summary, from each stage's metrics.jsonl and the manifest's resolved config
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1 | sed 's/^/GPU: /'
STATUS_ARGS=()
for stage in "${STAGES[@]}"; do STATUS_ARGS+=("$stage" "${STATUS[$stage]}"); done
"$PY" - "$WORK/quickstart" "${STATUS_ARGS[@]}" <<'EOF'
import json, statistics, sys
from importlib import metadata
from pathlib import Path

run_dir, pairs = Path(sys.argv[1]), sys.argv[2:]
manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
stages = {s.get("name") or s["kind"]: s for s in manifest.get("config", {}).get("stages", [])}


def version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


print(f"torch {version('torch')}, trl {version('trl')}, vllm {version('vllm')}; "
      f"dtype {manifest.get('dtype', {}).get('resolved', '?')}; run folder {run_dir}")
print(f"{'stage':<9} {'status':<28} {'steps':>5} {'s/step':>8} {'TRL step_time':>13} {'tokens/s':>10}")


def median(values):
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


for name, status in zip(pairs[::2], pairs[1::2]):
    path = run_dir / name / "metrics.jsonl"
    logs = [json.loads(line) for line in path.open()] if path.is_file() else []
    steps = [r for r in logs if "loss" in r and "time" in r]
    trainer = stages.get(name, {}).get("trainer", {})
    done = steps[-1]["step"] if steps else 0
    # Seconds per step: the wall clock between logged steps, the first logged step left out (it
    # carries start-up: compilation, vLLM's first weight sync).
    pairs_of_steps = list(zip(steps, steps[1:]))
    per_step = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in pairs_of_steps]
    seconds = median(per_step)
    trl_time = median([r["step_time"] for r in steps[1:] if "step_time" in r])
    if name == "sft":  # trained tokens (SFTTrainer's cumulative num_tokens) per second
        rates = [(b["num_tokens"] - a["num_tokens"]) / (b["time"] - a["time"])
                 for a, b in pairs_of_steps if "num_tokens" in a and "num_tokens" in b and b["time"] > a["time"]]
        kind = "trained"
    else:  # generated tokens per second: completions a step x their mean length / seconds per step
        completions = trainer.get("per_device_train_batch_size", 0) * trainer.get("gradient_accumulation_steps", 1)
        rates = [completions * b["completions/mean_length"] * (b["step"] - a["step"]) / (b["time"] - a["time"])
                 for a, b in pairs_of_steps if "completions/mean_length" in b and b["time"] > a["time"]]
        kind = "generated"
    rate = median(rates)
    print(f"{name:<9} {status:<28} {done:>5} {fmt(seconds, '8.2f')} {fmt(trl_time, '13.2f')} "
          f"{fmt(rate, '10.0f')} {kind if rate is not None else ''}".rstrip())
EOF
if [[ $HAVE_VLLM == 0 ]]; then
    echo "vLLM: skipped (vllm cannot be imported here: ${VLLM_ERROR:-unknown error}); pip install 'trl[vllm]' to compare"
fi
echo "gpu_check: $(( SECONDS - START )) s in all"
exit $FAILED
