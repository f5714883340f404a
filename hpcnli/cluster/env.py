"""The only reader of environment variables: the scheduler's (as submitit's JobEnvironment) and hpcnli's own."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path


class JobEnvironment:
    def __init__(self, environ: dict | None = None):
        self._env = dict(os.environ if environ is None else environ)

    def _int(self, name: str) -> int | None:
        value = self._env.get(name)
        return int(value) if value not in (None, "") else None

    @property
    def cache_dir(self) -> Path:
        """HPCNLI_CACHE: where the packaged model is converted to once (default ~/.cache/hpcnli)."""
        return Path(self._env.get("HPCNLI_CACHE") or Path.home() / ".cache" / "hpcnli")

    @property
    def log_level(self) -> str:
        """HPCNLI_LOG_LEVEL (default INFO)."""
        return self._env.get("HPCNLI_LOG_LEVEL", "INFO")

    @property
    def job_id(self) -> str | None:
        return self._env.get("SLURM_JOB_ID")

    @property
    def array_job_id(self) -> str | None:
        return self._env.get("SLURM_ARRAY_JOB_ID")

    @property
    def array_task_id(self) -> int | None:
        return self._int("SLURM_ARRAY_TASK_ID")

    @property
    def node(self) -> str:
        return self._env.get("SLURMD_NODENAME") or socket.gethostname()

    @property
    def restart_count(self) -> int:
        return self._int("SLURM_RESTART_COUNT") or 0

    @property
    def cpus_per_task(self) -> int | None:
        return self._int("SLURM_CPUS_PER_TASK")

    @property
    def gpus(self) -> str | None:
        return self._env.get("CUDA_VISIBLE_DEVICES") or None

    @property
    def ntasks(self) -> int:
        return self._int("SLURM_NTASKS") or 1

    @property
    def global_rank(self) -> int:
        """This process's rank in the job's data-parallel group (Slurm's task, or torchrun's RANK); 0 alone."""
        return self._int("SLURM_PROCID") or self._int("RANK") or 0

    @property
    def local_rank(self) -> int:
        """This process's index on its node (torchrun's LOCAL_RANK, or Slurm's task on the node); 0 alone."""
        return self._int("LOCAL_RANK") or self._int("SLURM_LOCALID") or 0

    @property
    def local_world_size(self) -> int | None:
        """Training processes on this node, as torchrun or export_torch_distributed set them; None unknown."""
        return self._int("LOCAL_WORLD_SIZE")

    def torch_distributed_env(self) -> dict[str, str]:
        """torch.distributed's variables for this task of an `srun` step (what torchrun would set):
        rank, world size, local rank, and rank 0's host with a port derived from the job id."""
        from hpcnli.cluster.commands import first_host

        tasks_per_node = self._env.get("SLURM_STEP_TASKS_PER_NODE") or self._env.get("SLURM_TASKS_PER_NODE", "1")
        return {
            "RANK": self._env["SLURM_PROCID"],
            "WORLD_SIZE": str(self.ntasks),
            "LOCAL_RANK": self._env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": tasks_per_node.split("(")[0].split(",")[0],
            "MASTER_ADDR": first_host(self._env.get("SLURM_STEP_NODELIST") or self._env["SLURM_JOB_NODELIST"]),
            "MASTER_PORT": str(20000 + int(self.job_id or 0) % 20000),
        }

    def use_node_address_for_rank_zero(self) -> None:
        """submitit exports the first node's name as MASTER_ADDR; use its address, which resolves also where
        node names are not host names (the local cluster's extra nodes)."""
        if self.ntasks > 1:
            from hpcnli.cluster.commands import first_host

            os.environ["MASTER_ADDR"] = first_host(self._env["SLURM_JOB_NODELIST"])

    def export_torch_distributed(self) -> None:
        """In a step of several Slurm tasks (srun), set torch.distributed's variables so that Accelerate
        joins the tasks into one data-parallel group; a launcher that set RANK already (submitit, torchrun)
        is left alone."""
        if self.ntasks > 1 and "RANK" not in self._env:
            exported = self.torch_distributed_env()
            os.environ.update(exported)
            self._env.update(exported)

    def match_torch_threads(self) -> None:
        """Use as many torch threads as CPUs Slurm gave the task. Without cgroups (task/none) a task
        sees every core of the node, and two 1-CPU shards on one node would each start a thread per core."""
        if self.cpus_per_task:
            import torch

            torch.set_num_threads(self.cpus_per_task)

    def describe(self) -> dict:
        return {
            "job_id": self.job_id,
            "array_job_id": self.array_job_id,
            "array_task_id": self.array_task_id,
            "node": self.node,
            "cpus_per_task": self.cpus_per_task,
            "restart_count": self.restart_count,
            "gpus": self.gpus,
        }


@contextmanager
def outside_job_env():
    """sbatch run inside a job inherits that job's SLURM_* options; hide them while submitting new jobs."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SLURM_") and k != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(saved)
