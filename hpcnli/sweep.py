"""Plan a sweep (recipes x seeds, each an ordinary run) under results/<sweep>/, run it, compare the recipes.

    python -m hpcnli.sweep --config jobs/snli_cpu.yaml train.learning_rate=3e-4,1e-3 lora.r=8,16 --seeds 0,1,2
    python -m hpcnli.sweep --sweep jobs/sweeps/snli_lr.yaml [--partition gpu]   # the same as a YAML file
    python -m hpcnli.sweep --resume results/<sweep>                              # redo what is missing

`key=a,b` sweeps a key over its values (Hydra's multirun syntax; commas inside [..] or quotes do not
split); `key=a` sets it for every point. Every run is checked before anything runs or is queued.
Locally the runs go one at a time; on Slurm (--partition) the fine-tunes go as one array, the base model
is scored once per distinct base, and one reduce job writes results/<sweep>/report.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from hpcnli.cluster.commands import scheduler_limits
from hpcnli.config import load_config
from hpcnli.errors import Interrupted, raise_on_sigterm, run_command
from hpcnli.launch import local
from hpcnli.logs import setup_logging
from hpcnli.records import SweepPlan
from hpcnli.run.planning import PlanError, check_resumable, slurm_problem
from hpcnli.submit import RUN_NAME, check_local_cpus
from hpcnli.sweeps.grid import Sweep, SweepPaths, create_sweep, is_sweep, point_configs, slurm_jobs
from hpcnli.sweeps.state import status_lines, sweep_work


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="the base run config (YAML) every point starts from")
    p.add_argument("--sweep", help="a sweep file (jobs/sweeps/*.yaml: name, config, overrides, grid, seeds)")
    p.add_argument("--seeds", default="0,1", help="training seeds (train.seed) of every point (default: 0,1)")
    p.add_argument("--executor", choices=("local", "slurm"), default=None, help="default: slurm with --partition")
    p.add_argument("--partition", help="Slurm partition (overrides resources.partition)")
    p.add_argument("--name", help="sweep directory name under output_root (default: <name>-<timestamp>)")
    p.add_argument("--plan-only", action="store_true", help="check and plan every run, run nothing")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="complete an existing sweep: redo only what is missing")
    p.add_argument("--wait", action="store_true", help="slurm: block until the sweep's report is written")
    p.add_argument("items", nargs="*", metavar="key=a,b", help="swept keys (values with commas) and overrides")
    args = p.parse_intermixed_args(argv)  # key=value items before and after the options
    args.executor = args.executor or ("slurm" if args.partition else "local")
    if args.resume and (args.config or args.sweep or args.items or args.name):
        p.error("--resume keeps the sweep's own plan; --config, --sweep, --name and key=value cannot go with it")
    if not args.resume and bool(args.config) == bool(args.sweep):
        p.error("give the base config with --config (and key=a,b items) or a sweep file with --sweep, one of them")
    if args.sweep and args.items:
        p.error("--sweep files hold their grid and overrides; edit the file instead of adding key=value")
    return args


def plan(args) -> tuple[SweepPaths, SweepPlan]:
    """The sweep planned now (every run's config checked, and on Slurm the partition and the queue's room, before
    any directory is made), or the one to resume."""
    if args.resume:
        if not is_sweep(args.resume):
            raise PlanError(f"--resume {args.resume}: no sweep.json there; is it a sweep directory?")
        paths = SweepPaths(Path(args.resume))
        return paths, SweepPlan.read(paths.plan)
    sweep = Sweep.from_file(args.sweep) if args.sweep else Sweep.from_cli(args.config, args.items, args.seeds, None)
    if args.name is not None and not RUN_NAME.fullmatch(args.name):
        raise PlanError(f"--name: {args.name!r} must be letters, digits, '-', '_' or '.' (a directory in output_root)")
    partition = [f"resources.partition={args.partition}"] if args.partition else []
    planned = point_configs(sweep, partition)
    first = planned[0][2]
    if args.executor == "slurm":
        why = slurm_problem(first)
        if why:
            raise PlanError(why)
        jobs, room = slurm_jobs(planned), scheduler_limits()["MaxJobCount"]
        if jobs > room:
            raise PlanError(
                f"the sweep would queue {jobs} jobs (array tasks count one each: {len(planned)} runs x "
                f"(1 fine-tune + {first.eval.num_shards} eval shards), base shards and a reduce), but this cluster "
                f"holds at most {room} (MaxJobCount); narrow the grid, fewer seeds, or lower eval.num_shards"
            )
    name = args.name or f"{sweep.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = create_sweep(sweep, Path(first.output_root) / name, planned)
    return paths, SweepPlan.read(paths.plan)


def check_runs(args, paths: SweepPaths, plan: SweepPlan) -> None:
    """What hpcnli.submit checks of one run before anything runs or is queued, for each run of the sweep."""
    partition = [f"resources.partition={args.partition}"] if args.partition else []
    for entry in plan.runs:
        run = paths.run(entry["run"])
        cfg = load_config(run.config, partition)
        if args.executor == "slurm":
            why = slurm_problem(cfg)
            if why:
                raise PlanError(why)
        else:
            check_local_cpus(cfg)
        if args.resume:
            check_resumable(cfg, run)


def start(args) -> int:
    paths, sweep_plan = plan(args)
    print(f"sweep directory: {paths.sweep_dir}")
    for p in sweep_plan.points:
        print(f"  {p['point']}: " + ", ".join(f"{k}={v}" for k, v in p["settings"].items()))
    print(f"  seeds {sweep_plan.seeds}; base model scored once for each of {len(sweep_plan.base_groups)} base(s)")
    if args.plan_only:
        print(f"planned {len(sweep_plan.runs)} runs in {paths.sweep_dir}")
        return 0
    check_runs(args, paths, sweep_plan)
    works = sweep_work(paths, sweep_plan)
    print("\n".join(status_lines(paths, sweep_plan)), flush=True)
    resume = f"python -m hpcnli.sweep --resume {paths.sweep_dir}"
    retries = load_config(paths.run(sweep_plan.runs[0]["run"]).config).resources.max_retries
    try:
        if args.executor == "local":
            return local.run_sweep(paths, sweep_plan, works, retries)
        from hpcnli.launch import slurm  # imports submitit, which local runs do not need

        try:
            return slurm.submit_sweep(paths, sweep_plan, works, wait=args.wait)
        except (slurm.SubmissionRefused, subprocess.CalledProcessError) as e:
            print(
                f"hpcnli.sweep: sbatch refused a job: {e}\nNothing computed is lost; fix it and run: {resume}",
                file=sys.stderr,
            )
            return 2
    except (KeyboardInterrupt, Interrupted):
        print(f"hpcnli.sweep: stopped; nothing computed is lost: {resume}", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_command("hpcnli.sweep", lambda: start(args))


if __name__ == "__main__":
    raise_on_sigterm()
    sys.exit(main())
