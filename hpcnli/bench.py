"""Evaluation speed, measured side by side in one process on the same examples and model.

    python -m hpcnli.bench [--examples 300] [--data ../shared/snli/test.jsonl]

Rows: the seed-style loop (one example per forward pass, fp32, full logits), the project's batched
path on the 4-bit model, and on the dequantized bf16 model (what `eval.weights: dequantized` runs).
Prints examples/s, the ratio to the per-example loop, and agreement of predictions with it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hpcnli import data as nli_data
from hpcnli import modeling
from hpcnli.config import load_config
from hpcnli.evaluate import predict


def per_example_loop(model, tokenizer, cfg, examples) -> list[int]:
    """The original assignment's shape: one example per call, full-sequence logits, no batching."""
    label_ids = modeling.label_token_ids(tokenizer, cfg.task.label_words)
    preds = []
    with torch.inference_mode():
        for e in examples:
            ids = tokenizer(modeling.format_prompt(cfg.task.prompt, e), return_tensors="pt",
                            add_special_tokens=False).input_ids
            logits = model(input_ids=ids).logits[0, -1]
            preds.append(int(torch.argmax(logits[label_ids])))
    return preds


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--data", default=str(Path("..") / "shared" / "snli" / "test.jsonl"),
                        help="test file (default: %(default)s; 'synthetic' works offline anywhere)")
    parser.add_argument("--config", default="jobs/default.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [f"data.test={args.data}", f"data.max_test_examples={args.examples}"])
    examples = nli_data.load_split(cfg, "test").examples
    tokenizer = modeling.load_tokenizer(cfg)
    print(f"{len(examples)} examples from {args.data}; {modeling.device_name()}; torch {torch.__version__}")

    from transformers import AutoModelForCausalLM

    where, _ = modeling.resolve_model(cfg.model)
    fp32 = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval()
    base_preds, base_s = timed(lambda: per_example_loop(fp32, tokenizer, cfg, examples))
    fp32 = None  # free it before the next model loads
    rows = [("per-example loop, fp32 (seed style)", base_s, base_preds)]

    four_bit = load_config(args.config, [f"data.test={args.data}", "eval.weights=4bit"])
    dtype = str(modeling.torch_dtype(cfg.model.dtype)).removeprefix("torch.")
    for label, run_cfg in (("batched, 4-bit NF4 (eval.weights=4bit)", four_bit),
                           (f"batched, dequantized to {dtype}, adapter merged (eval.weights=dequantized)", cfg)):
        model = modeling.load_eval_model(run_cfg, None).eval()
        out, secs = timed(lambda: predict(model, tokenizer, run_cfg, examples))
        rows.append((label, secs, [r["pred"] for r in out]))
        model = None

    print("\n| path | seconds | examples/s | speed-up vs per-example | agreement with 4-bit |")
    print("|---|---|---|---|---|")
    ref4 = rows[1][2]
    for label, secs, preds in rows:
        agree = sum(a == b for a, b in zip(preds, ref4)) / len(preds)
        print(f"| {label} | {secs:.1f} | {len(examples) / secs:.1f} | {base_s / secs:.1f}x | {100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
