"""Tune the CPU SNLI recipe on a held-out slice of the training file, never on the test file.

    python -m bench.tune_snli [--only NAME ...] [--out results/snli-tuning]

Every try is a real run of the pipeline (`python -m hpcnli.submit --executor local`) on
`jobs/snli_cpu.yaml` with `data.test=holdout`: fine-tune on pairs of ../shared/snli/validation.jsonl,
score base and fine-tuned models on HOLDOUT other pairs of the same file. Zero-shot tries run only the
base model (`--plan-only`, then `python -m hpcnli.evaluate`). A try whose results exist is not run
again; OUT/tries.md is rewritten with one row per finished try.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.eval_speed import PROMPTS as BENCH_PROMPTS
from hpcnli.config import TaskConfig, task_overrides

HOLDOUT = [
    "data.holdout=800",
    "data.test=holdout",
    "data.max_test_examples=0",
    "eval.num_shards=1",
    "train.epochs=1",
    "train.max_steps=0",
    "train.max_grad_norm=0",
]  # as the tries ran, whatever the config says
PROMPTS = {
    "long": (TaskConfig.prompt, TaskConfig.label_words),  # the package default
    "short": ("{premise}\nQuestion: {hypothesis} yes, maybe or no?\nAnswer:", (" yes", " maybe", " no")),
    "harness": BENCH_PROMPTS["harness"],
}


def prompt(name: str) -> list[str]:
    return task_overrides(*PROMPTS[name])


# (name, what it tests, overrides). Fine-tuning tries see 1,600 pairs unless they say otherwise.
N = ["data.max_train_examples=1600"]
TRIES = [
    *[(f"zeroshot-{p}", f"zero-shot, prompt '{p}'", prompt(p)) for p in PROMPTS],
    (
        "ft-top15",
        "short prompt, LoRA (dropout 0.05) on the top 15 of 30 layers, lr 5e-4",
        N + prompt("short") + ["lora.top_layers=15", "lora.dropout=0.05", "train.learning_rate=5e-4"],
    ),
    (
        "ft-top15-lr1e-3",
        "top 15, lr 1e-3",
        N + prompt("short") + ["lora.top_layers=15", "lora.dropout=0.05", "train.learning_rate=1e-3"],
    ),
    (
        "ft-top15-lr2e-3",
        "top 15, lr 2e-3",
        N + prompt("short") + ["lora.top_layers=15", "lora.dropout=0.05", "train.learning_rate=2e-3"],
    ),
    (
        "ft-all-lr2e-3",
        "all 30 layers, LoRA dropout 0, lr 2e-3",
        N + prompt("short") + ["lora.top_layers=0", "lora.dropout=0", "train.learning_rate=2e-3"],
    ),
    (
        "ft-all-lr1e-3",
        "all 30 layers, LoRA dropout 0, lr 1e-3",
        N + prompt("short") + ["lora.top_layers=0", "lora.dropout=0", "train.learning_rate=1e-3"],
    ),
    (
        "ft-all-lr2e-3-vocab",
        "all layers, dropout 0, lr 2e-3, loss over the whole vocabulary",
        N + prompt("short") + ["lora.top_layers=0", "lora.dropout=0", "train.learning_rate=2e-3", "train.loss=vocab"],
    ),
    (
        "ft-all-lr2e-3-harness",
        "all layers, dropout 0, lr 2e-3, prompt 'harness' (True/Neither/False)",
        N + prompt("harness") + ["lora.top_layers=0", "lora.dropout=0", "train.learning_rate=2e-3"],
    ),
    (
        "ft-old-recipe",
        "the first session's recipe: long prompt, all layers, LoRA dropout 0.05, vocabulary loss, "
        "random batches, lr 5e-4",
        N
        + prompt("long")
        + [
            "lora.top_layers=0",
            "lora.dropout=0.05",
            "train.loss=vocab",
            "train.group_by_length=false",
            "train.learning_rate=5e-4",
        ],
    ),
]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def zero_shot_row(run_dir: Path) -> tuple[str, str] | None:
    preds = run_dir / "predictions" / "base" / "shard_0000.jsonl"
    if not preds.exists():
        return None
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    counts = "/".join(str(sum(r["pred"] == k for r in rows)) for k in range(3))
    acc = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
    return f"0 | | | {100 * acc:.1f}% | |", counts


def fine_tune_row(run_dir: Path) -> tuple[str, str] | None:
    report = run_dir / "report.json"
    if not report.exists():
        return None
    r = json.loads(report.read_text())
    t, counts = r["training"], r["models"]["finetuned"]["predicted_label_counts"]
    return (
        f"{t['examples_seen']} | {t['runtime_s']:.0f} | {t['examples_per_s']:.2f} "
        f"| {100 * r['models']['base']['accuracy']:.1f}% | {100 * r['models']['finetuned']['accuracy']:.1f}% |",
        "/".join(map(str, counts)),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of the tries to run (default: all)")
    parser.add_argument("--out", default="results/snli-tuning")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    lines = [
        "| try | what it tests | train pairs | training s | train examples/s | base acc | fine-tuned acc "
        "| predicted e/n/c |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, what, overrides in TRIES:
        run_dir = out / name
        zero_shot = name.startswith("zeroshot")
        row = (zero_shot_row if zero_shot else fine_tune_row)(run_dir)
        if row is None and (not args.only or name in args.only):
            cli = [
                py,
                "-m",
                "hpcnli.submit",
                "--config",
                "jobs/snli_cpu.yaml",
                "--executor",
                "local",
                "--run-dir",
                str(run_dir),
                *HOLDOUT,
                *overrides,
            ]
            if zero_shot:
                run([*cli, "--plan-only"])
                run([py, "-m", "hpcnli.evaluate", str(run_dir), "--model", "base", "--shard", "0"])
            else:
                run(cli)
            row = (zero_shot_row if zero_shot else fine_tune_row)(run_dir)
        if row is not None:
            lines.append(f"| {name} | {what} | {row[0]} {row[1]} |")
            print(lines[-1], flush=True)
    (out / "tries.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
