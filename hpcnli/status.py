"""Where a run stands: each stage's Slurm state (sacct) and its shards done/pending from the files.

    python -m hpcnli.status results/<run>
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from hpcnli.config import load_config
from hpcnli.io import read_json
from hpcnli.paths import MODELS, RunPaths


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """job id (array tasks as <array>_<task>) -> state, from sacct; empty where sacct is missing."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "--format=JobID,State", "--jobs", ",".join(job_ids)],
                         capture_output=True, text=True)
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        if "." not in job:  # skip job steps (.batch, .0)
            states[job] = state.split()[0] if state else "?"
    return states


def sacct_times(job_ids: list[str]) -> dict[str, dict]:
    """job id -> state, submit/start/end and queue wait (start - submit) in seconds, from sacct."""
    from datetime import datetime

    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "--format=JobID,JobName,State,Submit,Start,End",
                          "--jobs", ",".join(job_ids)], capture_output=True, text=True)
    rows = {}
    for line in out.stdout.splitlines():
        job, name, state, submit, start, end = line.split("|")
        if "." in job or start in ("Unknown", "None", ""):
            continue
        wait = datetime.fromisoformat(start).timestamp() - datetime.fromisoformat(submit).timestamp()
        rows[job] = {"name": name, "state": state.split()[0], "submit": submit, "start": start, "end": end,
                     "queue_wait_s": wait}
    return rows


def shard_counts(paths: RunPaths, num_shards: int) -> dict[str, int]:
    return {m: sum(paths.shard_predictions(m, s).is_file() and paths.shard_metrics(m, s).is_file()
                   for s in range(num_shards)) for m in MODELS}


def progress_line(paths: RunPaths) -> str:
    cfg = load_config(paths.config)
    done = shard_counts(paths, cfg.eval.num_shards)
    trained = "done" if paths.train_metrics.is_file() else "pending"
    report = "written" if paths.report_md.is_file() else "pending"
    return (f"finetune {trained}; shards base {done['base']}/{cfg.eval.num_shards}, "
            f"finetuned {done['finetuned']}/{cfg.eval.num_shards}; report {report}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    paths = RunPaths(args.run_dir)
    if not paths.config.is_file():
        print(f"hpcnli.status: {args.run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    print(f"run {paths.run_dir}\n{progress_line(paths)}")
    if paths.plan.is_file():
        plan = read_json(paths.plan)
        states = sacct_states(plan.get("job_ids", []))
        for i, sub in enumerate(plan["submissions"]):
            print(f"submission {i} (retries left {sub['retries_left']}):")
            for stage, v in sub["jobs"].items():
                if isinstance(v, dict):
                    tasks = {t: states.get(t, "?") for t in v["task_job_ids"]}
                    print(f"  {stage:<10} array {v['array_job_id']}: " + ", ".join(f"{t} {s}" for t, s in tasks.items()))
                elif v:
                    print(f"  {stage:<10} job {v}: {states.get(str(v), '?')}")
    else:
        print("ran with the local executor (no Slurm jobs)")
    print(f"logs: {paths.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
