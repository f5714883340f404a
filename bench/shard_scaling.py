"""Shard scaling on a Slurm cluster: the test set scored by 1 shard against 2 shards, through sbatch.

    eval "$(slurm/local-cluster.sh env)"    # a cluster must be up (slurm/local-cluster.sh up, as root)
    python -m bench.shard_scaling [--config jobs/snli_cpu.yaml] [--examples 0] [--partition gpu]

Each layout is a real run directory (`python -m hpcnli.submit --plan-only`) whose base-model shards run
as one array of `slurm/eval_array.sh`, submitted with `sbatch --wait`. Wall time is Slurm's (sacct):
from submission to the end of the last task, scheduling and Python start-up included. Layouts: 1 shard
on 1 CPU, 2 shards on 1 CPU each (strong scaling: twice the CPUs), and 1 shard on 2 CPUs (the same CPUs
as the 2 shards, in one process). Prints a table with model load and prediction seconds per shard (from each shard's
metrics file) and the ratio of each wall time to the first layout's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from hpcnli.cluster.commands import job_records
from hpcnli.run.paths import RunPaths

LAYOUTS = [  # (label, shards, CPUs per shard)
    ("1 shard, 1 CPU", 1, 1),
    ("2 shards, 1 CPU each", 2, 1),
    ("1 shard, 2 CPUs", 1, 2),
]


def slurm_wall_s(job: str, tasks: int) -> float:
    """Submission of the array to the end of its last task, in Slurm's own times (1 s resolution).

    sbatch --wait polls, so timing it would round up; sacct may lag the end of the job by a moment.
    """
    for _ in range(30):
        times = [r for r in job_records([job]).values() if r["end"][:1].isdigit()]
        if len(times) == tasks:
            submits = [datetime.fromisoformat(r["submit"]) for r in times]
            ends = [datetime.fromisoformat(r["end"]) for r in times]
            return (max(ends) - min(submits)).total_seconds()
        time.sleep(1)
    raise SystemExit(f"sacct has no end time for the {tasks} tasks of job {job}: {job_records([job])}")


def run_layout(args, root: Path, shards: int, cpus: int) -> dict:
    run_dir = root / f"shards{shards}-cpus{cpus}"
    overrides = [
        f"data.max_test_examples={args.examples}",
        f"eval.num_shards={shards}",
        f"resources.cpus_per_task={cpus}",
        f"resources.partition={args.partition}",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcnli.submit",
            "--plan-only",
            "--config",
            args.config,
            "--run-dir",
            str(run_dir),
            *overrides,
        ],
        check=True,
    )
    env = {**os.environ, "HPCNLI_PYTHON": sys.executable}
    job = (
        subprocess.run(
            [
                "sbatch",
                "--wait",
                "--parsable",
                f"--array=0-{shards - 1}",
                f"--cpus-per-task={cpus}",
                f"--partition={args.partition}",
                f"--output={run_dir}/slurm-%A_%a.out",
                "slurm/eval_array.sh",
                str(run_dir),
                "base",
                str(run_dir / "config.yaml"),
            ],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    wall = slurm_wall_s(job, shards)
    metrics = [json.loads(p.read_text()) for p in sorted(RunPaths(run_dir).shard_dir("base").glob("*.metrics.json"))]
    if len(metrics) != shards:
        raise SystemExit(
            f"{run_dir}: {len(metrics)} shard metrics files for {shards} shards; see {run_dir}/slurm-*.out"
        )
    return {
        "wall_s": wall,
        "load_s": [m["model_load_s"] for m in metrics],
        "predict_s": [m["runtime_s"] for m in metrics],
        "examples": sum(m["examples"] for m in metrics),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/snli_cpu.yaml")
    parser.add_argument("--examples", type=int, default=0, help="test pairs (default: 0 = the whole test set)")
    parser.add_argument("--partition", default="gpu")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR")
    args = parser.parse_args(argv)
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        parser.error(
            "no reachable Slurm cluster: start one (sudo slurm/local-cluster.sh up) and "
            'eval "$(slurm/local-cluster.sh env)"'
        )
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hpcnli-shards-", dir="results"))
    rows = []
    for label, shards, cpus in LAYOUTS:
        rows.append((label, run_layout(args, root, shards, cpus)))
        print(f"{label}: {rows[-1][1]['wall_s']:.1f} s", flush=True)
    if not args.keep:
        shutil.rmtree(root)

    first = rows[0][1]["wall_s"]
    print(
        f"\n{rows[0][1]['examples']} test pairs, base model, {args.config}; sinfo node: "
        f"{subprocess.run(['sinfo', '-h', '-o', '%N %c CPUs'], capture_output=True, text=True).stdout.strip()}\n"
    )
    print(
        "| layout | wall s (sacct: submit to last end) | model load s per shard | predict s per shard "
        "| wall / 1 shard on 1 CPU |"
    )
    print("|---|---|---|---|---|")

    def fmt(xs):
        return " / ".join(f"{x:.1f}" for x in xs)

    for label, r in rows:
        print(
            f"| {label} | {r['wall_s']:.1f} | {fmt(r['load_s'])} | {fmt(r['predict_s'])} | {r['wall_s'] / first:.2f} |"
        )
    two, one_wide = rows[1][1]["wall_s"], rows[2][1]["wall_s"]
    print(
        f"\nstrong scaling, 2 shards on 2 CPUs: {two / first:.2f} of the 1-shard wall time "
        f"(efficiency {first / (2 * two):.2f}); against 1 shard on the same 2 CPUs: {two / one_wide:.2f}"
    )


if __name__ == "__main__":
    main()
