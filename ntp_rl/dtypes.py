"""`model.dtype: auto`: the weights' dtype that is fastest on this machine, measured once and cached.

* On a GPU: bfloat16 where `torch.cuda.is_bf16_supported()`, else float32 (float16 trains only with
  loss scaling, and its narrow range overflows where bf16 and fp32 do not: float32 is the safe choice).
* On a CPU: bfloat16 only where a short matrix-product probe finds it at least `BF16_MARGIN` times as
  fast as float32, with the threads torch will use and with one (`probe_cpu`). A CPU without bf16
  matrix instructions (AVX512-BF16, AMX) runs bf16 products through slow conversion paths, many
  times slower than float32, and the CPU's model name does not tell (the CPU recipes were tuned in
  bf16 on an "AMD EPYC"; on another "AMD EPYC" bf16 is far slower than float32: docs/LOG.md), so it
  is measured.
* An explicit float32 / bfloat16 / float16 is used as it is.

The probe takes a fraction of a second; its rates are cached per machine in `<cache>/dtype_probe.json`
(the model cache, `ntp_rl.models.cache_root`), keyed by the CPU (model name, family, model, stepping
and a hash of its flags), the torch version and the thread count, and the choice is memoised in the
process. A cache file that does not parse is measured over, not an error. Several processes of one
run must agree (a noisy probe could split them): the pipeline resolves on the main process and hands
the choice to the others with `use_dtype_choice`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import time
from typing import Any

from ntp_rl.common import utc_now, write_json_atomic
from ntp_rl.models import cache_root

logger = logging.getLogger(__name__)

EXPLICIT_DTYPES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = (*EXPLICIT_DTYPES, "auto")
CACHE_FILE = "dtype_probe.json"
CACHE_FORMAT = 1
# bf16 must be clearly faster to be chosen on a CPU: it rounds weights and activations to 8
# mantissa bits, which is worth it for speed only, and the probe's timings are noisy.
BF16_MARGIN = 1.2
# The probe: a frozen linear layer's forward product (x @ w.T, as nn.Linear runs it) and its
# backward product for the input (g @ w), the two a LoRA training step runs through every base
# weight; the two layouts take different kernels, and on some CPUs only one of them is fast in bf16.
PROBE_SIZE = 256  # a square operand; large enough to reach the blocked kernels, small enough to be quick
PROBE_ROUNDS = 3  # dtypes alternate; the best round of each counts (other work on the machine only slows)
PROBE_ROUND_SECONDS = 0.02  # repeat within a round until this long, to read the clock over many calls

# The choice per machine key, for this process (the pipeline's non-main ranks get the main's).
_CHOICES: dict[str, dict[str, Any]] = {}


@functools.lru_cache(maxsize=1)
def cpu_description() -> str:
    """The CPU as /proc/cpuinfo names it (model name, family, model, stepping, a hash of its flags).

    The model name alone can be the same for different CPUs (a virtual machine may say just "AMD
    EPYC"); the flags say which instruction sets, bf16 ones included, the CPU offers.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = fields.get("flags") or fields.get("Features")  # x86 / ARM
    details = [f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields]
    if flags:
        details.append("flags " + hashlib.sha256(flags.encode()).hexdigest()[:8])
    return f"{name} ({', '.join(details)})" if details else name


def machine_key() -> str:
    """What a cached probe result is valid for: this CPU, this torch and the threads torch uses now."""
    import torch

    threads = torch.get_num_threads()
    return f"{cpu_description()} | torch {torch.__version__} | {threads} thread{'s' if threads != 1 else ''}"


def round_gflops(call, x, w, flops_per_call: float, round_seconds: float) -> float:
    """GFLOP/s of `call(x, w)` repeated for `round_seconds` (one timed round; the clock is read over many calls)."""
    calls, start = 0, time.perf_counter()
    while True:
        call(x, w)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= round_seconds:
            return flops_per_call * calls / elapsed / 1e9


def measure_matmul_gflops(
    threads: int | None = None,
    size: int = PROBE_SIZE,
    rounds: int = PROBE_ROUNDS,
    round_seconds: float = PROBE_ROUND_SECONDS,
) -> dict[str, float]:
    """float32 and bfloat16 GFLOP/s of the probe's products (see PROBE_SIZE) with `threads` (default: torch's)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    x32, w32 = (torch.randn(size, size, generator=generator) for _ in range(2))
    operands = {"float32": (x32, w32), "bfloat16": (x32.bfloat16(), w32.bfloat16())}
    flops_per_call = 2 * (2 * size**3)  # two products of size x size by size x size

    def call(x, w):
        F.linear(x, w)  # forward: x @ w.T
        torch.matmul(x, w)  # backward for the input: g @ w

    best = dict.fromkeys(operands, 0.0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with torch.no_grad():
            for x, w in operands.values():
                call(x, w)  # warm-up: the first call picks and prepares kernels
            for _ in range(rounds):
                for name, (x, w) in operands.items():
                    best[name] = max(best[name], round_gflops(call, x, w, flops_per_call, round_seconds))
    finally:
        torch.set_num_threads(previous)
    return {name: round(rate, 2) for name, rate in best.items()}


def probe_cpu(threads: int) -> dict[str, Any]:
    """The rates `auto` decides on: with `threads`, and with one thread where `threads` > 1.

    On a machine whose cores other work keeps busy, a multi-threaded float32 product can lose most
    of its speed to threads waiting on each other while a bf16 product, on a slower and less
    parallel path, loses less, so bf16 can look faster there than it is. One thread is not fooled
    that way; a bf16 unit that pays shows on one core as on many.
    """
    rates = {"gflops": measure_matmul_gflops(threads)}
    if threads > 1:
        rates["gflops_1_thread"] = measure_matmul_gflops(1)
    return rates


def _rates(entry: Any, field: str) -> dict[str, float] | None:
    rates = entry.get(field) if isinstance(entry, dict) else None
    try:
        rates = {name: float(rates[name]) for name in ("float32", "bfloat16")}  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    return rates if all(rate > 0 for rate in rates.values()) else None


def _usable(entry: Any, threads: int) -> bool:
    """Whether a cache entry holds every rate `probe_cpu(threads)` measures."""
    return _rates(entry, "gflops") is not None and (
        threads == 1 or _rates(entry, "gflops_1_thread") is not None
    )


def bf16_pays(probe: dict[str, Any]) -> bool:
    """bf16 at least BF16_MARGIN times as fast as float32 in every measurement of `probe`."""
    measured = [_rates(probe, field) for field in ("gflops", "gflops_1_thread") if field in probe]
    return all(r is not None and r["bfloat16"] >= BF16_MARGIN * r["float32"] for r in measured)


def _read_cache() -> dict[str, Any]:
    path = cache_root() / CACHE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); measuring again", path, exc)
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or not isinstance(data.get("machines"), dict)
    ):
        logger.warning("%s: not a dtype probe cache of format %d; measuring again", path, CACHE_FORMAT)
        return {}
    return data["machines"]


def _write_cache(machines: dict[str, Any]) -> None:
    path = cache_root() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"format": CACHE_FORMAT, "machines": machines})
    except OSError as exc:  # a read-only cache: measure again next time, nothing worse
        logger.warning("could not write %s (%s); the dtype probe will run again next time", path, exc)


def _cpu_choice(key: str) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    base = {"device": "cpu", "machine": key, "threads": threads}
    machines = _read_cache()
    cached = _usable(machines.get(key), threads)
    if cached:
        probe = {
            field: _rates(machines[key], field)
            for field in ("gflops", "gflops_1_thread")
            if field in machines[key]
        }
    else:
        start = time.perf_counter()
        try:
            probe = probe_cpu(threads)
        except Exception as exc:  # e.g. a torch build without CPU bf16 products: float32 it is
            logger.warning("the dtype probe failed (%s: %s); using float32", type(exc).__name__, exc)
            error = f"{type(exc).__name__}: {exc}"[:300]
            return {"requested": "auto", "resolved": "float32", **base, "probe_error": error}
        probe["probe_seconds"] = round(time.perf_counter() - start, 3)
        machines[key] = {**probe, "measured_at": utc_now()}
        _write_cache(machines)
    resolved = "bfloat16" if bf16_pays(probe) else "float32"
    return {"requested": "auto", "resolved": resolved, **base, **probe, "cached": cached}


def _gpu_choice() -> dict[str, Any]:
    import torch

    supported = torch.cuda.is_bf16_supported()
    return {
        "requested": "auto",
        "resolved": "bfloat16" if supported else "float32",
        "device": f"cuda: {torch.cuda.get_device_name()}",
        "bf16_supported": supported,
    }


def dtype_choice(requested: str) -> dict[str, Any]:
    """What `requested` (a model.dtype) resolves to here, and why: the record a manifest keeps.

    Explicit dtypes pass through; `auto` is resolved once per process and machine key.
    """
    if requested in EXPLICIT_DTYPES:
        return {"requested": requested, "resolved": requested}
    if requested != "auto":
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {requested!r}")
    import torch

    key = "cuda" if torch.cuda.is_available() else machine_key()
    if key not in _CHOICES:
        _CHOICES[key] = _gpu_choice() if key == "cuda" else _cpu_choice(key)
    return _CHOICES[key]


def resolve_dtype(requested: str) -> str:
    """float32 / bfloat16 / float16 for a model.dtype (`auto` measured, see the module docstring)."""
    return dtype_choice(requested)["resolved"]


def use_dtype_choice(choice: dict[str, Any]) -> None:
    """Adopt another process's resolution of `auto` in this one (every rank of a run trains alike)."""
    import torch

    if choice.get("requested") == "auto":
        _CHOICES["cuda" if torch.cuda.is_available() else machine_key()] = choice


def describe_choice(choice: dict[str, Any]) -> str:
    """One line for the log, e.g. 'model.dtype auto -> float32 (CPU matmul, 1 thread: float32 58, bfloat16 2 GFLOP/s; cached)'."""
    text = f"model.dtype {choice['requested']} -> {choice['resolved']}"
    if "gflops" in choice:
        parts = []
        for field, threads in (("gflops", choice["threads"]), ("gflops_1_thread", 1)):
            if field in choice:
                rates = ", ".join(f"{name} {rate:g}" for name, rate in choice[field].items())
                parts.append(f"{threads} thread{'s' if threads != 1 else ''}: {rates} GFLOP/s")
        source = "cached" if choice.get("cached") else f"measured in {choice.get('probe_seconds', 0):g} s"
        text += f" (CPU matmul, {'; '.join(parts)}; {source})"
    elif "probe_error" in choice:
        text += f" (the probe failed: {choice['probe_error']})"
    elif "device" in choice:
        support = "supports" if choice.get("bf16_supported") else "does not support"
        text += f" ({choice['device']} {support} bf16)"
    return text
