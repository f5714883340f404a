"""Slurm edge: a submitit job per stage of run.stages' table, arrays for sharded stages, dependencies between.

    fine-tune ──afterok──▶ fine-tuned eval array ─┐
    base eval array (starts at once) ─────────────┴─afterany─▶ reduce

The gathering stage (reduce) runs even when tasks failed; it applies the retry policy (run.state.retry_round):
if tasks are missing and retries are left it resubmits just those plus a new reduce job, else it writes the
incomplete report and fails. Only this module imports submitit; the stages it runs receive plain values.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import submitit

from hpcnli.cluster.commands import live_jobs, scheduler_limits
from hpcnli.cluster.env import JobEnvironment, outside_job_env
from hpcnli.config import RunConfig, load_config
from hpcnli.logs import setup_logging
from hpcnli.records import SweepPlan
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.paths import RunPaths
from hpcnli.run.stages import EVAL_STAGES, FINETUNE, REDUCE, STAGES, Stage, Work, stage
from hpcnli.run.state import progress_line, retry_round
from hpcnli.sweeps.grid import SweepPaths
from hpcnli.sweeps.state import status_lines, sweep_work

log = logging.getLogger(__name__)
WAIT_POLL_S = 1.0  # --wait: seconds between looks at the ledger, the run files and the reduce job
SubmissionRefused = submitit.core.utils.FailedJobError  # what submitit raises when sbatch refuses a job


def executor_for(cfg: RunConfig, paths: RunPaths, name: str) -> submitit.SlurmExecutor:
    """An executor with the stage's resources (run.stages); `name` is a stage's name or label."""
    return _executor(paths.submitit_folder, [cfg], name)


def _executor(folder: Path, cfgs: list[RunConfig], name: str) -> submitit.SlurmExecutor:
    """An executor for the stage's jobs of one or several runs (a sweep's array): each run's resources, the
    longest time and the largest memory of them."""
    s = stage(name)
    each = [s.resources(cfg.resources) for cfg in cfgs]
    ex = submitit.SlurmExecutor(folder=folder)
    params = {
        **each[0],
        "time": max(p["time"] for p in each),
        "mem": max((p["mem"] for p in each), key=lambda m: float(m.rstrip("G"))),
        "job_name": f"hpcnli-{s.label}",
        "stderr_to_stdout": True,
        "additional_parameters": dict(cfgs[0].resources.extra_sbatch),
    }
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


class StageJob:
    """What a Slurm job of a stage runs: the stage module's run_task. The gathering stage first applies the
    retry policy, resubmitting what is missing instead of running while retries are left."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, run_dir: str, task: int, retries_left: int = 0) -> str:
        setup_logging()
        s = stage(self.name)
        if s.requeued:  # several training processes: one data-parallel group (before the environment is read)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        env = JobEnvironment()
        env.match_torch_threads()
        env.use_node_address_for_rank_zero()
        paths = RunPaths(Path(run_dir))
        cfg = load_config(paths.config)
        if s.gathers:
            queued = queued_stages(paths)
            retry = retry_round(cfg, paths, frozenset(queued))
            # Waiting for a stage the cluster still holds (a requeued fine-tune whose dependents Slurm cancelled
            # when its first run ended) is not a retry: its dependents go again, after it, whatever is left.
            waiting = retry.waits_on(queued)
            if retry.before_gathering() and (retries_left > 0 or waiting):
                log.warning(
                    "tasks missing (%s); resubmitting them%s (%d retries left)",
                    {k: v for k, v in retry.tasks.items() if v},
                    f" after the queued {sorted(queued.values())}" if waiting else "",
                    retries_left,
                )
                with outside_job_env():
                    left = retries_left if waiting else retries_left - 1
                    submit_slurm(cfg, paths, retry, wait=False, retries=left, queued=queued)
                return "resubmitted"
        return importlib.import_module(s.module).run_task(cfg, paths, s, task, env)


# ---------------------------------------------------------------- submission


def _array_id(jobs) -> str:
    return jobs[0].job_id.split("_")[0]


def _submit_stage(
    cfg: RunConfig, paths: RunPaths, s: Stage, tasks: list[int], after_ok: list[str], after_any: list[str], retries: int
):
    """Submit one stage's tasks (an array when sharded); returns (ledger entry, job id to depend on)."""
    ex = executor_for(cfg, paths, s.name)
    run = str(paths.run_dir)
    if after_ok:  # a failed dependency cancels the job instead of leaving it pending for ever
        ex.update_parameters(
            dependency="afterok:" + ":".join(after_ok),
            additional_parameters={**cfg.resources.extra_sbatch, "kill-on-invalid-dep": "yes"},
        )
    elif after_any:
        ex.update_parameters(dependency="afterany:" + ":".join(after_any))
    if s.sharded:
        jobs = ex.map_array(StageJob(s.name), [run] * len(tasks), tasks)
        array = _array_id(jobs)
        return {"array_job_id": array, "shards": tasks, "task_job_ids": [j.job_id for j in jobs]}, array
    job = ex.submit(StageJob(s.name), run, tasks[0], retries)
    return job.job_id, job.job_id


