"""Where a run stands: each stage's Slurm state (sacct) and its shards done/pending from the files.

python -m hpcnli.status results/<run>
python -m hpcnli.status results/<sweep>   # a line per run of the sweep, and its report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcnli.cluster.commands import job_states
from hpcnli.config import load_config
from hpcnli.errors import run_command
from hpcnli.io import RunFileError
from hpcnli.records import Report
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.lock import lock_is_held
from hpcnli.run.paths import SWEEP_PLAN, RunPaths
from hpcnli.run.stages import STAGES
from hpcnli.run.state import remaining_work


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


def validity_lines(cfg, paths: RunPaths) -> list[str]:
    """What is valid and current (the checks the reducer makes), not what exists; and whether a submit is at
    work on the run now (it holds the run's lock: the local executor, or a submit still queueing)."""
    work = remaining_work(cfg, paths)
    busy = "; a submit is working on it now" if lock_is_held(paths) else ""
    lines = []
    for s in STAGES:
        if s.gathers:
            continue
        todo, total = work.todo(s), len(s.tasks(cfg))
        state = "valid" if not todo else (f"{total - len(todo)}/{total} valid" if s.sharded else "to do")
        lines.append(f"{s.name:<10} {state}" + (f" (to do: {todo})" if s.sharded and todo else ""))
    lines += [f"  why: {why}" for why in work.why]
    if not paths.report_json.is_file():
        report = "not written"
    else:
        try:
            rep = Report.read(paths.report_json)
        except RunFileError as e:
            report = f"unreadable ({e})"
        else:
            if not rep.complete:
                report = f"incomplete ({len(rep.problems)} problem(s))"
            elif work.before_gathering():
                report = "stale: outputs changed since it was written; complete the run with --resume"
            else:
                report = "complete and current"
    return lines + [f"report     {report}{busy}"]


def show_sweep(sweep_dir: str) -> int:
    from hpcnli.records import SweepPlan, SweepReport
    from hpcnli.sweeps.grid import SweepPaths
    from hpcnli.sweeps.state import status_lines

    paths = SweepPaths(Path(sweep_dir))
    plan = SweepPlan.read(paths.plan)
    print(f"sweep {paths.sweep_dir}: {len(plan.points)} points x {len(plan.seeds)} seeds")
    print("\n".join(status_lines(paths, plan)))
    ledger = SubmissionLedger(paths)
    if ledger.exists():
        job = ledger.last_reduce_job()
        print(f"sweep reduce job {job}: {job_states([job]).get(job, 'unknown to sacct')}" if job else "")
    if paths.report_json.is_file():
        rep = SweepReport.read(paths.report_json)
        winner = f"winner {rep.winner['point']}" if rep.winner else "no winner"
        state = "complete" if rep.complete else f"incomplete: {len(rep.problems)} run(s) left out"
        print(f"report     {state}; {winner}")
    else:
        print("report     pending")
    return 0


def show(run_dir: str) -> int:
    if (Path(run_dir) / SWEEP_PLAN).is_file():
        return show_sweep(run_dir)
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        print(f"hpcnli.status: {run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    print(f"run {paths.run_dir}")
    print("\n".join(validity_lines(load_config(paths.config), paths)))
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
