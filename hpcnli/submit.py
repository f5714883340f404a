"""Plan a run under results/<run>/ and execute it: fine-tune, eval base and fine-tuned in N shards, reduce.

    python -m hpcnli.submit --config jobs/default.yaml                        # local, this machine
    python -m hpcnli.submit --config jobs/snli_cpu.yaml --partition gpu       # Slurm, via submitit
    python -m hpcnli.submit --resume results/<run>                            # redo what is missing

Everything that can be checked is checked here, before anything runs or is queued.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from hpcnli import data as nli_data
from hpcnli import modeling
from hpcnli.config import ConfigError, RunConfig, load_config, save_config
from hpcnli.io import read_json, write_json
from hpcnli.logs import setup_logging
from hpcnli.paths import MODELS, RunPaths
from hpcnli.runlock import RunLock, RunLocked

log = logging.getLogger("hpcnli.submit")


class PlanError(ValueError):
    """The run cannot start as configured; the message says what to change."""


def check_model(cfg: RunConfig) -> None:
    """Tokenizer, label words and LoRA targets, checked on an empty (meta-device) model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = modeling.load_tokenizer(cfg)
    modeling.label_token_ids(tokenizer, cfg.task.label_words)
    where, kwargs = modeling.resolve_model(cfg.model)
    try:
        model_config = AutoConfig.from_pretrained(where, trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise modeling.ModelError(modeling.not_found_message(where, e)) from None
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(model_config, trust_remote_code=cfg.model.trust_remote_code)
    modeling.check_target_modules(empty, cfg.lora.target_modules)
    modeling.check_top_layers(model_config, cfg.lora.top_layers)


def provenance() -> dict:
    """Code and package versions at planning time, for the report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def git(*args):
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    packages = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "evaluate", "submitit"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "python": platform.python_version(), "packages": packages, "planned_on": platform.node(),
            "planned_at": datetime.now().isoformat(timespec="seconds")}


def plan(cfg: RunConfig, run_dir: Path) -> RunPaths:
    """Validate data and model, then write the run's config, test-set manifest and plan."""
    train = nli_data.load_split(cfg, "train")
    test = nli_data.load_split(cfg, "test")
    if cfg.eval.num_shards > len(test.examples):
        raise PlanError(f"eval.num_shards: {cfg.eval.num_shards} shards for {len(test.examples)} test examples; "
                        f"use at most {len(test.examples)}")
    if len({e["id"] for e in test.examples}) != len(test.examples):
        raise PlanError(f"data.test: {test.source} has duplicated example ids")
    check_model(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise PlanError(f"{run_dir} exists; use --resume {run_dir} to complete it, or another name") from None
    except OSError as e:
        raise PlanError(f"cannot create the run directory {run_dir} ({e.strerror}); "
                        "set output_root to a writable directory") from None
    paths = RunPaths(run_dir)
    save_config(cfg, paths.config)
    write_json(paths.provenance, provenance())
    write_json(paths.test_manifest, {"source": test.source, "examples": len(test.examples), "dropped": test.dropped,
                                     "ids_hash": test.ids_hash, "ids": [e["id"] for e in test.examples]})
    log.info("planned %s: %d train examples (%s), %d test examples (%s), %d shards per model",
             run_dir, len(train.examples), train.source, len(test.examples), test.source, cfg.eval.num_shards)
    return paths


def todo(cfg: RunConfig, paths: RunPaths, force: bool) -> dict:
    """What remains: finetune (bool), shards per model (lists of indices), reduce (always)."""
    from hpcnli.reduce import collect

    every = list(range(cfg.eval.num_shards))
    if force:
        return {"finetune": True, **{m: every for m in MODELS}}
    finetune = not (paths.adapter / "adapter_config.json").is_file() or not paths.train_metrics.is_file()
    _, _, problems = collect(paths, cfg, read_json(paths.test_manifest))  # the reducer's own shard checks
    remaining = {"finetune": finetune}
    for m in MODELS:
        bad = {p["shard"] for p in problems if p["model"] == m}
        remaining[m] = every if m == "finetuned" and finetune else sorted(bad)
    return remaining


# ---------------------------------------------------------------- local executor


def _run_stage(paths: RunPaths, name: str, args: list[str]) -> bool:
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_file = paths.logs / f"{name}.log"
    cmd = [sys.executable, "-m", *args]
    t0 = time.perf_counter()
    with open(log_file, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    print(f"  {name:<22} {status:<16} {time.perf_counter() - t0:7.1f} s   log: {log_file}", flush=True)
    return rc == 0


def run_local(cfg: RunConfig, paths: RunPaths, work: dict) -> int:
    """Each stage is its own process, in order; failed eval shards are retried resources.max_retries times."""
    run = str(paths.run_dir)
    if work["finetune"] and not _run_stage(paths, "finetune", ["hpcnli.finetune", run]):
        print("fine-tuning failed; the base-model shards still run", flush=True)
    for model in MODELS:
        for shard in work[model]:
            for attempt in range(cfg.resources.max_retries + 1):
                name = f"eval_{model}_{shard}" + (f"_retry{attempt}" if attempt else "")
                if _run_stage(paths, name, ["hpcnli.evaluate", run, "--model", model, "--shard", str(shard)]):
                    break
    ok = _run_stage(paths, "reduce", ["hpcnli.reduce", run])
    print(f"\nreport: {paths.report_md}" if ok else f"\nrun incomplete; see {paths.report_md}", flush=True)
    return 0 if ok else 1


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jobs/default.yaml", help="YAML run config (default: %(default)s)")
    p.add_argument("--executor", choices=("local", "slurm"), default=None,
                   help="local: run every stage here; slurm: submit through submitit "
                        "(default: slurm when --partition is given, else local)")
    p.add_argument("--partition", help="Slurm partition (overrides resources.partition)")
    p.add_argument("--name", help="run directory name under output_root (default: <config name>-<timestamp>)")
    p.add_argument("--run-dir", help="exact run directory (overrides --name and output_root)")
    p.add_argument("--plan-only", action="store_true",
                   help="validate and write the run directory, run nothing (the sbatch scripts use this)")
    p.add_argument("--resume", metavar="RUN_DIR", help="complete an existing run: redo only what is missing or invalid")
    p.add_argument("--force", action="store_true", help="with --resume: redo every stage")
    p.add_argument("--wait", action="store_true", help="slurm: block until the run ends, showing progress")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=10")
    args = p.parse_args(argv)
    if args.executor is None:
        args.executor = "slurm" if args.partition else "local"
    if args.force and not args.resume:
        p.error("--force goes with --resume RUN_DIR")
    return args


def prepare(args) -> tuple[RunConfig, RunPaths, dict]:
    if args.resume:
        paths = RunPaths(args.resume)
        if not paths.config.is_file():
            raise PlanError(f"--resume {args.resume}: no config.yaml there; is it a run directory?")
        if args.overrides:
            raise PlanError("--resume keeps the run's own config; start a new run to change it")
        cfg = load_config(paths.config, [f"resources.partition={args.partition}"] if args.partition else [])
        return cfg, paths, todo(cfg, paths, args.force)
    overrides = list(args.overrides) + ([f"resources.partition={args.partition}"] if args.partition else [])
    cfg = load_config(args.config, overrides)
    if args.executor == "slurm":
        from hpcnli.launch import check_partition

        why = check_partition(cfg.resources.partition)
        if why:
            raise PlanError(why)
    name = args.name or f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = plan(cfg, Path(args.run_dir) if args.run_dir else Path(cfg.output_root) / name)
    return cfg, paths, todo(cfg, paths, force=False)


def plan_once(args) -> RunPaths:
    """--plan-only for the sbatch scripts: several jobs may ask at once; the first plans, the rest reuse."""
    import fcntl

    if not args.run_dir:
        return prepare(args)[1]
    run_dir = Path(args.run_dir)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PlanError(f"cannot create the run directory {run_dir} ({e.strerror}); "
                        "choose a writable --run-dir or output_root") from None
    with open(run_dir.parent / f".{run_dir.name}.plan-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if RunPaths(run_dir).config.is_file():
            return RunPaths(run_dir)
        return prepare(args)[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        if args.plan_only:
            print(f"planned {plan_once(args).run_dir}")
            return 0
        cfg, paths, work = prepare(args)
        with RunLock(paths, args.executor):
            print(f"run directory: {paths.run_dir}\n"
                  f"to do: finetune={'yes' if work['finetune'] else 'done'}, base shards {work['base']}, "
                  f"finetuned shards {work['finetuned']}", flush=True)
            if args.executor == "local":
                return run_local(cfg, paths, work)
            import submitit

            from hpcnli import launch

            try:
                return launch.submit_slurm(cfg, paths, work, wait=args.wait)
            except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as e:
                print(f"hpcnli.submit: sbatch refused the job: {e}\nNothing computed in {paths.run_dir} is lost; "
                      f"fix the resources and run: python -m hpcnli.submit --resume {paths.run_dir}", file=sys.stderr)
                return 2
    except (ConfigError, PlanError, nli_data.DataError, modeling.ModelError, RunLocked) as e:
        print(f"hpcnli.submit: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
