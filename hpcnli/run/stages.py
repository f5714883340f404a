"""The stages of a run: the one table that both launchers, the run state, the ledger and `status` read.

    finetune ──afterok──▶ finetuned (array of eval.num_shards) ─┐
    base (array of eval.num_shards, starts at once) ────────────┴─afterany─▶ reduce

Each stage is a module with `run_task(cfg, paths, stage, task, job)` (what a Slurm job or array task runs)
and a `main(argv)` for `python -m <module> RUN_DIR [--model M --shard N]` (what the local executor and sbatch
scripts run). Adding a stage: its module, a row here, and its outputs in run.state (`remaining_work`).

One retry policy for both launchers (`retry_round`): once every stage before the gathering stage (reduce)
has ended, the tasks whose outputs are missing or invalid run again, up to resources.max_retries rounds;
a stage that is not `retried` (the fine-tune) is reported instead. A stage that is `requeued` (the
fine-tune) checkpoints on Slurm's time-limit warning or on preemption and is requeued, MAX_REQUEUES times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hpcnli.config import ResourcesConfig, RunConfig

MAX_REQUEUES = 3  # requeues of a `requeued` stage on its time limit (Slurm's --requeue, after a checkpoint)
TIME_LIMIT_SIGNAL = "USR2"  # sent by Slurm SIGNAL_LEAD_S before a job's time limit (`--signal=USR2@90`)
SIGNAL_LEAD_S = 90


def _common(r: ResourcesConfig) -> dict:
    return dict(  # noqa: C408 (sbatch's option names, as submitit's update_parameters takes them)
        partition=r.partition,
        time=r.time_min,
        cpus_per_task=r.cpus_per_task,
        mem=f"{r.mem_gb}G",
        nodes=1,
        ntasks_per_node=1,
        account=r.account,
        qos=r.qos,
        constraint=r.constraint,
        array_parallelism=r.array_parallelism,
    )


def _finetune_resources(r: ResourcesConfig) -> dict:
    """All of a node's GPUs, one training process (Slurm task) per GPU, on resources.nodes nodes."""
    out = {**_common(r), "nodes": r.nodes, "ntasks_per_node": r.train_processes_per_node}
    if r.train_processes > 1:  # one rank lost: stop the others at once instead of leaving them in a collective
        out["srun_args"] = ["--kill-on-bad-exit=1"]
    if r.gpus_per_node > 0:
        out["gpus_per_node"] = r.gpus_per_node
    return out


def _eval_resources(r: ResourcesConfig) -> dict:
    """One array task per shard: one GPU (whatever the fine-tune's count); its CPUs, memory and time as planned
    (hpcnli.run.eval_resources), the fine-tune's where a config was planned without them."""
    out = {
        **_common(r),
        "cpus_per_task": r.eval_cpus_per_task or r.cpus_per_task,
        "mem": f"{r.eval_mem_gb or r.mem_gb}G",
        "time": r.eval_time_min or r.time_min,
    }
    if r.gpus_per_node > 0:
        out["gpus_per_node"] = 1
    return out


def _reduce_resources(r: ResourcesConfig) -> dict:
    return {**_common(r), "cpus_per_task": 1, "mem": "2G", "time": 30}


@dataclass(frozen=True)
class Stage:
    name: str  # ledger key, log and job name (hpcnli-<name>)
    module: str  # python -m <module> RUN_DIR; its run_task() is what a Slurm job calls
    resources: Callable[[ResourcesConfig], dict] = field(repr=False)  # submitit's Slurm parameters
    outputs: str  # what it writes, as the run state checks it
    script: str  # the sbatch script that runs it by hand (slurm/); its #SBATCH defaults are `resources`'s
    model: str | None = None  # eval stages: the model they score
    sharded: bool = False  # one task per eval shard (a Slurm array), else one task
    after_ok: tuple[str, ...] = ()  # stages whose success it needs (afterok)
    gathers: bool = False  # waits for every stage before it (afterany), retries their failed tasks, then runs
    retried: bool = False  # failed tasks run again in a retry round
    requeued: bool = False  # checkpoints on the time-limit warning or preemption and is requeued

    def tasks(self, cfg: RunConfig) -> list[int]:
        return list(range(cfg.eval.num_shards)) if self.sharded else [0]

    def argv(self, run_dir: str, task: int) -> list[str]:
        """The stage's command line after `python -m` (the local executor's; the sbatch scripts' equivalent)."""
        return [self.module, run_dir] + (["--model", str(self.model), "--shard", str(task)] if self.sharded else [])

    @property
    def label(self) -> str:
        """The stage in Slurm's job name (hpcnli-<label>) and in sbatch options: eval-<model> for eval stages."""
        return f"eval-{self.model}" if self.model else self.name

    def task_name(self, task: int) -> str:
        """A local task's log name."""
        return f"eval_{self.model}_{task}" if self.sharded else self.name


FINETUNE = Stage(
    "finetune",
    "hpcnli.finetune",
    _finetune_resources,
    "adapter/ and train_metrics.json",
    "slurm/finetune.sh",
    requeued=True,
)
EVAL_BASE = Stage(
    "base",
    "hpcnli.evaluate",
    _eval_resources,
    "predictions/base/shard_NNNN.{jsonl,metrics.json}",
    "slurm/eval_array.sh",
    model="base",
    sharded=True,
    retried=True,
)
EVAL_FINETUNED = Stage(
    "finetuned",
    "hpcnli.evaluate",
    _eval_resources,
    "predictions/finetuned/shard_NNNN.{jsonl,metrics.json}",
    "slurm/eval_array.sh",
    model="finetuned",
    sharded=True,
    after_ok=("finetune",),
    retried=True,
)
REDUCE = Stage(
    "reduce", "hpcnli.reduce", _reduce_resources, "report.json, report.md and plots", "slurm/reduce.sh", gathers=True
)

STAGES: tuple[Stage, ...] = (FINETUNE, EVAL_BASE, EVAL_FINETUNED, REDUCE)
EVAL_STAGES = tuple(s for s in STAGES if s.model)


def stage(name: str) -> Stage:
    """A stage by its name or its label."""
    for s in STAGES:
        if name in (s.name, s.label):
            return s
    raise ValueError(f"no stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


@dataclass
class Work:
    """What remains of a run: each stage's tasks to run (empty: done), and why anything is redone."""

    tasks: dict[str, list[int]]
    why: list[str] = field(default_factory=list)

    def todo(self, s: Stage) -> list[int]:
        return self.tasks.get(s.name, [])

    @property
    def finetune(self) -> bool:
        return bool(self.todo(FINETUNE))

    def shards(self, model: str) -> list[int]:
        return self.todo(stage(model))

    def waits_on(self, stages) -> bool:
        """Any task left of a stage that needs (afterok) one of these stages: a stage the cluster still holds."""
        return any(set(s.after_ok) & set(stages) for s in STAGES if self.todo(s))

    def before_gathering(self) -> bool:
        """Anything left for the stages that the gathering stage waits for."""
        return any(self.todo(s) for s in STAGES if not s.gathers)
