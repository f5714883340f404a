"""The local executor: every stage of run.stages' table as its own process on this machine, in order.

The commands are the ones the sbatch scripts run (`python -m hpcnli.finetune <run>`, ...), so a
local run exercises the same entry points as a cluster run; several training processes
(resources.processes_per_node) start through torchrun. Failed tasks are retried as on Slurm
(run.state.retry_round), once every stage before reduce has ended. A sweep's runs go one at a time (run_sweep).
"""

from __future__ import annotations

import subprocess
import sys
import time

from hpcnli.config import RunConfig, load_config
from hpcnli.records import SweepPlan
from hpcnli.run.lock import RunLock
from hpcnli.run.paths import RunPaths
from hpcnli.run.stages import FINETUNE, STAGES, Stage, Work
from hpcnli.run.state import retry_round
from hpcnli.sweeps import report as sweep_report
from hpcnli.sweeps.compare import IncompleteSweep
from hpcnli.sweeps.grid import SweepPaths
from hpcnli.sweeps.state import sweep_work


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


def run_before_gathering(
    cfg: RunConfig, paths: RunPaths, work: Work, keep_fds: tuple[int, ...] = (), attempt: int = 0
) -> None:
    """The work's tasks of every stage before the gathering stage, in the table's order."""
    run = str(paths.run_dir)
    for stage in STAGES:
        if stage.gathers:
            continue
        for task in work.todo(stage):
            name = stage.task_name(task) + (f"_retry{attempt}" if attempt else "")
            if not _run_stage(paths, name, command(cfg, stage, run, task), keep_fds) and stage is FINETUNE:
                print("fine-tuning failed; the base-model shards still run", flush=True)


def run_gathering(cfg: RunConfig, paths: RunPaths, keep_fds: tuple[int, ...] = ()) -> bool:
    return all(_run_stage(paths, s.name, command(cfg, s, str(paths.run_dir), 0), keep_fds) for s in STAGES if s.gathers)


def run_stages(cfg: RunConfig, paths: RunPaths, work: Work, keep_fds: tuple[int, ...] = ()) -> int:
    """Each stage's tasks as processes, in the table's order; failed tasks are retried resources.max_retries
    rounds before the gathering stage (reduce) runs."""
    for attempt in range(cfg.resources.max_retries + 1):
        run_before_gathering(cfg, paths, work, keep_fds, attempt)
        if attempt == cfg.resources.max_retries:
            break  # no retry left: the reduce stage reports what is missing
        work = retry_round(cfg, paths)
        if not work.before_gathering():
            break
    ok = run_gathering(cfg, paths, keep_fds)
    print(f"\nreport: {paths.report_md}" if ok else f"\nrun incomplete; see {paths.report_md}", flush=True)
    return 0 if ok else 1


def run_sweep(paths: SweepPaths, plan: SweepPlan, works: dict[str, Work], max_retries: int) -> int:
    """A sweep's runs one at a time (a base group's owner before the runs that read its shards), with the sweep's
    retry policy (sweeps.state.sweep_work: failed fine-tunes too), then each run's reduce and the sweep's report."""
    for attempt in range(max_retries + 1):
        for entry in plan.runs:
            work = works[entry["run"]]
            if not work.before_gathering():
                continue
            run = paths.run(entry["run"])
            print(f"{entry['run']}: {_todo(work)}", flush=True)
            with RunLock(run) as lock:
                run_before_gathering(load_config(run.config), run, work, (lock.fileno(),), attempt)
        works = sweep_work(paths, plan)
        if not any(w.before_gathering() for w in works.values()):
            break
    for entry in plan.runs:
        run = paths.run(entry["run"])
        with RunLock(run) as lock:
            run_gathering(load_config(run.config), run, (lock.fileno(),))
    try:
        sweep_report.write(paths)
    except IncompleteSweep as e:
        print(f"\nsweep incomplete: {e}\nsee {paths.report_md}", flush=True)
        return 1
    print(f"\nsweep report: {paths.report_md}", flush=True)
    return 0


def _todo(work: Work) -> str:
    return ", ".join(f"{name} {tasks}" for name, tasks in work.tasks.items() if tasks)
