"""Slurm edge: submitit jobs for each stage, arrays for the shards, dependencies between them.

    fine-tune ──afterok──▶ fine-tuned eval array ─┐
    base eval array (starts at once) ─────────────┴─afterany─▶ reduce

The reduce job runs even when shards failed; if some are missing and retries are left it
resubmits just those shards plus a new reduce job, else it writes the incomplete report and fails.
Only this module imports submitit; the stages it runs receive plain values.
"""

from __future__ import annotations

import logging
import time

import submitit

from hpcnli import evaluate, finetune, reduce
from hpcnli.cluster.env import JobEnvironment, outside_job_env
from hpcnli.config import RunConfig, load_config
from hpcnli.logs import setup_logging
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.run.state import progress_line, remaining_work
from hpcnli.run.time_plan import MAX_REQUEUES

log = logging.getLogger(__name__)
SubmissionRefused = submitit.core.utils.FailedJobError  # what submitit raises when sbatch refuses a job


def _job_setup() -> JobEnvironment:
    """Logging, and torch threads matched to the CPUs Slurm gave the task."""
    setup_logging()
    env = JobEnvironment()
    env.match_torch_threads()
    return env


def executor_for(cfg: RunConfig, paths: RunPaths, stage: str) -> submitit.SlurmExecutor:
    """An executor with the run's resources; `stage` is finetune, eval-<model> or reduce."""
    r = cfg.resources
    ex = submitit.SlurmExecutor(folder=paths.submitit_folder, max_num_timeout=MAX_REQUEUES)
    params = dict(job_name=f"hpcnli-{stage}", partition=r.partition, time=r.time_min,
                  cpus_per_task=r.cpus_per_task, mem=f"{r.mem_gb}G", nodes=1, ntasks_per_node=1,
                  account=r.account, qos=r.qos, constraint=r.constraint,
                  array_parallelism=r.array_parallelism, additional_parameters=dict(r.extra_sbatch),
                  stderr_to_stdout=True)
    if stage == "finetune":
        params.update(nodes=r.nodes, ntasks_per_node=r.train_processes_per_node)  # one task per training process
        if r.train_processes > 1:  # one rank lost: stop the others at once instead of leaving them in a collective
            params["srun_args"] = ["--kill-on-bad-exit=1"]
    if stage.startswith("eval") and r.eval_cpus_per_task:
        params["cpus_per_task"] = r.eval_cpus_per_task
    if stage == "reduce":
        params.update(cpus_per_task=1, mem="2G", time=30)
    elif r.gpus_per_node > 0:  # training: all of a node's GPUs, one per process; an eval task: one GPU
        params["gpus_per_node"] = r.gpus_per_node if stage == "finetune" else 1
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


# ---------------------------------------------------------------- what runs inside the jobs


class FinetuneJob(submitit.helpers.Checkpointable):
    """Requeued on time-out or preemption; finetune.run resumes from its last checkpoint."""

    def __call__(self, run_dir: str) -> str:
        env = _job_setup()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        env.use_node_address_for_rank_zero()
        paths = RunPaths(run_dir)
        finetune.run(load_config(paths.config), paths)
        return str(paths.adapter)


def eval_task(run_dir: str, model: str, shard: int) -> str:
    env = _job_setup()
    paths = RunPaths(run_dir)
    evaluate.run(load_config(paths.config), paths, model, shard, job=env.describe())
    return str(paths.shard_predictions(model, shard))


def reduce_task(run_dir: str, retries_left: int) -> str:
    _job_setup()
    paths = RunPaths(run_dir)
    cfg = load_config(paths.config)
    work = remaining_work(cfg, paths)
    # Fine-tuned shards cannot be retried without an adapter; a failed fine-tune is reported instead.
    retry = {"finetune": False, "base": work["base"], "finetuned": [] if work["finetune"] else work["finetuned"]}
    if retries_left > 0 and (retry["base"] or retry["finetuned"]):
        log.warning("shards missing (base %s, finetuned %s); resubmitting them (%d retries left)",
                    retry["base"], retry["finetuned"], retries_left)
        with outside_job_env():
            submit_slurm(cfg, paths, retry, wait=False, retries=retries_left - 1)
        return "resubmitted"
    reduce.run(cfg, paths)  # raises IncompleteRun (job fails) if shards are still missing
    return str(paths.report_md)


# ---------------------------------------------------------------- submission


def _array_id(jobs) -> str:
    return jobs[0].job_id.split("_")[0]


def submit_slurm(cfg: RunConfig, paths: RunPaths, work: dict, wait: bool = False, retries: int | None = None) -> int:
    run = str(paths.run_dir)
    retries = cfg.resources.max_retries if retries is None else retries
    submitted: dict = {"finetune": None, "base": None, "finetuned": None, "reduce": None}
    train_job = None
    if work["finetune"]:
        train_job = executor_for(cfg, paths, "finetune").submit(FinetuneJob(), run)
        submitted["finetune"] = train_job.job_id
    arrays = {}
    for model in MODELS:
        shards = work[model]
        if not shards:
            continue
        ex = executor_for(cfg, paths, f"eval-{model}")
        if model == "finetuned" and train_job is not None:
            ex.update_parameters(dependency=f"afterok:{train_job.job_id}",
                                 additional_parameters={**cfg.resources.extra_sbatch, "kill-on-invalid-dep": "yes"})
        jobs = ex.map_array(eval_task, [run] * len(shards), [model] * len(shards), shards)
        arrays[model] = jobs
        submitted[model] = {"array_job_id": _array_id(jobs), "shards": shards,
                            "task_job_ids": [j.job_id for j in jobs]}
    ex = executor_for(cfg, paths, "reduce")
    after = [_array_id(j) for j in arrays.values()] or ([train_job.job_id] if train_job else [])
    if after:
        ex.update_parameters(dependency="afterany:" + ":".join(after))
    reduce_job = ex.submit(reduce_task, run, retries)
    submitted["reduce"] = reduce_job.job_id

    SubmissionLedger(paths).record(submitted, retries_left=retries)

    print(f"submitted to partition {cfg.resources.partition}:")
    for stage, value in submitted.items():
        if value:
            print(f"  {stage:<10} {value['array_job_id'] + ' (array ' + str(value['shards']) + ')' if isinstance(value, dict) else value}")
    print(f"run directory: {paths.run_dir}\nlogs: {paths.logs}\n"
          f"watch: python -m hpcnli.status {paths.run_dir}   (or squeue --me)")
    if not wait:
        return 0
    return wait_for(paths)


def wait_for(paths: RunPaths) -> int:
    """Block until the run's last reduce job ends (following resubmissions), printing progress."""
    ledger, cfg = SubmissionLedger(paths), load_config(paths.config)
    last = None
    while True:
        job_id = ledger.last_reduce_job()
        job = submitit.SlurmJob(folder=paths.submitit_folder, job_id=job_id)
        line = progress_line(cfg, paths)
        if line != last:
            print(line, flush=True)
            last = line
        if job.done():
            if ledger.last_reduce_job() != job_id:
                continue  # the reduce job resubmitted missing shards: follow the new one
            # Judge by submitit's result file, not the Slurm state: the job may still read RUNNING for a
            # moment after its function has returned.
            error = job.exception()
            ok = error is None and paths.report_md.is_file()
            outcome = "succeeded" if ok else f"failed ({str(error).splitlines()[0] if error else 'no report'})"
            print(f"reduce job {job_id}: {outcome}; report: {paths.report_md}", flush=True)
            return 0 if ok else 1
        time.sleep(5)
