"""Measurements of a loaded model: parameter counts, peak memory, the device it runs on."""

from __future__ import annotations

import torch


def count_parameters(model) -> dict:
    """Total and trainable parameters; 4-bit packed weights count at their real (unpacked) size."""
    total = trainable = 0
    for p in model.parameters():
        quant_state = getattr(p, "quant_state", None)
        n = quant_state.shape.numel() if quant_state is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable, "trainable_share": trainable / total if total else 0.0}


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """GPU allocated/reserved peaks where there is a GPU; this process's peak RSS always."""
    import resource

    out = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        out["gpu_name"] = torch.cuda.get_device_name()
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
