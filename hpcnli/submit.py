"""Plan a run under results/<run>/ and execute it: fine-tune, eval base and fine-tuned in N shards, reduce.

    python -m hpcnli.submit --config jobs/default.yaml                        # local, this machine
    python -m hpcnli.submit --config jobs/snli_cpu.yaml --partition gpu       # Slurm, via submitit
    python -m hpcnli.submit --resume results/<run>                            # redo what is missing

Everything that can be checked is checked here, before anything runs or is queued.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from hpcnli.config import RunConfig, load_config
from hpcnli.errors import Interrupted, raise_on_sigterm, run_command
from hpcnli.launch import local
from hpcnli.logs import setup_logging
from hpcnli.run import eval_resources, memory_plan, time_plan
from hpcnli.run.lock import RunLock
from hpcnli.run.paths import SWEEP_PLAN, RunPaths
from hpcnli.run.planning import PlanError, check_resumable, create_once, create_run, slurm_problem
from hpcnli.run.stages import Work
from hpcnli.run.state import remaining_work

DEFAULT_CONFIG = "jobs/default.yaml"
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"YAML run config (default: {DEFAULT_CONFIG})")
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default=None,
        help="local: run every stage here; slurm: submit through submitit "
        "(default: slurm when --partition is given, else local)",
    )
    p.add_argument("--partition", help="Slurm partition (overrides resources.partition)")
    p.add_argument("--name", help="run directory name under output_root (default: <config name>-<timestamp>)")
    p.add_argument("--run-dir", help="exact run directory (overrides --name and output_root)")
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="validate and write the run directory, run nothing (the sbatch scripts use this)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="complete an existing run: redo only what is missing or invalid")
    p.add_argument("--force", action="store_true", help="with --resume: redo every stage")
    p.add_argument("--wait", action="store_true", help="slurm: block until the run ends, showing progress")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=10")
    args = p.parse_args(argv)
    if args.executor is None:
        args.executor = "slurm" if args.partition else "local"
    if args.force and not args.resume:
        p.error("--force goes with --resume RUN_DIR")
    given = [
        flag
        for flag, value in (("--config", args.config), ("--name", args.name), ("--run-dir", args.run_dir))
        if value is not None
    ]
    if args.resume and given:  # nothing given is silently ignored
        p.error(f"--resume keeps the run's own config and directory; {', '.join(given)} cannot go with it")
    args.config = args.config or DEFAULT_CONFIG
    return args


def prepare(args) -> tuple[RunConfig, RunPaths, Work]:
    """The run's config and directory (planned now, or an existing one for --resume) and what is left to do."""
    partition = [f"resources.partition={args.partition}"] if args.partition else []
    if args.resume:
        paths = RunPaths(args.resume)
        if (paths.run_dir / SWEEP_PLAN).is_file():
            raise PlanError(f"--resume {args.resume} is a sweep; complete it with python -m hpcnli.sweep --resume")
        if not paths.config.is_file():
            raise PlanError(f"--resume {args.resume}: no config.yaml there; is it a run directory?")
        if args.overrides:
            raise PlanError("--resume keeps the run's own config; start a new run to change it")
        cfg = load_config(paths.config, partition)
    else:
        cfg = load_config(args.config, list(args.overrides) + partition)
    if args.executor == "slurm":
        why = slurm_problem(cfg)
        if why:
            raise PlanError(why)
    elif cfg.resources.nodes > 1:
        raise PlanError(
            f"resources.nodes: {cfg.resources.nodes} nodes need Slurm (--partition); the local executor "
            "runs on this machine only"
        )
    if args.executor == "local" and not args.plan_only:
        check_local_cpus(cfg)
    if args.resume:
        check_resumable(cfg, paths)
        return cfg, paths, remaining_work(cfg, paths, args.force)
    if args.name is not None and not RUN_NAME.fullmatch(args.name):
        raise PlanError(
            f"--name: {args.name!r} must be letters, digits, '-', '_' or '.' (a directory in output_root, "
            "not a path); use --run-dir for a run directory elsewhere"
        )
    name = args.name or f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = create_run(cfg, Path(args.run_dir) if args.run_dir else Path(cfg.output_root) / name)
    cfg = load_config(paths.config)  # as planned: "auto" batches and checkpointing resolved
    return cfg, paths, remaining_work(cfg, paths)


def check_local_cpus(cfg: RunConfig) -> None:
    """The local executor runs the fine-tune's processes here: they must not ask for more CPUs than it has."""
    cpus = cfg.resources.train_processes_per_node * cfg.resources.cpus_per_task
    if cpus > (os.cpu_count() or 1):
        raise PlanError(
            f"resources.cpus_per_task: {cfg.resources.train_processes_per_node} training process(es) x "
            f"{cfg.resources.cpus_per_task} CPUs = {cpus}, but this machine has {os.cpu_count()}; lower them "
            "(the local executor runs here)"
        )


def print_plan(paths: RunPaths) -> None:
    """Each stage's estimated memory and the fine-tune's time, as planned."""
    planned = memory_plan.read_plan(paths)
    if planned is not None:  # runs planned before memory plans have none
        print(
            "\n".join(
                memory_plan.lines(planned)
                + time_plan.lines(planned.get("time"))
                + eval_resources.lines(planned.get("eval_task"))
            ),
            flush=True,
        )


def start(args) -> int:
    """Plan (or reload) the run, then run it here or submit it; returns the exit status."""
    if args.plan_only:
        paths = create_once(Path(args.run_dir), lambda: prepare(args)[1]) if args.run_dir else prepare(args)[1]
        print_plan(paths)
        print(f"planned {paths.run_dir}")
        return 0
    cfg, paths, work = prepare(args)
    resume = f"python -m hpcnli.submit --resume {paths.run_dir}"
    with RunLock(paths) as lock:
        if args.force:  # only now, with every check passed and the run held: the fine-tune keeps a complete,
            paths.train_metrics.unlink(missing_ok=True)  # current adapter unless its metrics are gone
        print(
            f"run directory: {paths.run_dir}\n"
            f"to do: finetune={'yes' if work.finetune else 'done'}, base shards {work.shards('base')}, "
            f"finetuned shards {work.shards('finetuned')}",
            flush=True,
        )
        for why in work.why:
            print(f"  redo: {why}", flush=True)
        print_plan(paths)
        try:
            if args.executor == "local":
                return local.run_stages(cfg, paths, work, keep_fds=(lock.fileno(),))
            from hpcnli.launch import slurm  # imports submitit, which local runs do not need

            try:
                return slurm.submit_slurm(cfg, paths, work, wait=args.wait)
            except (slurm.SubmissionRefused, subprocess.CalledProcessError) as e:
                print(
                    f"hpcnli.submit: sbatch refused the job: {e}\nNothing computed in {paths.run_dir} is lost; "
                    f"fix the resources and run: {resume}",
                    file=sys.stderr,
                )
                return 2
        except (KeyboardInterrupt, Interrupted):
            print(
                f"hpcnli.submit: stopped, and the stage that was running with it; nothing computed is lost: {resume}",
                file=sys.stderr,
            )
            return 130


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_command("hpcnli.submit", lambda: start(args))


if __name__ == "__main__":
    raise_on_sigterm()
    sys.exit(main())
