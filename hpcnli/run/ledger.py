"""The submissions ledger (`plan.json`, named so for runs made before): every batch of Slurm jobs sent for a
run, newest last.

It records what was submitted, not what to compute (that is `config.yaml` and `test_set.json`). Each
submission maps a stage's name (run.stages) to a job id, or for a sharded stage to its array. Only this
module reads or writes the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcnli.io import RunFileError, read_json, write_json
from hpcnli.run.stages import REDUCE, STAGES


class HasLedger(Protocol):
    """A run's paths (RunPaths), or a sweep's (sweeps.grid.SweepPaths: its own reduce jobs)."""

    @property
    def ledger(self) -> Path: ...


@dataclass(frozen=True)
class Submission:
    time: float
    retries_left: int
    jobs: dict  # stage name -> job id, or {array_job_id, shards, task_job_ids}; None where not submitted

    def job_ids(self) -> list[str]:
        return [v["array_job_id"] if isinstance(v, dict) else str(v) for v in self.jobs.values() if v]


class SubmissionLedger:
    def __init__(self, paths: HasLedger):
        self.paths = paths

    def exists(self) -> bool:
        return self.paths.ledger.is_file()

    def _read(self) -> dict:
        data = read_json(self.paths.ledger)
        if not (
            isinstance(data, dict)
            and isinstance(data.get("submissions"), list)
            and all(isinstance(s, dict) and {"time", "retries_left", "jobs"} <= s.keys() for s in data["submissions"])
        ):
            raise RunFileError(
                f"{self.paths.ledger} is not a submissions ledger (submissions with time, retries_left "
                "and jobs); restore it, or delete it if no Slurm job of this run is queued"
            )
        return data

    def submissions(self) -> list[Submission]:
        """Empty for a local run."""
        if not self.exists():
            return []
        return [Submission(s["time"], s["retries_left"], s["jobs"]) for s in self._read()["submissions"]]

    def job_ids(self) -> list[str]:
        """Every job and array id ever submitted for the run."""
        return sorted({j for s in self.submissions() for j in s.job_ids()})

    def newest_jobs(self) -> dict[str, str]:
        """Each stage's newest job or array id (stage name -> id), over every submission."""
        newest: dict[str, str] = {}
        for sub in self.submissions():
            newest.update(
                {name: v["array_job_id"] if isinstance(v, dict) else str(v) for name, v in sub.jobs.items() if v}
            )
        return newest

    def last_reduce_job(self) -> str | None:
        subs = self.submissions()
        return subs[-1].jobs[REDUCE.name] if subs else None

    def record(self, jobs: dict, retries_left: int) -> None:
        """Append one submission; `jobs` maps a stage to a job id, or to {array_job_id, shards, task_job_ids}."""
        unknown = set(jobs) - {s.name for s in STAGES}
        if unknown:
            raise ValueError(f"not stages: {sorted(unknown)}")
        subs = self.submissions() + [Submission(time.time(), retries_left, jobs)]
        ids = sorted({j for s in subs for j in s.job_ids()})
        write_json(self.paths.ledger, {"submissions": [s.__dict__ for s in subs], "job_ids": ids})
