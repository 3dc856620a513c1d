"""float32 vs bfloat16 matrix products on this CPU: what `model.dtype: auto` decides on.

Prints GFLOP/s of both dtypes and their ratio (bf16 / fp32; above 1 = bf16 faster) with 1 thread
and with N threads (default: torch's own count), for the two products a LoRA training step runs
through every frozen weight, each on square operands:
- `x @ w.T`: nn.Linear's forward (and generation's);
- `x @ w`:   the backward product for the layer's input;
- `probe`:   both at once at 256, the start-up probe of `ntp_rl.dtypes` (`probe_cpu`), and what
  `auto` would choose (bf16 where it is >= BF16_MARGIN times as fast, with N threads and with 1).
Each figure is the best of a few timed rounds (other work on the machine only slows a round).

Run from the repository root, with nothing else running if you want clean figures:

    .venv/bin/python benchmarks/matmul_dtype.py                 # 1 thread and torch's default
    .venv/bin/python benchmarks/matmul_dtype.py --threads 1 4   # chosen thread counts

A benchmark, never a timed assert in the tests.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from ntp_rl.dtypes import bf16_pays, cpu_description, probe_cpu, round_gflops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PRODUCTS = {
    "x @ w.T": lambda x, w: F.linear(x, w),
    "x @ w": lambda x, w: torch.matmul(x, w),
}


def gflops(product, dtype: torch.dtype, size: int, rounds: int, round_seconds: float) -> float:
    generator = torch.Generator().manual_seed(0)
    x, w = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    product(x, w)  # warm-up
    return max(round_gflops(product, x, w, 2 * size**3, round_seconds) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and torch's count")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=0.3)
    args = parser.parse_args()
    threads = args.threads or sorted({1, torch.get_num_threads()})

    print(f"CPU: {cpu_description()}; torch {torch.__version__}; python {platform.python_version()}")
    print(
        f"{'threads':>7}  {'product':<8} {'size':>5}  {'float32':>8}  {'bfloat16':>8}  {'bf16/fp32':>9}   GFLOP/s"
    )
    with torch.no_grad():
        for count in threads:
            torch.set_num_threads(count)
            for name, product in PRODUCTS.items():
                for size in args.sizes:
                    rates = {
                        d: gflops(product, dtype, size, args.rounds, args.round_seconds)
                        for d, dtype in DTYPES.items()
                    }
                    ratio = rates["bfloat16"] / rates["float32"]
                    print(
                        f"{count:>7}  {name:<8} {size:>5}  {rates['float32']:>8.2f}  {rates['bfloat16']:>8.2f}  {ratio:>9.3f}"
                    )
            start = time.perf_counter()
            probe = probe_cpu(count)  # what `auto` measures with `count` threads (and with 1)
            seconds = time.perf_counter() - start
            rates = probe["gflops"]
            choice = "bfloat16" if bf16_pays(probe) else "float32"
            print(
                f"{count:>7}  {'probe':<8} {256:>5}  {rates['float32']:>8.2f}  {rates['bfloat16']:>8.2f}  "
                f"{rates['bfloat16'] / rates['float32']:>9.3f}   -> auto = {choice} (probe took {seconds:.2f} s)"
            )


if __name__ == "__main__":
    main()
