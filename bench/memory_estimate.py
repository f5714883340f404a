"""Each stage's planned memory estimate against its measured peak, for finished runs.

    python -m bench.memory_estimate results/<run> [more runs]

Measured: on a GPU the peak of allocated memory; on a CPU the resident peak of the stage's work (the peak
since the model was loaded, less the process's resident memory before it). Estimated: the run's
memory_plan.json (hpcnli.model.footprint), made before anything ran.
"""

from __future__ import annotations

import argparse

from hpcnli.io import read_json
from hpcnli.model.footprint import GiB
from hpcnli.run.paths import MODELS, RunPaths


def measured_mb(memory: dict) -> tuple[float | None, str]:
    if "gpu_peak_allocated_mb" in memory:
        return memory["gpu_peak_allocated_mb"], "GPU allocated"
    return memory.get("work_peak_rss_mb"), "CPU resident"


def rows(paths: RunPaths) -> list[tuple[str, float, float, str]]:
    out = []
    stages = [("finetune", paths.train_metrics)]
    stages += [
        (f"eval {m} {f.name.split('.')[0]}", f)
        for m in MODELS
        for f in sorted(paths.shard_dir(m).glob("*.metrics.json"))
    ]
    for name, f in stages:
        if not f.is_file():
            continue
        m = read_json(f)
        est = (m.get("memory_estimate") or {}).get("total_bytes")
        got, kind = measured_mb(m.get("memory", {}))
        if est is not None and got:
            out.append((name, est / 2**20, got, kind))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    print(
        "| run | stage | estimated GiB | measured GiB | measured / estimated | measured as |\n|---|---|---|---|---|---|"
    )
    for run in args.runs:
        for name, est, got, kind in rows(RunPaths(run)):
            print(
                f"| {RunPaths(run).name} | {name} | {est * 2**20 / GiB:.2f} | {got * 2**20 / GiB:.2f} | "
                f"{got / est:.2f} | {kind} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
