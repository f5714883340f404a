"""The submissions ledger (`plan.json`): every batch of Slurm jobs sent for a run, newest last.

It records what was submitted, not what to compute (that is `config.yaml` and `test_set.json`).
Only this module reads or writes the file.
"""

from __future__ import annotations

import time

from hpcnli.io import read_json, write_json
from hpcnli.run.paths import RunPaths


class SubmissionLedger:
    def __init__(self, paths: RunPaths):
        self.paths = paths

    def exists(self) -> bool:
        return self.paths.plan.is_file()

    def submissions(self) -> list[dict]:
        """Each {time, retries_left, jobs{finetune, base, finetuned, reduce}}; empty for a local run."""
        return read_json(self.paths.plan)["submissions"] if self.exists() else []

    def job_ids(self) -> list[str]:
        """Every job and array id ever submitted for the run."""
        return read_json(self.paths.plan).get("job_ids", []) if self.exists() else []

    def last_reduce_job(self) -> str | None:
        subs = self.submissions()
        return subs[-1]["jobs"]["reduce"] if subs else None

    def record(self, jobs: dict, retries_left: int) -> None:
        """Append one submission; `jobs` maps a stage to a job id, or to {array_job_id, shards, task_job_ids}."""
        subs = self.submissions() + [{"time": time.time(), "retries_left": retries_left, "jobs": jobs}]
        ids = sorted({j for s in subs for j in _ids(s["jobs"])})
        write_json(self.paths.plan, {"submissions": subs, "job_ids": ids})


def _ids(jobs: dict) -> list[str]:
    return [v["array_job_id"] if isinstance(v, dict) else str(v) for v in jobs.values() if v]
