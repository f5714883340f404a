"""An eval array task's own resources, planned with the run: one shard's memory, CPUs and time, not the
fine-tune's. What the config leaves out (resources.eval_mem_gb, eval_cpus_per_task, eval_time_min) is chosen
here when the run is planned and written into its config.yaml, as "auto" batches are:

    memory  on a GPU: the process before any model (footprint.CPU_PROCESS_BYTES) and one host copy of the
            eval weights (loading and writing the dequantized weights pass through host memory), + 25%,
            in whole GiB; on a CPU: resources.mem_gb (the eval batches were sized to it)
    CPUs    on a GPU: at most EVAL_GPU_CPUS (tokenizing and the Python loop; the GPU scores); on a CPU:
            cpus_per_task (they score)
    time    a shard's pairs at the steady pairs/s of the newest finished shard of this model on the same
            kind of device in output_root, + its load and warm-up, x TIME_SAFETY, at least EVAL_MIN_TIME_MIN
            and at most resources.time_min; resources.time_min when no earlier run gives a throughput
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from hpcnli.config import RunConfig
from hpcnli.io import RunFileError
from hpcnli.model.footprint import CPU_PROCESS_BYTES, GiB
from hpcnli.records import Report, ShardMetrics
from hpcnli.run.paths import MODELS, runs_under

EVAL_GPU_CPUS = 4
HOST_MARGIN = 1.25
TIME_SAFETY = 2.0
EVAL_MIN_TIME_MIN = 10


def eval_memory_gb(cfg: RunConfig, weights_bytes: float) -> int:
    r = cfg.resources
    if r.gpus_per_node == 0:
        return r.mem_gb
    return min(r.mem_gb, math.ceil((CPU_PROCESS_BYTES + weights_bytes) * HOST_MARGIN / GiB))


def last_shard_rate(cfg: RunConfig, gpu: bool) -> tuple[float, float, str] | None:
    """(steady pairs/s, load + warm-up seconds, run name) of the newest finished eval shard of this model in
    output_root on the same kind of device (GPU or CPU), or None."""
    best = None
    for run in runs_under(Path(cfg.output_root)):
        try:
            if Report.read(run.report_json).config.get("model", {}).get("name_or_path") != cfg.model.name_or_path:
                continue
        except (RunFileError, OSError):
            continue
        for model in MODELS:
            for f in sorted(run.shard_dir(model).glob("shard_*.metrics.json")):
                try:
                    m = ShardMetrics.read(f)
                except (RunFileError, OSError):
                    continue
                rate = m.steady_examples_per_s or m.examples_per_s
                if not rate or ("cpu" not in m.device.lower()) != gpu:
                    continue
                when = f.stat().st_mtime
                if best is None or when > best[0]:
                    best = (when, rate, m.model_load_s + (m.warmup_s or 0.0), run.name)
    return None if best is None else best[1:]


def eval_time_min(cfg: RunConfig, shard_pairs: int) -> tuple[int, str]:
    """Minutes an eval task asks for, and where the figure comes from."""
    r = cfg.resources
    known = last_shard_rate(cfg, r.gpus_per_node > 0)
    if known is None:
        return r.time_min, "resources.time_min: no earlier eval shard of this model in output_root"
    rate, fixed_s, run = known
    minutes = (shard_pairs / rate + fixed_s) * TIME_SAFETY / 60
    chosen = min(r.time_min, max(EVAL_MIN_TIME_MIN, math.ceil(minutes)))
    return chosen, f"{shard_pairs:,} pairs at {rate:,.1f} pairs/s + {fixed_s:.0f} s load (run {run}), x{TIME_SAFETY:g}"


def plan(cfg: RunConfig, weights_bytes: float, test_pairs: int) -> tuple[RunConfig, dict]:
    """The config with the eval task's resources that the config left out chosen, and what was chosen."""
    r = cfg.resources
    shard_pairs = math.ceil(test_pairs / cfg.eval.num_shards)
    mem = r.eval_mem_gb or eval_memory_gb(cfg, weights_bytes)
    cpus = r.eval_cpus_per_task or (min(r.cpus_per_task, EVAL_GPU_CPUS) if r.gpus_per_node > 0 else r.cpus_per_task)
    if r.eval_time_min:
        minutes, why = r.eval_time_min, "resources.eval_time_min"
    else:
        minutes, why = eval_time_min(cfg, shard_pairs)
    resolved = dataclasses.replace(
        cfg, resources=dataclasses.replace(r, eval_mem_gb=mem, eval_cpus_per_task=cpus, eval_time_min=minutes)
    )
    return resolved, {"mem_gb": mem, "cpus_per_task": cpus, "time_min": minutes, "time_from": why}


def lines(task: dict | None) -> list[str]:
    if not task:
        return []
    return [
        f"eval tasks: {task['mem_gb']} GiB host memory, {task['cpus_per_task']} CPUs, {task['time_min']} min "
        f"each ({task['time_from']})"
    ]
