"""Measurements of a loaded model: parameter counts, peak memory, the device it runs on."""

from __future__ import annotations

import contextlib

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


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS: resident now, VmHWM: resident peak) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def resident_mb() -> float | None:
    """This process's resident memory now (MiB)."""
    return _status_mb("VmRSS")


def _release_freed_memory() -> None:
    """Hand memory freed while loading back to the system: the GPU's cached blocks, and on glibc the free
    heap (malloc_trim), which otherwise stays resident and counts against a Slurm memory limit (an eval
    shard that built its weights held 1.9 GB resident instead of 0.7 GB)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc
        ctypes.CDLL(name).malloc_trim(0)


def reset_peak_memory() -> None:
    """Start the peaks afresh once the model is loaded: hand back what loading freed, then reset the GPU's
    counters and the process's resident peak (Linux clear_refs 5), so that a stage's peak is that of its
    work, not of loading the model."""
    _release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(baseline_rss_mb: float | None = None) -> dict:
    """Peaks in MiB (2**20 bytes; the keys say _mb, as written since the first runs). Where there is a GPU: its
    allocated and reserved peaks, and what the card had in use at the peak (reserved + CUDA context). Always the
    process's resident peaks: over its life, and since reset_peak_memory. With the resident memory before the
    model was loaded (baseline_rss_mb), also `work_peak_rss_mb`: the peak since the reset less that baseline,
    the memory of the model and its work (what hpcnli.model.footprint estimates on a CPU)."""
    import resource

    out: dict[str, float | str] = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    since_reset = _status_mb("VmHWM")
    if since_reset is not None:
        out["peak_rss_since_reset_mb"] = since_reset
        if baseline_rss_mb is not None:
            out["work_peak_rss_mb"] = since_reset - baseline_rss_mb
    if torch.cuda.is_available():
        reserved = torch.cuda.max_memory_reserved() / 2**20
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu_peak_reserved_mb"] = reserved
        # What the card had in use beyond torch's reserve: the CUDA context, cuBLAS's workspace (and any other
        # process on the card); with the reserved peak, the memory the card had to have free for this stage.
        free, card = torch.cuda.mem_get_info()
        context = (card - free - torch.cuda.memory_reserved()) / 2**20
        out["gpu_context_mb"] = context
        out["gpu_peak_in_use_mb"] = reserved + context
        out["gpu_card_mb"] = card / 2**20
        out["gpu_name"] = torch.cuda.get_device_name()
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
