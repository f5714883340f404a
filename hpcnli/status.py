"""Where a run stands: each stage's Slurm state (sacct) and its shards done/pending from the files.

python -m hpcnli.status results/<run>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcnli.cluster.commands import job_states
from hpcnli.config import load_config
from hpcnli.errors import run_command
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.paths import RunPaths
from hpcnli.run.stages import STAGES
from hpcnli.run.state import progress_line


def print_submissions(ledger: SubmissionLedger) -> None:
    states = job_states(ledger.job_ids())
    for i, sub in enumerate(ledger.submissions()):
        print(f"submission {i} (retries left {sub.retries_left}):")
        for stage in STAGES:
            v = sub.jobs.get(stage.name)
            if isinstance(v, dict):
                tasks = {t: states.get(t, "?") for t in v["task_job_ids"]}
                print(
                    f"  {stage.name:<10} array {v['array_job_id']}: " + ", ".join(f"{t} {s}" for t, s in tasks.items())
                )
            elif v:
                print(f"  {stage.name:<10} job {v}: {states.get(str(v), '?')}")


def show(run_dir: str) -> int:
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        print(f"hpcnli.status: {run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    print(f"run {paths.run_dir}\n{progress_line(load_config(paths.config), paths)}")
    ledger = SubmissionLedger(paths)
    if ledger.exists():
        print_submissions(ledger)
    else:
        print("ran with the local executor (no Slurm jobs)")
    print(f"logs: {paths.logs}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    return run_command("hpcnli.status", lambda: show(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
