"""Stage 2: predict one shard of the test set with the base or the fine-tuned model.

Writes the shard's predictions (id, gold, prediction, per-label log-likelihoods) and its
metrics (runtime, throughput, peak memory) as two files, each written atomically.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import datetime, timezone

import torch

from hpcnli import data as nli_data
from hpcnli import modeling
from hpcnli.config import load_config
from hpcnli.env import JobEnvironment
from hpcnli.io import read_json, write_json, write_jsonl
from hpcnli.logs import setup_logging
from hpcnli.paths import MODELS, RunPaths

log = logging.getLogger("hpcnli.evaluate")


class StageError(RuntimeError):
    """A stage cannot run with the files it was given."""


def shard_examples(cfg, paths: RunPaths, shard: int) -> list[dict]:
    """This shard's slice of the test set, checked against the run's test-set manifest."""
    test = nli_data.load_split(cfg, "test")
    manifest = read_json(paths.test_manifest)
    if test.ids_hash != manifest["ids_hash"]:
        raise StageError(f"test set changed since the run was planned ({test.source}: ids hash "
                         f"{test.ids_hash} != {manifest['ids_hash']}); submit a new run")
    lo, hi = nli_data.shard_bounds(len(test.examples), cfg.eval.num_shards, shard)
    return test.examples[lo:hi]


def predict_with_pipeline(model, tokenizer, cfg, examples: list[dict]) -> list[dict]:
    """task.scoring "head": the classification head read through pipeline("text-classification")."""
    import math

    from peft import PeftModel
    from transformers import pipeline

    if isinstance(model, PeftModel):  # unmerged 4-bit model: the adapters stay active inside
        model = model.get_base_model()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    texts = [modeling.format_prompt(cfg.task.prompt, e) for e in examples]
    outputs = classify(texts, batch_size=cfg.eval.batch_size, top_k=None, truncation=True,
                       max_length=cfg.task.max_length)
    rows = []
    for e, out in zip(examples, outputs):
        by_label = {d["label"]: d["score"] for d in out}
        s = [math.log(max(by_label[f"LABEL_{k}"], 1e-30)) for k in range(3)]
        rows.append({"id": e["id"], "gold": e["label"], "pred": max(range(3), key=s.__getitem__), "scores": s})
    return rows


# Groups whose prefix states are held at once, in batches: more sorts rows better (less padding), costs memory.
PREFIX_CHUNK_BATCHES = 8


def _prefix_chunks(examples: list[dict], prompts: list[list[int]], size: int) -> list[list[tuple[list[int], int]]]:
    """Premise groups sorted by shared length, `size` groups to a chunk (whose prefix states are kept together)."""
    groups = sorted(modeling.shared_prefixes([e["premise"].strip() for e in examples], prompts), key=lambda g: g[1])
    return [groups[i:i + size] for i in range(0, len(groups), size)]


def _whole_prompt_batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict(model, tokenizer, cfg, examples: list[dict]) -> list[dict]:
    """Label-word scoring in length-sorted batches; rows come back in the examples' order.

    With eval.share_prefix, pairs that share a premise run the common start of their prompts once.
    """
    if cfg.task.scoring == "head":
        return predict_with_pipeline(model, tokenizer, cfg, examples)
    label_ids = torch.tensor(modeling.label_token_ids(tokenizer, cfg.task.label_words))
    prompts = modeling.tokenize_prompts(tokenizer, cfg, examples)
    bs, pad_id = cfg.eval.batch_size, tokenizer.pad_token_id
    device = next(model.parameters()).device
    shared = cfg.eval.share_prefix and all(len(p) > 1 for p in prompts)

    def batches():  # (rows, answer-position logits), batch after batch
        if shared:
            for chunk in _prefix_chunks(examples, prompts, bs * PREFIX_CHUNK_BATCHES):
                yield from modeling.shared_prefix_logits(model, prompts, chunk, pad_id, bs)
        else:
            for rows in _whole_prompt_batches(prompts, bs):
                input_ids, mask = modeling.pad_left([prompts[i] for i in rows], pad_id)
                yield rows, modeling.answer_logits(model, input_ids.to(device), mask.to(device))

    scores, done = [None] * len(prompts), 0
    for b, (rows, logits) in enumerate(batches()):
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, label_ids.to(device)].cpu()
        for row, i in enumerate(rows):
            scores[i] = logprobs[row].tolist()
        done += len(rows)
        if b % 10 == 0 or done == len(prompts):
            log.info("scored %d/%d pairs", done, len(prompts))
    return [{"id": e["id"], "gold": e["label"], "pred": max(range(3), key=s.__getitem__), "scores": s}
            for e, s in zip(examples, scores)]


def main(cfg, paths: RunPaths, model_kind: str, shard: int, job: dict | None = None) -> dict:
    if model_kind not in MODELS:
        raise StageError(f"--model must be one of {MODELS}, got {model_kind!r}")
    if not 0 <= shard < cfg.eval.num_shards:
        raise StageError(f"--shard {shard} outside 0..{cfg.eval.num_shards - 1} (eval.num_shards)")
    started = datetime.now(timezone.utc).isoformat()
    examples = shard_examples(cfg, paths, shard)
    log.info("%s model, shard %d/%d: %d examples", model_kind, shard, cfg.eval.num_shards, len(examples))

    t_load = time.perf_counter()
    tokenizer = modeling.load_tokenizer(cfg)
    if model_kind == "finetuned" and not (paths.adapter / "adapter_config.json").is_file():
        raise StageError(f"no fine-tuned adapter in {paths.adapter}; the fine-tune stage must finish first")
    model = modeling.load_eval_model(cfg, paths.adapter if model_kind == "finetuned" else None)
    model.eval()
    load_s = time.perf_counter() - t_load

    modeling.reset_peak_memory()
    t0 = time.perf_counter()
    rows = predict(model, tokenizer, cfg, examples)
    runtime = time.perf_counter() - t0

    write_jsonl(paths.shard_predictions(model_kind, shard), rows)
    metrics = {
        "model": model_kind, "shard": shard, "num_shards": cfg.eval.num_shards, "examples": len(rows),
        "config_hash": cfg.hash(), "runtime_s": runtime, "model_load_s": load_s,
        "examples_per_s": len(rows) / runtime if runtime > 0 else None,
        "batch_size": cfg.eval.batch_size, "dtype": str(modeling.torch_dtype(cfg.model.dtype)).removeprefix("torch."), "weights": cfg.eval.weights,
        "share_prefix": cfg.eval.share_prefix,
        "quantized_4bit": cfg.quantization.load_in_4bit, "device": modeling.device_name(),
        "memory": modeling.peak_memory(), "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(), "job": job or {},
    }
    write_json(paths.shard_metrics(model_kind, shard), metrics)
    log.info("wrote %d predictions in %.1f s (%.1f examples/s, load %.1f s)",
             len(rows), runtime, metrics["examples_per_s"] or 0, load_s)
    return metrics


def cli(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--shard", type=int, default=None,
                        help="shard index; defaults to the Slurm array task id")
    args = parser.parse_args(argv)
    setup_logging()
    env = JobEnvironment()
    env.match_torch_threads()
    shard = args.shard if args.shard is not None else env.array_task_id
    if shard is None:
        parser.error("--shard is required outside a Slurm array job")
    paths = RunPaths(args.run_dir)
    main(load_config(paths.config), paths, args.model, shard, job=env.describe())


if __name__ == "__main__":
    cli()
