"""The local executor: every stage of a run as its own process on this machine, in order.

The commands are the ones the sbatch scripts run (`python -m hpcnli.finetune <run>`, ...), so a
local run exercises the same entry points as a cluster run; several training processes
(resources.processes_per_node) start through torchrun.
"""

from __future__ import annotations

import subprocess
import sys
import time

from hpcnli.config import RunConfig
from hpcnli.run.paths import MODELS, RunPaths


def _run_stage(paths: RunPaths, name: str, args: list[str], keep_fds: tuple[int, ...]) -> bool:
    """One stage process. It inherits keep_fds (the run lock), so the lock lives as long as the stage does;
    if this process is stopped (Ctrl-C, SIGTERM), the stage is stopped with it, never left running alone."""
    log_file = paths.stage_log(name)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", *args]
    t0 = time.perf_counter()
    with open(log_file, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, pass_fds=keep_fds)
        try:
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"  {name:<22} stopped", flush=True)
            raise
    status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    print(f"  {name:<22} {status:<16} {time.perf_counter() - t0:7.1f} s   log: {log_file}", flush=True)
    return rc == 0


def finetune_command(cfg: RunConfig, run: str) -> list[str]:
    """The fine-tune as one process, or as resources.processes_per_node processes through torchrun."""
    n = cfg.resources.train_processes_per_node
    if n == 1:
        return ["hpcnli.finetune", run]
    return ["torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "hpcnli.finetune", run]


def run_stages(cfg: RunConfig, paths: RunPaths, work: dict, keep_fds: tuple[int, ...] = ()) -> int:
    """Each stage is its own process, in order; failed eval shards are retried resources.max_retries times."""
    run = str(paths.run_dir)
    if work["finetune"] and not _run_stage(paths, "finetune", finetune_command(cfg, run), keep_fds):
        print("fine-tuning failed; the base-model shards still run", flush=True)
    for model in MODELS:
        for shard in work[model]:
            for attempt in range(cfg.resources.max_retries + 1):
                name = f"eval_{model}_{shard}" + (f"_retry{attempt}" if attempt else "")
                if _run_stage(paths, name, ["hpcnli.evaluate", run, "--model", model, "--shard", str(shard)], keep_fds):
                    break
    ok = _run_stage(paths, "reduce", ["hpcnli.reduce", run], keep_fds)
    print(f"\nreport: {paths.report_md}" if ok else f"\nrun incomplete; see {paths.report_md}", flush=True)
    return 0 if ok else 1
