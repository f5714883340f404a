"""Where a run stands, from its files: which outputs are valid and current, what is left to compute.

Every stage output says what it was computed from: the adapter (train_metrics.json `inputs`) the
config and training-data hashes, each shard the config hash, the test set's content hash and, for the
fine-tuned model, the adapter's sha256. An output whose inputs changed is stale. The reducer merges
only what `collect` accepts; `remaining_work` (what --resume and the reduce job's retries redo) is
built on the same checks, so both agree on what counts as done, and it says why each part is redone.
"""

from __future__ import annotations

import hashlib
import json

from hpcnli.data.nli import load_split, shard_bounds
from hpcnli.io import RunFileError, read_json
from hpcnli.run.paths import MODELS, RunPaths


def adapter_sha256(paths: RunPaths) -> str | None:
    weights = paths.adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def test_set_changed(test, manifest: dict) -> str | None:
    """Why the test set now differs from the one the run was planned with, or None."""
    if test.ids_hash != manifest["ids_hash"] or test.content_hash != manifest.get("content_hash", test.content_hash):
        return (f"data.test changed since the run was planned ({test.source}: content hash {test.content_hash}, "
                f"planned {manifest.get('content_hash', manifest['ids_hash'])}); the run's predictions belong to the "
                "planned file: restore it, or start a new run")
    return None


def training_done(paths: RunPaths) -> bool:
    """The adapter's files are all there (whether they are current is `training_problem`)."""
    return all((paths.adapter / f).is_file() for f in ("adapter_config.json", "adapter_model.safetensors")) \
        and paths.train_metrics.is_file()


def training_problem(cfg, paths: RunPaths, need_adapter: bool = True) -> str | None:
    """Why the fine-tune must run (again), or None: outputs missing or corrupt, or trained on other inputs."""
    if need_adapter and not training_done(paths):
        return f"no complete adapter and train_metrics.json in {paths.run_dir}"
    if not paths.train_metrics.is_file():
        return f"no {paths.train_metrics.name}"
    try:
        inputs = read_json(paths.train_metrics).get("inputs")
    except (RunFileError, AttributeError) as e:
        return f"{paths.train_metrics.name} is unreadable ({e})"
    if inputs is None:  # written before adapters recorded their inputs
        return None
    if inputs.get("train_config_hash") != cfg.train_hash():
        return (f"config.yaml changed since the adapter was trained (training settings hash "
                f"{inputs.get('train_config_hash')}, now {cfg.train_hash()})")
    current = load_split(cfg, "train").content_hash
    if inputs.get("train_data_hash") != current:
        return (f"data.train changed since the adapter was trained (content hash {inputs.get('train_data_hash')}, "
                f"now {current})")
    return None


def check_shard(paths: RunPaths, cfg, model: str, shard: int, expected_ids: list[str],
                expected: dict) -> tuple[list[dict], str | None]:
    """The shard's rows, or the reason the shard is unusable. `expected`: the test set's content hash and
    the current adapter's sha256, as the shard must have recorded them."""
    pred_file, metrics_file = paths.shard_predictions(model, shard), paths.shard_metrics(model, shard)
    if not pred_file.is_file() or not metrics_file.is_file():
        return [], "missing"
    try:
        metrics = read_json(metrics_file)
        with open(pred_file, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    except (json.JSONDecodeError, UnicodeDecodeError, RunFileError) as e:
        return [], f"unreadable ({e.__class__.__name__}: {e}); the file is truncated or corrupt"
    if metrics.get("config_hash") != cfg.hash():
        return [], f"written for config {metrics.get('config_hash')}, not this run's {cfg.hash()}"
    if metrics.get("model") != model or metrics.get("shard") != shard:
        return [], f"metrics file describes {metrics.get('model')} shard {metrics.get('shard')}"
    if expected["test_content_hash"] and metrics.get("test_content_hash") != expected["test_content_hash"]:
        return [], (f"scored another test set (content hash {metrics.get('test_content_hash')}, "
                    f"the run's is {expected['test_content_hash']})")
    if model == "finetuned" and expected["adapter_sha256"] and "adapter_sha256" in metrics \
            and metrics["adapter_sha256"] != expected["adapter_sha256"]:
        return [], (f"scored with another adapter (sha256 {metrics['adapter_sha256']}, "
                    f"now {expected['adapter_sha256']})")
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
    expected = {"test_content_hash": manifest.get("content_hash"), "adapter_sha256": adapter_sha256(paths)}
    predictions: dict = {m: {} for m in MODELS}
    shard_metrics: dict = {m: [] for m in MODELS}
    problems = []
    for model in MODELS:
        for shard in range(cfg.eval.num_shards):
            lo, hi = shard_bounds(len(ids), cfg.eval.num_shards, shard)
            rows, why = check_shard(paths, cfg, model, shard, ids[lo:hi], expected)
            if why:
                problems.append({"model": model, "shard": shard, "examples": hi - lo, "problem": why,
                                 "file": str(paths.shard_predictions(model, shard))})
                continue
            shard_metrics[model].append(read_json(paths.shard_metrics(model, shard)))
            for r in rows:
                predictions[model][r["id"]] = r
    return predictions, shard_metrics, problems


def remaining_work(cfg, paths: RunPaths, force: bool = False) -> dict:
    """What remains: finetune (bool), shards per model (lists of indices), and why each is redone (`why`,
    lines for the user); the reduce stage always runs."""
    every = list(range(cfg.eval.num_shards))
    if force:
        return {"finetune": True, **{m: every for m in MODELS}, "why": ["--force: every stage"]}
    train_why = training_problem(cfg, paths)  # a new adapter first: the fine-tuned shards are then made with it
    _, _, problems = collect(paths, cfg, read_json(paths.test_manifest))
    redo = train_why and (paths.adapter.exists() or paths.train_metrics.exists())  # not a run's first fine-tune
    remaining = {"finetune": train_why is not None, "why": [f"fine-tune: {train_why}"] if redo else []}
    for m in MODELS:
        bad = {p["shard"] for p in problems if p["model"] == m}
        remaining[m] = every if m == "finetuned" and train_why else sorted(bad)
    remaining["why"] += [f"{p['model']} shard {p['shard']}: {p['problem']}" for p in problems
                         if p["problem"] != "missing" and not (p["model"] == "finetuned" and train_why)]
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