def _chunks(items: list, size: int) -> list[list]:
    """Arrays of at most `size` tasks (Slurm's MaxArraySize bounds the task index, so a chunk starts at 0)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def queued_stages(paths: RunPaths) -> dict[str, str]:
    """The run's stages (the gathering stage aside) whose newest job squeue still lists: stage name -> job id."""
    newest = {n: j for n, j in SubmissionLedger(paths).newest_jobs().items() if not stage(n).gathers}
    live = set(live_jobs(list(newest.values())))
    return {n: j for n, j in newest.items() if j in live}


def submit_slurm(
    cfg: RunConfig,
    paths: RunPaths,
    work: Work,
    wait: bool = False,
    retries: int | None = None,
    queued: dict[str, str] | None = None,
) -> int:
    """Submit the work's stages with their dependencies; `queued`: stages whose jobs are still in the queue
    (stage name -> job id), which the stages submitted now wait for as for their own."""
    retries = cfg.resources.max_retries if retries is None else retries
    submitted: dict = {s.name: None for s in STAGES}
    depend_on: dict[str, str] = dict(queued or {})
    for s in STAGES:
        tasks = work.todo(s)
        if not tasks:
            continue
        after_ok = [depend_on[d] for d in s.after_ok if d in depend_on]
        after_any = []
        if s.gathers:  # it waits for the stages submitted before it that nothing else submitted waits for
            waited_on = {d for n in depend_on for d in stage(n).after_ok}
            after_any = [job for n, job in depend_on.items() if n not in waited_on]
        submitted[s.name], depend_on[s.name] = _submit_stage(cfg, paths, s, tasks, after_ok, after_any, retries)

    SubmissionLedger(paths).record(submitted, retries_left=retries)

    print(f"submitted to partition {cfg.resources.partition}:")
    for name, value in submitted.items():
        if value:
            print(
                f"  {name:<10} "
                + (f"{value['array_job_id']} (array {value['shards']})" if isinstance(value, dict) else str(value))
            )
    print(
        f"run directory: {paths.run_dir}\nlogs: {paths.logs}\n"
        f"watch: python -m hpcnli.status {paths.run_dir}   (or squeue --me)"
    )
    if not wait:
        return 0
    return wait_for(paths)


def wait_for(paths: RunPaths) -> int:
    """Block until the run's last reduce job ends (following resubmissions), printing progress."""
    cfg = load_config(paths.config)
    return _wait_for_reduce(paths, lambda: progress_line(cfg, paths), "reduce")


def _wait_for_reduce(
    paths: RunPaths | SweepPaths, progress: Callable[[], str], name: str, timeout_s: float | None = None
) -> int:
    """Block until the newest reduce job of the ledger ends, following the reduce jobs it resubmits, printing
    progress() when it changes; TimeoutError after timeout_s. 0 when it wrote its report."""
    ledger = SubmissionLedger(paths)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{name} job {ledger.last_reduce_job()} has not ended in {timeout_s:.0f} s")
        job_id = ledger.last_reduce_job()
        if job_id is None:
            raise RuntimeError(f"{paths.ledger} lists no reduce job")
        job: submitit.SlurmJob = submitit.SlurmJob(folder=paths.submitit_folder, job_id=job_id)
        line = progress()
        if line != last:
            print(line, flush=True)
            last = line
        if job.done():
            if ledger.last_reduce_job() != job_id:
                continue  # the reduce job resubmitted missing tasks: follow the new one
            # Judge by submitit's result file, not the Slurm state: the job may still read RUNNING for a
            # moment after its function has returned.
            error = job.exception()
            ok = error is None and paths.report_md.is_file()
            outcome = "succeeded" if ok else f"failed ({str(error).splitlines()[0] if error else 'no report'})"
            print(f"{name} job {job_id}: {outcome}; report: {paths.report_md}", flush=True)
            return 0 if ok else 1
        time.sleep(WAIT_POLL_S)


# ---------------------------------------------------------------- sweeps


