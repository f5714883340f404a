"""Rounded float32 products in evaluation (eval.matmul) against full float32, on the same pairs.

    python -m bench.eval_precision [--config jobs/snli_cpu.yaml] [--adapter <run>/adapter] [--examples 1000]
                                   [--data ../shared/snli/test.jsonl]

Scores the pairs with the evaluation path (`hpcnli.scoring.engine.predict`, the config's eval settings,
float32 weights) four ways and prints one table:

- float32: full float32 products (the baseline);
- tf32 (emulated): every nn.Linear's input and weight rounded to TF32's 10-bit mantissa, products and sums in
  float32: the numbers a GPU's TF32 tensor cores give (attention's own products are left full; its time
  means nothing, TF32 is a GPU's);
- bf16: the CPU's bf16 products (oneDNN, AMX or AVX512-BF16), as eval.matmul=bf16 runs them;
- bf16 + re-scoring: the shipped mechanism (hpcnli.scoring.precision.rescore_near_ties) at each margin:
  pairs whose two best bf16 scores are within it are scored again in full float32.

For each: seconds, agreement of the predictions with float32, the largest score shift, and how many pairs
were re-scored. The time ratios are this CPU's; say in the notes whether it has AMX.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from hpcnli.config import load_config
from hpcnli.data import nli
from hpcnli.model import loading, memory
from hpcnli.scoring.engine import predict
from hpcnli.scoring.precision import margin, matmul_precision, rescore_near_ties

MARGINS = (0.1, 0.25, 0.5)


def to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 values rounded (to nearest, ties to even) to TF32's 10 mantissa bits."""
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & -8192
    return bits.view(torch.float32)


@contextmanager
def tf32_linears(model):
    """Every nn.Linear multiplies TF32-rounded inputs by TF32-rounded weights, inside the block."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kept = [m.weight.data for m in linears]
    hooks = []
    for m in linears:
        m.weight.data = to_tf32(m.weight.data)
        hooks.append(m.register_forward_pre_hook(lambda _m, args: (to_tf32(args[0]), *args[1:])))
    try:
        yield
    finally:
        for m, w, h in zip(linears, kept, hooks):
            m.weight.data = w
            h.remove()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/snli_cpu.yaml")
    parser.add_argument("--adapter", type=Path, help="a run's adapter directory: score the fine-tuned model")
    parser.add_argument("--data", default=str(Path("..") / "shared" / "snli" / "test.jsonl"))
    parser.add_argument("--examples", type=int, default=1000, help="the first N labelled pairs (0: all)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [f"data.test={args.data}", "data.max_test_examples=0", "model.dtype=float32"])
    examples = nli.load_split(cfg, "test").examples
    examples = examples[: args.examples] if args.examples else examples
    cpu = torch.device("cpu")
    tokenizer = loading.load_tokenizer(cfg)
    with tempfile.TemporaryDirectory() as tmp:  # written and read back, as the evaluation stage does (a model
        loading.save_eval_model(loading.load_eval_model(cfg, args.adapter), Path(tmp))  # just merged runs slower)
        model = loading.load_saved_eval_model(cfg, Path(tmp)).eval()
    print(
        f"{len(examples)} pairs of {args.data}, {'fine-tuned' if args.adapter else 'base'} model "
        f"{cfg.model.name_or_path}; {memory.device_name()}; bf16 fast here: {loading.fast_bf16()}",
        flush=True,
    )

    def score(subset=None):
        return predict(model, tokenizer, cfg, examples if subset is None else [examples[i] for i in subset])

    exact, t_exact = timed(score)
    with tf32_linears(model):
        tf32, t_tf32 = timed(score)
    with matmul_precision("bf16", cpu):
        bf16, t_bf16 = timed(score)
    rows = [("float32", exact, t_exact, "—"), ("tf32 (emulated)", tf32, t_tf32, "—"), ("bf16", bf16, t_bf16, "—")]
    for m in MARGINS:
        with matmul_precision("bf16", cpu):
            fast, t_fast = timed(score)
        done, t_rescore = timed(lambda: rescore_near_ties(fast, score, m))  # noqa: B023 (called at once)
        rows.append((f"bf16 + re-scoring < {m} nats", fast, t_fast + t_rescore, f"{done['rescored']:,}"))

    print("\n| products | seconds | × float32 time | agreement with float32 | largest score shift | re-scored |")
    print("|---|---|---|---|---|---|")
    for name, got, secs, rescored in rows:
        agree = sum(a["pred"] == b["pred"] for a, b in zip(exact, got)) / len(exact)
        shift = max(abs(x - y) for a, b in zip(exact, got) for x, y in zip(a["scores"], b["scores"]))
        print(f"| {name} | {secs:.1f} | {secs / t_exact:.2f} | {100 * agree:.2f}% | {shift:.3f} | {rescored} |")
    near = sum(margin(r["scores"]) < MARGINS[0] for r in exact)
    print(f"\nfloat32 near-ties (two best scores within {MARGINS[0]} nats): {near} of {len(exact)} pairs")


if __name__ == "__main__":
    main()
