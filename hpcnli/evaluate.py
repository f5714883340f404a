"""Stage 2: predict one shard of the test set with the base or the fine-tuned model.

Writes the shard's predictions (id, gold, prediction, per-label log-likelihoods) and its
metrics (runtime, throughput, peak memory) as two files, each written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from datetime import datetime, timezone

from safetensors import SafetensorError

from hpcnli.cluster.env import JobEnvironment
from hpcnli.config import load_config
from hpcnli.data.nli import load_split, shard_bounds
from hpcnli.errors import UserFacingError, raise_on_sigterm, run_command
from hpcnli.io import RunFileError, directory_aside, read_json, work_saving_lock, write_json, write_jsonl
from hpcnli.logs import setup_logging
from hpcnli.model.loading import (
    dtype_name,
    import_model_libraries,
    load_eval_model,
    load_saved_eval_model,
    load_tokenizer,
    save_eval_model,
    stage_device,
    stage_dtype,
)
from hpcnli.model.memory import device_name, peak_memory, reset_peak_memory, resident_mb
from hpcnli.records import ShardMetrics, TestManifest
from hpcnli.run.memory_plan import planned_estimate, resolve_in_stage
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.run.stages import Stage
from hpcnli.run.state import adapter_sha256, file_sha256, test_set_changed, training_done
from hpcnli.scoring.engine import predict
from hpcnli.scoring.precision import eval_matmul, matmul_precision, rescore_near_ties

log = logging.getLogger("hpcnli.evaluate")


class StageError(UserFacingError, RuntimeError):
    """A stage cannot run with the files it was given."""


def shard_examples(cfg, manifest: TestManifest, shard: int) -> list[dict]:
    """This shard's slice of the test set, checked against the run's test-set manifest."""
    test = load_split(cfg, "test")
    why = test_set_changed(test, manifest)
    if why:
        raise StageError(why)
    lo, hi = shard_bounds(len(test.examples), cfg.eval.num_shards, shard)
    return test.examples[lo:hi]


def _weights_inputs(cfg, paths: RunPaths, model_kind: str) -> dict:
    """What an eval model's weights depend on: the base model, its quantization, the eval dtype, the adapter."""
    d = cfg.to_dict()
    return {
        "model": d["model"],
        "quantization": d["quantization"],
        "dtype": dtype_name(stage_dtype(cfg.model.dtype, "eval")),
        "adapter_sha256": adapter_sha256(paths) if model_kind == "finetuned" else None,
    }


def eval_model(cfg, paths: RunPaths, model_kind: str):
    """The model a shard scores with, where it came from ("loaded", "written" or "read"), and the seconds it
    waited for another shard to write the weights.

    Dequantized 4-bit weights (eval.weights) are made once per model and run: the first shard quantizes
    the base to 4-bit, dequantizes it, merges the adapter and writes the result to the run's eval_weights/;
    the other shards wait for it (a file lock) and read the same weights back, with no quantizing. On an
    H200 quantizing and dequantizing a 2.7B model took 11-14 s in every shard.
    """
    adapter = paths.adapter if model_kind == "finetuned" else None
    if not (cfg.quantization.load_in_4bit and cfg.eval.weights == "dequantized") or cfg.task.scoring == "head":
        return load_eval_model(cfg, adapter), "loaded", 0.0
    target, marker = paths.eval_weights(model_kind), paths.eval_weights_marker(model_kind)
    inputs = _weights_inputs(cfg, paths, model_kind)
    paths.eval_weights_root.mkdir(parents=True, exist_ok=True)
    # The lock only saves work (one shard writes, the others wait and read); correctness does not depend on it:
    # each writer stages its own directory and renames it into place whole.
    t_wait = time.perf_counter()
    with work_saving_lock(paths.eval_weights_lock(model_kind)):
        wait_s = time.perf_counter() - t_wait
        if _current(marker, inputs):
            try:
                return load_saved_eval_model(cfg, target), "read", wait_s
            except (OSError, SafetensorError) as e:  # truncated or damaged since: made again, not read for ever
                log.warning("eval weights in %s are unreadable (%s); writing them again", target, e)
        with directory_aside(target) as staging:
            save_eval_model(load_eval_model(cfg, adapter), staging)
            write_json(staging / marker.name, inputs)
        # Read back by the shard that wrote them too: every shard scores with the same tensors, laid out as
        # loading lays them out (a model just merged with its adapter scored 9x slower in bf16 on a CPU).
        return load_saved_eval_model(cfg, target), "written", wait_s


def _current(marker, inputs: dict) -> bool:
    try:
        return marker.is_file() and read_json(marker) == inputs
    except RunFileError:
        return False


