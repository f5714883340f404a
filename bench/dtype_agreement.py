"""Do bfloat16 and float32 give the same predictions? Both dtypes side by side on the same pairs.

    python -m bench.dtype_agreement --config results/<run>/config.yaml [--adapter results/<run>/adapter]
                                    [--examples 0] [--data ../shared/snli/test.jsonl]

Scores the pairs with the evaluation path (`hpcnli.scoring.engine.predict`, the config's eval
settings) once with model.dtype=float32 and once with model.dtype=bfloat16, and prints for each:
seconds, pairs/s, accuracy; then how often the two predictions agree, and how many of the
disagreements are near-ties (the float32 margin between the two best label words is small), which
is where a model at chance flips. bf16 is only fast on GPUs and CPUs with AMX; on others its time
says nothing about those machines, but its predictions do.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hpcnli.config import load_config
from hpcnli.data import nli
from hpcnli.model import loading, memory
from hpcnli.scoring.engine import predict

NEAR_TIE = 0.1  # nats between the two best label words, in float32


def margin(scores: list[float]) -> float:
    top = sorted(scores, reverse=True)
    return top[0] - top[1]


def score(config: str, overrides: list[str], adapter: Path | None, dtype: str, examples: list[dict]):
    cfg = load_config(config, [*overrides, f"model.dtype={dtype}", f"quantization.compute_dtype={dtype}"])
    tokenizer = loading.load_tokenizer(cfg)
    model = loading.load_eval_model(cfg, adapter).eval()
    t0 = time.perf_counter()
    rows = predict(model, tokenizer, cfg, examples)
    return rows, time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/snli_cpu.yaml")
    parser.add_argument("--adapter", type=Path, help="a run's adapter directory: score the fine-tuned model")
    parser.add_argument("--data", default=str(Path("..") / "shared" / "snli" / "test.jsonl"))
    parser.add_argument("--examples", type=int, default=0, help="the first N labelled pairs (default: all)")
    args = parser.parse_args(argv)
    overrides = [f"data.test={args.data}", "data.max_test_examples=0"]
    examples = nli.load_split(load_config(args.config, overrides), "test").examples
    examples = examples[: args.examples] if args.examples else examples
    model = "fine-tuned" if args.adapter else "base"
    print(
        f"{len(examples)} pairs of {args.data}, {model} model; {memory.device_name()}; "
        f"bf16 fast here: {loading.fast_bf16()}",
        flush=True,
    )

    runs = {dtype: score(args.config, overrides, args.adapter, dtype, examples) for dtype in ("float32", "bfloat16")}
    print("\n| dtype | seconds | pairs/s | accuracy |\n|---|---|---|---|")
    for dtype, (rows, secs) in runs.items():
        acc = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
        print(f"| {dtype} | {secs:.1f} | {len(rows) / secs:.1f} | {100 * acc:.1f}% |")
    fp32, bf16 = runs["float32"][0], runs["bfloat16"][0]
    differ = [(a, b) for a, b in zip(fp32, bf16) if a["pred"] != b["pred"]]
    ties = sum(margin(a["scores"]) < NEAR_TIE for a, _ in differ)
    near = sum(margin(a["scores"]) < NEAR_TIE for a in fp32)
    worst = max((abs(x - y) for a, b in zip(fp32, bf16) for x, y in zip(a["scores"], b["scores"])), default=0.0)
    print(
        f"\nagreement: {100 * (1 - len(differ) / len(fp32)):.2f}% ({len(differ)} of {len(fp32)} pairs differ; "
        f"{ties} of those are near-ties, float32 margin < {NEAR_TIE} nats; {near} pairs are near-ties in all)"
    )
    print(
        f"greatest score difference: {worst:.3f} nats; largest float32 margin among disagreements: "
        f"{max((margin(a['scores']) for a, _ in differ), default=0.0):.3f}"
    )


if __name__ == "__main__":
    main()
