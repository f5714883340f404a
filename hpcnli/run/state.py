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
import math

from hpcnli.data.nli import load_split, shard_bounds
from hpcnli.io import RunFileError
from hpcnli.records import ShardMetrics, TestManifest, TrainMetrics
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.run.stages import EVAL_STAGES, FINETUNE, REDUCE, STAGES, Work


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def adapter_sha256(paths: RunPaths) -> str | None:
    return file_sha256(paths.adapter_weights) if paths.adapter_weights.is_file() else None


def test_set_changed(test, manifest: TestManifest) -> str | None:
    """Why the test set now differs from the one the run was planned with, or None."""
    planned = manifest.content_hash or manifest.ids_hash  # version 1 manifests recorded the ids' hash only
    if test.ids_hash != manifest.ids_hash or test.content_hash != (manifest.content_hash or test.content_hash):
        return (
            f"data.test changed since the run was planned ({test.source}: content hash {test.content_hash}, "
            f"planned {planned}); the run's predictions belong to the "
            "planned file: restore it, or start a new run"
        )
    return None


def training_done(paths: RunPaths) -> bool:
    """The adapter's files are all there (whether they are current is `training_problem`)."""
    return paths.adapter_config.is_file() and paths.adapter_weights.is_file() and paths.train_metrics.is_file()


def training_problem(cfg, paths: RunPaths) -> str | None:
    """Why the fine-tune must run (again), or None: outputs missing or corrupt, or trained on other inputs."""
    if not training_done(paths):
        return f"no complete adapter and train_metrics.json in {paths.run_dir}"
    if not paths.train_metrics.is_file():
        return f"no {paths.train_metrics.name}"
    try:
        metrics = TrainMetrics.read(paths.train_metrics)
    except RunFileError as e:
        return f"{paths.train_metrics.name} is unreadable ({e})"
    inputs = metrics.inputs
    if metrics.schema_version == 1:  # written before adapters recorded their inputs
        return None
    now = cfg.train_hash_v1() if metrics.schema_version == 2 else cfg.train_hash()
    if inputs.get("train_config_hash") != now:
        return (
            f"config.yaml changed since the adapter was trained (training settings hash "
            f"{inputs.get('train_config_hash')}, now {now})"
        )
    current = load_split(cfg, "train").content_hash
    if inputs.get("train_data_hash") != current:
        return (
            f"data.train changed since the adapter was trained (content hash {inputs.get('train_data_hash')}, "
            f"now {current})"
        )
    return None


