"""The local executor: every stage of run.stages' table as its own process on this machine, in order.

The commands are the ones the sbatch scripts run (`python -m hpcnli.finetune <run>`, ...), so a
local run exercises the same entry points as a cluster run; several training processes
(resources.processes_per_node) start through torchrun. Failed tasks are retried as on Slurm
(run.state.retry_round), once every stage before reduce has ended.
"""

from __future__ import annotations

import subprocess
import sys
import time

from hpcnli.config import RunConfig
from hpcnli.run.paths import RunPaths
from hpcnli.run.stages import FINETUNE, STAGES, Stage, Work
from hpcnli.run.state import retry_round


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


def command(cfg: RunConfig, stage: Stage, run: str, task: int) -> list[str]:
    """The stage's command; the fine-tune as resources.processes_per_node processes through torchrun."""
    argv = stage.argv(run, task)
    n = cfg.resources.train_processes_per_node
    if stage is not FINETUNE or n == 1:
        return argv
    return ["torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", *argv]


def run_stages(cfg: RunConfig, paths: RunPaths, work: Work, keep_fds: tuple[int, ...] = ()) -> int:
    """Each stage's tasks as processes, in the table's order; failed tasks are retried resources.max_retries
    rounds before the gathering stage (reduce) runs."""
    run = str(paths.run_dir)
    before = [s for s in STAGES if not s.gathers]
    for attempt in range(cfg.resources.max_retries + 1):
        for stage in before:
            for task in work.todo(stage):
                name = stage.task_name(task) + (f"_retry{attempt}" if attempt else "")
                if not _run_stage(paths, name, command(cfg, stage, run, task), keep_fds) and stage is FINETUNE:
                    print("fine-tuning failed; the base-model shards still run", flush=True)
        if attempt == cfg.resources.max_retries:
            break  # no retry left: the reduce stage reports what is missing
        work = retry_round(cfg, paths)
        if not work.before_gathering():
            break
    ok = all(_run_stage(paths, s.name, command(cfg, s, run, 0), keep_fds) for s in STAGES if s.gathers)
    print(f"\nreport: {paths.report_md}" if ok else f"\nrun incomplete; see {paths.report_md}", flush=True)
    return 0 if ok else 1
