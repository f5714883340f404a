"""The fine-tune's time, estimated before it is queued from the throughput of the last run of the same model.

    tokens to train = pairs to train x mean prompt tokens (of the lengths the plan measured, else a sample)
    time            = tokens / the prompt tokens per second of the last finished fine-tune of this model
                      in output_root (on the same kind of device: GPU or CPU)

Against resources.time_min it says whether the fine-tune fits one job or how many requeues it needs (it
checkpoints and Slurm requeues it on time-out, up to MAX_REQUEUES times).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from hpcnli.config import RunConfig
from hpcnli.io import RunFileError
from hpcnli.records import Report, TrainMetrics
from hpcnli.run.paths import runs_under
from hpcnli.run.stages import MAX_REQUEUES

SAMPLE = 5000  # training pairs tokenized for the mean prompt length when the plan has no lengths


def pairs_to_train(cfg: RunConfig, n_train: int, mean_tokens: float) -> float:
    t, procs = cfg.train, cfg.resources.train_processes
    if t.max_steps <= 0:
        return t.epochs * n_train
    per_step = t.batch_size if t.batch_tokens is None else int(t.batch_tokens) / mean_tokens  # resolved by now
    return t.max_steps * per_step * t.grad_accum * procs


def last_throughput(cfg: RunConfig, gpu: bool) -> tuple[float, str] | None:
    """Prompt tokens/s of the newest finished fine-tune of this model in output_root, and that run's name."""
    best = None
    for run in runs_under(Path(cfg.output_root)):
        try:
            metrics = TrainMetrics.read(run.train_metrics)
            run_cfg = Report.read(run.report_json).config
        except (RunFileError, OSError):
            continue
        same_model = run_cfg.get("model", {}).get("name_or_path") == cfg.model.name_or_path
        same_device = ("cpu" not in metrics.device.lower()) == gpu
        when = run.train_metrics.stat().st_mtime
        if same_model and same_device and metrics.tokens_per_s and (best is None or when > best[0]):
            best = (when, metrics.tokens_per_s, run.name)
    return None if best is None else (best[1], best[2])


def estimate(cfg: RunConfig, tokenizer, train_examples: list[dict], lengths: list[int] | None) -> dict | None:
    """The fine-tune's estimated minutes and the jobs it takes, or None when no earlier run gives a throughput.
    lengths: every training prompt's tokens, when the plan measured them."""
    from hpcnli.scoring.prompts import tokenize_prompts

    known = last_throughput(cfg, cfg.resources.gpus_per_node > 0)
    if known is None or not train_examples:
        return None
    if not lengths:
        sample = random.Random(0).sample(train_examples, min(SAMPLE, len(train_examples)))
        lengths = [len(p) for p in tokenize_prompts(tokenizer, cfg, sample)]
    mean_tokens = sum(lengths) / len(lengths)
    pairs = pairs_to_train(cfg, len(train_examples), mean_tokens)
    minutes = pairs * mean_tokens / known[0] / 60
    held_out = heldout_minutes(cfg, pairs)
    minutes += held_out or 0.0
    return {
        "minutes": minutes,
        "tokens_per_s": known[0],
        "from_run": known[1],
        "heldout_minutes": held_out,
        "jobs": max(1, math.ceil(minutes / cfg.resources.time_min)),
        "time_min": cfg.resources.time_min,
    }


def heldout_minutes(cfg: RunConfig, pairs_trained: float) -> float | None:
    """Minutes of held-out scoring (train.eval_every) at the eval pairs/s of the newest shard of this model on
    the same kind of device; 0 without held-out evaluation, None when no earlier shard gives a rate."""
    from hpcnli.run.eval_resources import last_shard_rate

    t = cfg.train
    if not t.eval_every:
        return 0.0
    known = last_shard_rate(cfg, cfg.resources.gpus_per_node > 0)
    if known is None:
        return None
    per_step = t.batch_size * t.grad_accum * cfg.resources.train_processes
    steps = t.max_steps if t.max_steps > 0 else pairs_trained / per_step
    evaluations = math.floor(steps / t.eval_every) + 2  # step 0 and the last step too
    return evaluations * (t.eval_pairs or cfg.data.holdout) / known[0] / 60


def lines(est: dict | None) -> list[str]:
    if est is None:
        return ["time plan: no earlier fine-tune of this model in output_root to take a throughput from"]
    held = est.get("heldout_minutes", 0.0)
    head = (
        f"time plan: the fine-tune takes about {est['minutes']:.0f} min at {est['tokens_per_s']:,.0f} prompt "
        f"tokens/s (run {est['from_run']})"
        + (
            f", {held:.0f} min of it held-out scoring (train.eval_every)"
            if held
            else " and held-out scoring of unknown cost (no earlier eval shard of this model)"
            if held is None
            else ""
        )
    )
    if est["jobs"] == 1:
        return [f"{head}: fits resources.time_min {est['time_min']}"]
    requeues = est["jobs"] - 1
    if requeues <= MAX_REQUEUES:
        return [
            f"{head}: {requeues} requeue(s) past resources.time_min {est['time_min']} (it resumes from "
            "its last checkpoint each time)"
        ]
    enough = math.ceil(est["minutes"] / (MAX_REQUEUES + 1))
    return [
        f"{head}: WARNING: {requeues} requeues past resources.time_min {est['time_min']}, more than the "
        f"{MAX_REQUEUES} Slurm is asked for; raise resources.time_min to {enough}"
    ]
