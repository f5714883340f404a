"""float32 against bfloat16 matrix products on this machine: the figure `model.dtype: auto` rests on.

    python -m bench.matmul

One 2272×576 @ 576×1536 product (a batch of 32 SNLI prompts through an MLP projection of
SmolLM2-135M), 3 warm-up and 20 timed repeats per dtype, on torch's threads.
"""

from __future__ import annotations

import time

import torch

from hpcnli.model.loading import fast_bf16


def gflops(dtype: torch.dtype, m: int = 2272, k: int = 576, n: int = 1536, repeats: int = 20) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * m * k * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = cpuinfo.read()
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu]
    fp32, bf16 = gflops(torch.float32), gflops(torch.bfloat16)
    print(
        f"CPU flags: {', '.join(flags) or 'neither amx_bf16 nor avx512_bf16'}; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}"
    )
    print(
        f"float32 {fp32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s: bf16 is {bf16 / fp32:.2f}x float32; "
        f"fast_bf16() = {fast_bf16()}"
    )


if __name__ == "__main__":
    main()
