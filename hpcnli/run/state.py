"""Where a run stands, from its files: which shards are valid, what is left to compute.

The reducer merges what `collect` accepts; `remaining_work` (what --resume and the reduce job's
retries redo) is built on the same shard checks, so both agree on what counts as done.
"""

from __future__ import annotations

import json

from hpcnli.data.nli import shard_bounds
from hpcnli.io import read_json
from hpcnli.run.paths import MODELS, RunPaths


def check_shard(paths: RunPaths, cfg, model: str, shard: int, expected_ids: list[str]) -> tuple[list[dict], str | None]:
    """The shard's rows, or the reason the shard is unusable."""
    pred_file, metrics_file = paths.shard_predictions(model, shard), paths.shard_metrics(model, shard)
    if not pred_file.is_file() or not metrics_file.is_file():
        return [], "missing"
    try:
        metrics = read_json(metrics_file)
        with open(pred_file, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [], f"unreadable ({e.__class__.__name__}: {e}); the file is truncated or corrupt"
    if metrics.get("config_hash") != cfg.hash():
        return [], f"written for config {metrics.get('config_hash')}, not this run's {cfg.hash()}"
    if metrics.get("model") != model or metrics.get("shard") != shard:
        return [], f"metrics file describes {metrics.get('model')} shard {metrics.get('shard')}"
    for i, r in enumerate(rows):
        if not (isinstance(r, dict) and {"id", "gold", "pred", "scores"} <= r.keys()
                and r["pred"] in (0, 1, 2) and isinstance(r["scores"], list) and len(r["scores"]) == 3):
            return [], f"row {i + 1} does not have id, gold, pred in 0..2 and 3 scores"
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        return [], f"{len(ids) - len(set(ids))} duplicated example id(s)"
    if ids != expected_ids:
        foreign = len(set(ids) - set(expected_ids))
        return [], (f"{len(ids)} rows for {len(expected_ids)} expected examples "
                    f"({foreign} id(s) that belong to no example of this shard)")
    return rows, None


def collect(paths: RunPaths, cfg, manifest: dict) -> tuple[dict, dict, list[dict]]:
    """Predictions by model and id, shard metrics, and the problems found (empty when complete)."""
    ids = manifest["ids"]
    predictions: dict = {m: {} for m in MODELS}
    shard_metrics: dict = {m: [] for m in MODELS}
    problems = []
    for model in MODELS:
        for shard in range(cfg.eval.num_shards):
            lo, hi = shard_bounds(len(ids), cfg.eval.num_shards, shard)
            rows, why = check_shard(paths, cfg, model, shard, ids[lo:hi])
            if why:
                problems.append({"model": model, "shard": shard, "examples": hi - lo, "problem": why,
                                 "file": str(paths.shard_predictions(model, shard))})
                continue
            shard_metrics[model].append(read_json(paths.shard_metrics(model, shard)))
            for r in rows:
                predictions[model][r["id"]] = r
    return predictions, shard_metrics, problems


def training_done(paths: RunPaths) -> bool:
    return (paths.adapter / "adapter_config.json").is_file() and paths.train_metrics.is_file()


def remaining_work(cfg, paths: RunPaths, force: bool = False) -> dict:
    """What remains: finetune (bool), shards per model (lists of indices); the reduce stage always runs."""
    every = list(range(cfg.eval.num_shards))
    if force:
        return {"finetune": True, **{m: every for m in MODELS}}
    finetune = not training_done(paths)
    _, _, problems = collect(paths, cfg, read_json(paths.test_manifest))
    remaining = {"finetune": finetune}
    for m in MODELS:
        bad = {p["shard"] for p in problems if p["model"] == m}
        remaining[m] = every if m == "finetuned" and finetune else sorted(bad)
    return remaining


def shard_counts(paths: RunPaths, num_shards: int) -> dict[str, int]:
    return {m: sum(paths.shard_predictions(m, s).is_file() and paths.shard_metrics(m, s).is_file()
                   for s in range(num_shards)) for m in MODELS}


def progress_line(cfg, paths: RunPaths) -> str:
    done = shard_counts(paths, cfg.eval.num_shards)
    trained = "done" if paths.train_metrics.is_file() else "pending"
    report = "written" if paths.report_md.is_file() else "pending"
    return (f"finetune {trained}; shards base {done['base']}/{cfg.eval.num_shards}, "
            f"finetuned {done['finetuned']}/{cfg.eval.num_shards}; report {report}")
