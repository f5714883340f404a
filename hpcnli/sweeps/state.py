"""Where a sweep stands, from its runs' files: what each run has left, and a line per run for `status`."""

from __future__ import annotations

from hpcnli.config import load_config
from hpcnli.records import SweepPlan
from hpcnli.run.stages import EVAL_BASE, REDUCE, Work
from hpcnli.run.state import progress_line, remaining_work
from hpcnli.sweeps.grid import SweepPaths


def sweep_work(paths: SweepPaths, plan: SweepPlan, queued: dict[str, dict[str, str]] | None = None) -> dict[str, Work]:
    """Each run's remaining work before the gathering stage: the base model only where the run owns its base group
    (the others read its shards), nothing of a stage the cluster still holds (`queued`: run -> stage -> job id).
    Unlike a single run's retry policy, a failed fine-tune is redone: in a sweep it is one point's seed, and the
    others are not held back by it. The runs' reduces are the sweep's reduce's, not listed here."""
    works = {}
    for entry in plan.runs:
        run = paths.run(entry["run"])
        work = remaining_work(load_config(run.config), run)
        held = (queued or {}).get(entry["run"], {})
        for name in held:
            work.tasks[name] = []
        if entry["base_owner"] != entry["run"]:
            work.tasks[EVAL_BASE.name] = []
        work.tasks[REDUCE.name] = []
        works[entry["run"]] = work
    return works


def status_lines(paths: SweepPaths, plan: SweepPlan) -> list[str]:
    lines = []
    for entry in plan.runs:
        run = paths.run(entry["run"])
        owner = "" if entry["base_owner"] == entry["run"] else f" (base shards: {entry['base_owner']}'s)"
        lines.append(f"  {entry['run']:<10} {progress_line(load_config(run.config), run)}{owner}")
    return lines
