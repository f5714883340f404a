"""Held-out scoring during training (train.eval_every): the learning curve, its best step, early stopping.

The pairs are data.holdout's (never trained on, never the test file), train.eval_pairs of them (a seeded subset,
the same at every evaluation). They are scored as the evaluation stage scores: `scoring.engine.predict`, the same
prompts, label words, length-sorted batches, left padding and shared premises (eval.*). The model is the one
being trained (4-bit base, LoRA unmerged, the training dtype), so its scores equal the evaluation stage's for
the same adapter up to that dtype. The fine-tune narrows its output layer to the label words: scores are then
log-probabilities over the label words, and the held-out loss, -score[gold], is the training loss "labels".

Each data-parallel rank scores its share (pairs rank::processes); the rows are gathered, so every rank holds
the same curve and takes the same decisions (keep the best adapter, stop early).
"""

from __future__ import annotations

import random
import time

from hpcnli.report.stats import accuracy_ci
from hpcnli.scoring.engine import predict


def curve_pairs(held_out: list[dict], eval_pairs: int, seed: int) -> list[dict]:
    """The pairs every evaluation scores: all of data.holdout, or eval_pairs of them (seeded, in their order)."""
    if not eval_pairs or eval_pairs >= len(held_out):
        return held_out
    keep = sorted(random.Random(seed + 3).sample(range(len(held_out)), eval_pairs))
    return [held_out[i] for i in keep]


def score_point(model, tokenizer, cfg, pairs: list[dict], accelerator, step: int, seen: int, columns) -> dict:
    """One point of the curve at `step`: accuracy (95% interval), mean loss, and the seconds it took."""
    t0 = time.perf_counter()
    rank, n = accelerator.process_index, accelerator.num_processes
    was_training = model.training
    scoring_mode(model)
    mine = predict(model, tokenizer, cfg, pairs[rank::n], columns=columns)
    model.train(was_training)
    rows = mine
    if n > 1:
        from accelerate.utils import gather_object

        rows = gather_object(mine)
    correct = sum(r["pred"] == r["gold"] for r in rows)
    low, high = accuracy_ci(correct, len(rows))
    return {
        "step": step,
        "examples_seen": seen,
        "pairs": len(rows),
        "accuracy": correct / len(rows),
        "ci_low": low,
        "ci_high": high,
        "loss": sum(-r["scores"][r["gold"]] for r in rows) / len(rows),
        "seconds": time.perf_counter() - t0,
    }


LOSS_TOLERANCE = 1e-3  # nats: at equal accuracy, a held-out loss lower by less than this is no improvement


def scoring_mode(model) -> None:
    """Evaluation mode (no dropout) for the model being trained, but bitsandbytes' 4-bit layers left in training
    mode: on a CPU with AVX512-BF16, a 4-bit layer's first forward in evaluation mode repacks its weights for
    bitsandbytes' CPU kernel for good, and the training steps after it compute differently (step 1's loss
    moved from 1.8335 to 1.8290 on the smoke run), so a fine-tune with a curve would not be the one without."""
    model.eval()
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.train()


def better(point: dict, best: dict | None) -> bool:
    """Higher held-out accuracy; at equal accuracy, a held-out loss lower by more than LOSS_TOLERANCE (the
    earlier step wins a tie)."""
    if best is None:
        return True
    if point["accuracy"] != best["accuracy"]:
        return point["accuracy"] > best["accuracy"]
    return point["loss"] < best["loss"] - LOSS_TOLERANCE