class SweepJob:
    """The sweep's gathering job: once every run's jobs have ended, resubmit what is missing (failed fine-tunes
    too) while retries are left, else reduce every run and write the sweep's report."""

    def __call__(self, sweep_dir: str, retries_left: int = 0) -> str:
        setup_logging()
        paths = SweepPaths(Path(sweep_dir))
        plan = SweepPlan.read(paths.plan)
        queued = {e["run"]: queued_stages(paths.run(e["run"])) for e in plan.runs}
        works = sweep_work(paths, plan, queued)
        waiting = any(work.waits_on(queued[run]) for run, work in works.items())
        if any(w.before_gathering() for w in works.values()) and (retries_left > 0 or waiting):
            log.warning(
                "runs with tasks missing: %s; resubmitting them (%d retries left)",
                {run: {k: v for k, v in w.tasks.items() if v} for run, w in works.items() if w.before_gathering()},
                retries_left,
            )
            with outside_job_env():
                submit_sweep(paths, plan, works, retries=retries_left if waiting else retries_left - 1, queued=queued)
            return "resubmitted"
        from hpcnli.reduce import reduce_sweep

        reduce_sweep(paths)  # raises IncompleteSweep (the job fails) when runs are left out
        return str(paths.report_md)


def submit_sweep(
    paths: SweepPaths,
    plan: SweepPlan,
    works: dict[str, Work],
    wait: bool = False,
    retries: int | None = None,
    queued: dict[str, dict[str, str]] | None = None,
) -> int:
    """The fine-tunes of every run that needs one as one array (split at MaxArraySize), each run's eval arrays
    (the fine-tuned one after its run's array task, the base one only for base-group owners), and one reduce for
    the sweep after all of them. `queued`: run -> stage -> job id of jobs the cluster still holds."""
    runs = {e["run"]: paths.run(e["run"]) for e in plan.runs}
    cfgs = {name: load_config(run.config) for name, run in runs.items()}
    retries = cfgs[plan.runs[0]["run"]].resources.max_retries if retries is None else retries
    submitted: dict[str, dict] = {name: {} for name in runs}
    depend: dict[str, dict[str, str]] = {name: dict((queued or {}).get(name, {})) for name in runs}
    tuning = [name for name in runs if works[name].finetune]
    for chunk in _chunks(tuning, scheduler_limits()["MaxArraySize"]):
        ex = _executor(paths.submitit_folder, [cfgs[n] for n in chunk], FINETUNE.name)
        jobs = ex.map_array(StageJob(FINETUNE.name), [str(runs[n].run_dir) for n in chunk], [0] * len(chunk))
        for name, job in zip(chunk, jobs):
            submitted[name][FINETUNE.name] = depend[name][FINETUNE.name] = job.job_id  # <array>_<task>
    for name, run in runs.items():
        for s in EVAL_STAGES:
            tasks = works[name].todo(s)
            if tasks:
                after_ok = [depend[name][d] for d in s.after_ok if d in depend[name]]
                submitted[name][s.name], depend[name][s.name] = _submit_stage(
                    cfgs[name], run, s, tasks, after_ok, [], retries
                )
    ex = _executor(paths.submitit_folder, [cfgs[plan.runs[0]["run"]]], REDUCE.name)
    waits = sorted({job.split("_")[0] for d in depend.values() for job in d.values()})
    ex.update_parameters(job_name="hpcnli-sweep-reduce")
    if waits:
        ex.update_parameters(dependency="afterany:" + ":".join(waits))
    reduce_job = ex.submit(SweepJob(), str(paths.sweep_dir), retries)
    SubmissionLedger(paths).record({REDUCE.name: reduce_job.job_id}, retries_left=retries)
    for name, run in runs.items():
        if submitted[name]:
            SubmissionLedger(run).record({**submitted[name], REDUCE.name: reduce_job.job_id}, retries_left=retries)
    print(f"submitted to partition {cfgs[plan.runs[0]['run']].resources.partition}:")
    for name in runs:
        ids = {k: v["array_job_id"] if isinstance(v, dict) else v for k, v in submitted[name].items()}
        print(f"  {name:<10} " + (", ".join(f"{k} {v}" for k, v in ids.items()) or "nothing left"))
    print(f"  sweep reduce {reduce_job.job_id}\nwatch: python -m hpcnli.status {paths.sweep_dir}")
    return wait_for_sweep(paths) if wait else 0


def wait_for_sweep(paths: SweepPaths, timeout_s: float | None = None) -> int:
    """Block until the sweep's last reduce job ends (following resubmissions), printing each run's progress."""
    plan = SweepPlan.read(paths.plan)
    return _wait_for_reduce(paths, lambda: "\n".join(status_lines(paths, plan)), "sweep reduce", timeout_s)
