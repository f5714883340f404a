"""How fast float32 evaluation multiplies matrices, and why its predictions stay float32's.

A float32 model scores a GPU batch without tensor cores unless float32 products may round their inputs:
TF32 (10-bit mantissa, float32 accumulation; Ampere and later) runs them on tensor cores, about 8x float32's
rate on an H100/H200. The CPU's counterpart is bf16 products (7-bit mantissa, AMX or AVX512-BF16).

Rounded products move label-word scores a little, so a pair whose two best scores are closer than
eval.rescore_margin nats is scored again in full float32 and keeps those scores: a prediction can change
only where rounding moved a score by more than half the margin, and each shard records how many pairs were
re-scored, how many changed, and the largest shift seen (bench/eval_precision.py measures the agreement
with full float32 on SNLI).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from hpcnli.model.errors import ModelError

MATMUL = ("auto", "float32", "tf32", "bf16")
_BACKEND_SETTING = {"float32": "ieee", "tf32": "tf32", "bf16": "bf16"}
_SUPPORTED = {"cuda": ("float32", "tf32"), "cpu": ("float32", "bf16")}


def tf32_capable(device: torch.device) -> bool:
    """Tensor cores that take TF32: compute capability 8.0 and later (A100, H100, H200, L40S...)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def eval_matmul(choice: str, device: torch.device) -> str:
    """The float32 product precision of an eval stage on `device`. auto: tf32 on a GPU that has it, else
    float32 (a CPU's bf16 products are faster on AMX CPUs only: chosen by name, never by default)."""
    if choice == "auto":
        return "tf32" if tf32_capable(device) else "float32"
    if choice not in _SUPPORTED.get(device.type, ("float32",)):
        raise ModelError(
            f"eval.matmul {choice!r} is not available on {device.type}: use "
            f"{' or '.join(_SUPPORTED.get(device.type, ('float32',)))} (or auto)"
        )
    if choice == "tf32" and not tf32_capable(device):
        raise ModelError("eval.matmul tf32 needs a GPU of compute capability 8.0 or later; use float32 (or auto)")
    return choice


@contextmanager
def matmul_precision(kind: str, device: torch.device):
    """float32 matrix products at `kind` ("float32", "tf32", "bf16") inside the block, as before after it."""
    backend: Any = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul  # type: ignore[attr-defined]
    before = backend.fp32_precision
    backend.fp32_precision = _BACKEND_SETTING[kind]
    try:
        yield
    finally:
        backend.fp32_precision = before


def margin(scores: list[float]) -> float:
    """The gap between a pair's two best label scores (nats)."""
    top = sorted(scores, reverse=True)
    return top[0] - top[1]


def rescore_near_ties(rows: list[dict], rescore, margin_nats: float) -> dict:
    """Replace the scores of the rows whose two best labels are closer than margin_nats by `rescore`'s
    (full float32) for the same rows, in place; returns what it did, as the shard metrics record it."""
    near = [i for i, r in enumerate(rows) if margin(r["scores"]) < margin_nats]
    exact = rescore(near) if near else []
    changed, shift = 0, 0.0
    for i, new in zip(near, exact):
        old = rows[i]
        changed += new["pred"] != old["pred"]
        shift = max(shift, *(abs(a - b) for a, b in zip(new["scores"], old["scores"])))
        rows[i] = new
    return {"rescored": len(near), "rescore_changed": changed, "rescore_max_shift": shift}
