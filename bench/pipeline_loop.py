"""The original assignment's evaluation loop: pipeline("text-classification"), one pair per call.

    python -m bench.pipeline_loop MODEL_DIR DATA.jsonl [--pairs 500] [--dtype bfloat16] [--json OUT]

The baseline the batched scoring path is measured against on the same device (bench/gpu_check.sh). The
classification head is untrained, as in the original; only the speed means anything.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from hpcnli.config import TaskConfig
    from hpcnli.io import read_jsonl
    from hpcnli.scoring.prompts import format_prompt

    pairs = [r for r in read_jsonl(args.data) if r["label"] in (0, 1, 2)][: args.pairs]
    device = 0 if torch.cuda.is_available() else -1
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=3, dtype=getattr(torch, args.dtype), pad_token_id=tok.pad_token_id
    )
    classify = pipeline("text-classification", model=model, tokenizer=tok, device=device)
    load_s = time.perf_counter() - t0
    texts = [format_prompt(TaskConfig.prompt, e) for e in pairs]
    classify(texts[0])  # first call: kernels chosen, memory first touched
    t0 = time.perf_counter()
    for text in texts:
        classify(text)
    secs = time.perf_counter() - t0
    out = {
        "pairs": len(texts),
        "seconds": secs,
        "pairs_per_s": len(texts) / secs,
        "load_s": load_s,
        "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