def run(cfg, paths: RunPaths, model_kind: str, shard: int, job: dict | None = None) -> ShardMetrics:
    if model_kind not in MODELS:
        raise StageError(f"--model must be one of {MODELS}, got {model_kind!r}")
    if not 0 <= shard < cfg.eval.num_shards:
        raise StageError(f"--shard {shard} outside 0..{cfg.eval.num_shards - 1} (eval.num_shards)")
    started = datetime.now(timezone.utc).isoformat()
    manifest = TestManifest.read(paths.test_manifest)
    examples = shard_examples(cfg, manifest, shard)
    log.info("%s model, shard %d/%d: %d examples", model_kind, shard, cfg.eval.num_shards, len(examples))

    device = stage_device(cfg)  # one process, one GPU (or the CPU) as planned; refused before anything loads
    # A float32 model's products may round (TF32 on a GPU); a bf16 model's are bf16 already.
    float32_model = dtype_name(stage_dtype(cfg.model.dtype, "eval")) == "float32"
    matmul = eval_matmul(cfg.eval.matmul, device) if float32_model else "float32"
    estimate = planned_estimate(paths, "eval")  # read (and checked) before the work, not after it
    cfg = resolve_in_stage(cfg, "eval")
    import_model_libraries(cfg)
    rss_before = resident_mb()
    t_load = time.perf_counter()
    tokenizer = load_tokenizer(cfg)
    if model_kind == "finetuned" and not training_done(paths):
        raise StageError(f"no fine-tuned adapter in {paths.adapter}; the fine-tune stage must finish first")
    model, weights_from, wait_s = eval_model(cfg, paths, model_kind)
    model.eval()
    load_s = time.perf_counter() - t_load

    reset_peak_memory()
    t0 = time.perf_counter()
    timing: dict = {}
    with matmul_precision(matmul, device):
        rows = predict(model, tokenizer, cfg, examples, timing)
    rescore = {}
    if matmul != "float32":  # near-ties scored again in full float32, which decides them
        rescore = rescore_near_ties(
            rows, lambda near: predict(model, tokenizer, cfg, [examples[i] for i in near]), cfg.eval.rescore_margin
        )
        log.info("%s products; re-scored in float32: %s", matmul, rescore)
    runtime = time.perf_counter() - t0
    broken = [r["id"] for r in rows if not all(math.isfinite(s) for s in r["scores"])]
    if broken:
        raise StageError(
            f"{model_kind} model: {len(broken)} of {len(rows)} pairs scored not finite (first: {broken[0]}); "
            "the model's weights hold NaN or inf (a diverged fine-tune?); nothing written for this shard"
        )
    warm_s, warm_n = timing.get("first_batch_s", 0.0), timing.get("first_batch_pairs", 0)

    write_jsonl(paths.shard_predictions(model_kind, shard), rows)  # first; the metrics then name its sha256
    metrics = ShardMetrics(
        schema_version=ShardMetrics.VERSION,
        model=model_kind,
        shard=shard,
        num_shards=cfg.eval.num_shards,
        examples=len(rows),
        config_hash=cfg.hash(),
        base_hash=cfg.base_hash() if model_kind == "base" else None,
        test_content_hash=manifest.content_hash,
        adapter_sha256=adapter_sha256(paths) if model_kind == "finetuned" else None,
        runtime_s=runtime,
        model_load_s=load_s,
        weights_from=weights_from,
        examples_per_s=len(rows) / runtime if runtime > 0 else None,
        batch_size=cfg.eval.batch_size,
        batch_tokens=cfg.eval.batch_tokens,
        dtype=dtype_name(stage_dtype(cfg.model.dtype, "eval")),
        weights=cfg.eval.weights,
        share_prefix=cfg.eval.share_prefix,
        quantized_4bit=cfg.quantization.load_in_4bit,
        device=device_name(),
        memory=peak_memory(rss_before),
        memory_estimate=estimate,
        weights_wait_s=wait_s,
        predictions_sha256=file_sha256(paths.shard_predictions(model_kind, shard)),
        matmul=matmul,
        rescore_margin=cfg.eval.rescore_margin if rescore else None,
        rescored=rescore.get("rescored", 0),
        rescore_changed=rescore.get("rescore_changed", 0),
        rescore_max_shift=rescore.get("rescore_max_shift"),
        warmup_s=warm_s,
        warmup_examples=warm_n,
        steady_examples_per_s=(len(rows) - warm_n) / (runtime - warm_s) if len(rows) > warm_n else None,
        started_at=started,
        finished_at=datetime.now(timezone.utc).isoformat(),
        job=job or {},
    )
    metrics.write(paths.shard_metrics(model_kind, shard))
    log.info(
        "wrote %d predictions in %.1f s (%.1f examples/s, load %.1f s)",
        len(rows),
        runtime,
        metrics.examples_per_s or 0,
        load_s,
    )
    return metrics


def run_task(cfg, paths: RunPaths, stage: Stage, task: int, job: JobEnvironment) -> str:
    """One array task of an eval stage: the shard is the task."""
    assert stage.model is not None  # an eval stage
    run(cfg, paths, stage.model, task, job=job.describe())
    return str(paths.shard_predictions(stage.model, task))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--shard", type=int, default=None, help="shard index; defaults to the Slurm array task id")
    args = parser.parse_args(argv)
    setup_logging()
    env = JobEnvironment()
    env.match_torch_threads()
    shard = args.shard if args.shard is not None else env.array_task_id
    if shard is None:
        parser.error("--shard is required outside a Slurm array job")
    paths = RunPaths(args.run_dir)
    return run_command(
        "hpcnli.evaluate", lambda: run(load_config(paths.config), paths, args.model, shard, job=env.describe())
    )


if __name__ == "__main__":
    raise_on_sigterm()
    sys.exit(main())
