"""The table of bench/gpu_check.sh: training and evaluation speed, load time and peak memory per run.

python -m bench.gpu_table RUN_DIR [RUN_DIR ...] PIPELINE.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.memory_estimate import measured_mb
from hpcnli.io import read_json
from hpcnli.run.paths import MODELS, RunPaths


def peak_gb(memory: dict) -> str:
    mb, kind = measured_mb(memory)
    reserved = f", {memory['gpu_peak_reserved_mb'] / 1024:.1f} reserved" if "gpu_peak_reserved_mb" in memory else ""
    return f"{(mb or 0) / 1024:.2f} GB {kind}{reserved}"


def run_rows(paths: RunPaths) -> list[str]:
    cfg = read_json(paths.report_json)["config"] if paths.report_json.is_file() else {}
    t = read_json(paths.train_metrics)
    rows = [
        f"| {paths.name} | training | {t['examples_per_s']:.1f} pairs/s, {t['tokens_per_s']:,.0f} tokens/s "
        f"({t['examples_seen']:,} pairs, {t['steps']} steps of {t.get('batch', '?')}, checkpointing "
        f"{'on' if t.get('gradient_checkpointing') else 'off'}) | {t['model_load_s']:.1f} | {peak_gb(t['memory'])} |"
    ]
    for model in MODELS:
        shards = [read_json(f) for f in sorted(paths.shard_dir(model).glob("*.metrics.json"))]
        n = sum(s["examples"] for s in shards)
        secs = sum(s["runtime_s"] for s in shards)
        loads = ", ".join(f"{s['model_load_s']:.1f} ({s.get('weights_from', 'loaded')})" for s in shards)
        batch = cfg.get("eval", {}).get("batch_tokens") or f"{cfg.get('eval', {}).get('batch_size')} pairs"
        worst = max(shards, key=lambda s: measured_mb(s["memory"])[0] or 0)
        total_s = secs + sum(s["model_load_s"] for s in shards)
        rows.append(
            f"| {paths.name} | eval {model} | {n / secs:,.0f} pairs/s per shard ({n:,} pairs in {len(shards)} "
            f"shard(s), batch {batch}; {n / total_s:,.0f} pairs/s with loading) | {loads} | "
            f"{peak_gb(worst['memory'])} |"
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    print("| run | stage | speed | load s | peak memory |\n|---|---|---|---|---|")
    for item in args.runs:
        if not Path(item).exists():  # a step that failed (gpu_check.sh's steps.txt says which): the rest still shows
            print(f"| {Path(item).name} | not run | see steps.txt | | |")
        elif item.endswith(".json"):
            r = read_json(Path(item))
            peak = (
                f"{r['peak_gpu_allocated_mb'] / 1024:.1f} GB allocated"
                if r.get("peak_gpu_allocated_mb")
                else "n/a (CPU)"
            )
            print(
                f"| pipeline loop | eval, one pair per call, bf16 | {r['pairs_per_s']:.1f} pairs/s "
                f"({r['pairs']} pairs) | "
                f"{r['load_s']:.1f} | {peak} |"
            )
        else:
            try:
                print("\n".join(run_rows(RunPaths(Path(item)))))
            except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
                print(f"| {Path(item).name} | incomplete ({e.__class__.__name__}: {e}) | see steps.txt | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