def check_shard(
    paths: RunPaths, cfg, model: str, shard: int, expected_ids: list[str], expected: dict
) -> tuple[list[dict], ShardMetrics | None, str | None]:
    """The shard's rows, or the reason the shard is unusable. `expected`: the test set's content hash and
    the current adapter's sha256, as the shard must have recorded them, and the test set's gold labels by id.
    A shard counts only as evidence tied together: its predictions file is the one its metrics describe, each
    prediction is its scores' argmax, each gold label is the test set's."""
    pred_file, metrics_file = paths.shard_predictions(model, shard), paths.shard_metrics(model, shard)
    if not pred_file.is_file() or not metrics_file.is_file():
        return [], None, "missing"
    try:
        metrics = ShardMetrics.read(metrics_file)
        with open(pred_file, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    except (json.JSONDecodeError, UnicodeDecodeError, RunFileError) as e:
        return [], None, f"unreadable ({e.__class__.__name__}: {e}); the file is truncated or corrupt"
    problem = _shard_metrics_problem(cfg, model, shard, metrics, expected)
    if problem:
        return [], None, problem
    for i, r in enumerate(rows):
        if not (
            isinstance(r, dict)
            and {"id", "gold", "pred", "scores"} <= r.keys()
            and r["pred"] in (0, 1, 2)
            and isinstance(r["scores"], list)
            and len(r["scores"]) == 3
        ):
            return [], None, f"row {i + 1} does not have id, gold, pred in 0..2 and 3 scores"
        scores = r["scores"]
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
            return [], None, f"row {i + 1} ({r['id']}): scores {scores} are not all finite numbers"
        if r["pred"] != max(range(3), key=scores.__getitem__):
            return [], None, f"row {i + 1} ({r['id']}): pred {r['pred']} is not the argmax of its scores {scores}"
        if r["id"] in expected["gold"] and r["gold"] != expected["gold"][r["id"]]:
            return (
                [],
                None,
                (f"row {i + 1} ({r['id']}): gold {r['gold']}, but the test set's label is {expected['gold'][r['id']]}"),
            )
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        return [], None, f"{len(ids) - len(set(ids))} duplicated example id(s)"
    if ids != expected_ids:
        foreign = len(set(ids) - set(expected_ids))
        return (
            [],
            None,
            (
                f"{len(ids)} rows for {len(expected_ids)} expected examples "
                f"({foreign} id(s) that belong to no example of this shard)"
            ),
        )
    actual = file_sha256(pred_file) if metrics.predictions_sha256 is not None else None
    if actual != metrics.predictions_sha256:
        return (
            [],
            None,
            (
                f"{pred_file.name} is not the file its metrics describe (sha256 {actual}, recorded "
                f"{metrics.predictions_sha256}): replaced or edited since it was written"
            ),
        )
    return rows, metrics, None


def _shard_metrics_problem(cfg, model: str, shard: int, metrics: ShardMetrics, expected: dict) -> str | None:
    if model == "base" and metrics.base_hash is not None:  # the base model's predictions: no adapter recipe in it
        if metrics.base_hash != cfg.base_hash():
            return f"written for base settings {metrics.base_hash}, not this run's {cfg.base_hash()}"
    elif metrics.config_hash != cfg.hash():
        return f"written for config {metrics.config_hash}, not this run's {cfg.hash()}"
    if metrics.model != model or metrics.shard != shard:
        return f"metrics file describes {metrics.model} shard {metrics.shard}"
    if expected["test_content_hash"] and metrics.test_content_hash != expected["test_content_hash"]:
        return (
            f"scored another test set (content hash {metrics.test_content_hash}, "
            f"the run's is {expected['test_content_hash']})"
        )
    if (
        model == "finetuned"
        and expected["adapter_sha256"]
        and metrics.adapter_sha256 is not None
        and metrics.adapter_sha256 != expected["adapter_sha256"]
    ):
        return f"scored with another adapter (sha256 {metrics.adapter_sha256}, now {expected['adapter_sha256']})"
    return None


def collect(
    paths: RunPaths, cfg, manifest: TestManifest, test=None
) -> tuple[dict, dict[str, list[ShardMetrics]], list[dict]]:
    """Predictions by model and id, shard metrics, and the problems found (empty when complete). `test`: the
    test split, when the caller has loaded it."""
    ids = manifest.ids
    test = test if test is not None else load_split(cfg, "test")
    expected = {
        "test_content_hash": manifest.content_hash,
        "adapter_sha256": adapter_sha256(paths),
        "gold": {e["id"]: e["label"] for e in test.examples},
    }
    predictions: dict = {m: {} for m in MODELS}
    shard_metrics: dict[str, list[ShardMetrics]] = {m: [] for m in MODELS}
    problems = []
    for model in MODELS:
        for shard in range(cfg.eval.num_shards):
            lo, hi = shard_bounds(len(ids), cfg.eval.num_shards, shard)
            rows, metrics, why = check_shard(paths, cfg, model, shard, ids[lo:hi], expected)
            if why:
                problems.append(
                    {
                        "model": model,
                        "shard": shard,
                        "examples": hi - lo,
                        "problem": why,
                        "file": str(paths.shard_predictions(model, shard)),
                    }
                )
                continue
            assert metrics is not None  # no problem found: the shard's records were read
            shard_metrics[model].append(metrics)
            for r in rows:
                predictions[model][r["id"]] = r
    return predictions, shard_metrics, problems


def remaining_work(cfg, paths: RunPaths, force: bool = False) -> Work:
    """What remains, stage by stage (the gathering stage, reduce, always runs), and why each part is redone."""
    if force:
        return Work({s.name: s.tasks(cfg) for s in STAGES}, ["--force: every stage"])
    train_why = training_problem(cfg, paths)  # a new adapter first: the fine-tuned shards are then made with it
    _, _, problems = collect(paths, cfg, TestManifest.read(paths.test_manifest))
    redo = train_why and (paths.adapter.exists() or paths.train_metrics.exists())  # not a run's first fine-tune
    work = Work({s.name: [] for s in STAGES}, [f"fine-tune: {train_why}"] if redo else [])
    work.tasks[FINETUNE.name] = FINETUNE.tasks(cfg) if train_why else []
    for s in EVAL_STAGES:
        stale = train_why is not None and FINETUNE.name in s.after_ok  # scored with an adapter about to change
        work.tasks[s.name] = s.tasks(cfg) if stale else sorted({p["shard"] for p in problems if p["model"] == s.model})
        work.why += [
            f"{p['model']} shard {p['shard']}: {p['problem']}"
            for p in problems
            if p["model"] == s.model and p["problem"] != "missing" and not stale
        ]
    work.tasks[REDUCE.name] = REDUCE.tasks(cfg)
    return work


def retry_round(cfg, paths: RunPaths, queued: frozenset[str] = frozenset()) -> Work:
    """The one retry policy of both launchers, once the stages before reduce have ended: the tasks of `retried`
    stages still missing or invalid, except those that wait on a stage that failed (reported instead), and
    the gathering stage after them. `queued`: stages whose job the cluster still holds (a fine-tune that Slurm
    requeued): not failed, not submitted again; the tasks that wait on them are retried (after them)."""
    left = remaining_work(cfg, paths)
    failed = {s.name for s in STAGES if left.todo(s) and not s.retried and not s.gathers} - queued
    retry = {
        s.name: left.todo(s) if s.retried and s.name not in queued and not failed & set(s.after_ok) else []
        for s in STAGES
    }
    return Work({**retry, **{s.name: s.tasks(cfg) for s in STAGES if s.gathers}})  # and the gathering stage again


def shard_counts(paths: RunPaths, num_shards: int) -> dict[str, int]:
    return {
        m: sum(
            paths.shard_predictions(m, s).is_file() and paths.shard_metrics(m, s).is_file() for s in range(num_shards)
        )
        for m in MODELS
    }


def progress_line(cfg, paths: RunPaths) -> str:
    done = shard_counts(paths, cfg.eval.num_shards)
    trained = "done" if paths.train_metrics.is_file() else "pending"
    report = "written" if paths.report_md.is_file() else "pending"
    return (
        f"finetune {trained}; shards base {done['base']}/{cfg.eval.num_shards}, "
        f"finetuned {done['finetuned']}/{cfg.eval.num_shards}; report {report}"
    )
