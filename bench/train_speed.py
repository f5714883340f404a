"""Training speed, measured side by side in one process: the first recipe against the tuned one.

    python -m bench.train_speed [--config jobs/snli_cpu.yaml] [--steps 16] [--warmup 3] [--dtypes | --processes]

Each row runs the real training loop (`hpcnli.finetune.run`) for the same number of optimizer
steps on the same training pairs, adding one change at a time to the first session's recipe (long
prompt, LoRA dropout 0.05, loss over the whole vocabulary, random batches) until it is the recipe of
--config; a last row also restricts LoRA to the top layers. Prints examples/s after the first
--warmup steps (and over all steps), prompt tokens/s and the speed-up over the first row.
--dtypes instead runs the config's recipe in float32, with bfloat16 4-bit compute, and all in bfloat16;
--processes runs it as 1 process with 2 threads and as 2 data-parallel processes with 1 thread each;
--batches runs it in batches of train.batch_size pairs and in batches of the token budget that holds as
many pairs per step on average (train.batch_tokens).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hpcnli import finetune
from hpcnli.config import TaskConfig, load_config, task_overrides
from hpcnli.launch.local import finetune_command
from hpcnli.run.paths import RunPaths

FIRST_RECIPE = [
    *task_overrides(TaskConfig.prompt, TaskConfig.label_words),
    "lora.dropout=0.05",
    "lora.top_layers=0",
    "train.loss=vocab",
    "train.group_by_length=false",
]
STEPS = [  # (row label, the overrides of FIRST_RECIPE that the row drops, the overrides it adds)
    ("first recipe: long prompt, LoRA dropout 0.05, vocabulary loss, random batches", (), ()),
    ("+ loss over the 3 label words (output layer cut to their 3 rows)", ("train.loss",), ()),
    ("+ batches grouped by length", ("train.group_by_length",), ()),
    ("+ the config's prompt", ("task.prompt", "task.label_words"), ()),
    ("+ the config's LoRA dropout (= the config's recipe)", ("lora.dropout",), ()),
    (
        "+ LoRA on the top 15 layers only (not the config's recipe: less accurate per example)",
        (),
        ("lora.top_layers=15",),
    ),
]

DTYPE_ROWS = [  # --dtypes: the config's recipe in each dtype (model.dtype, quantization.compute_dtype)
    ("config's recipe, all float32", ("float32", "float32")),
    ("config's recipe, float32 weights, bfloat16 4-bit compute", ("float32", "bfloat16")),
    ("config's recipe, all bfloat16", ("bfloat16", "bfloat16")),
]

PROCESS_ROWS = [  # --processes: (label, processes, torch threads each); the global batch stays the config's
    ("1 process x 2 threads", 1, 2),
    ("2 processes x 1 thread (gloo data parallel)", 2, 1),
]


def run_processes(config: str, overrides: list[str], processes: int, threads: int, run_dir: Path) -> dict:
    """One fine-tune as the local executor runs it (torchrun for several processes); its train_metrics."""
    batch = load_config(config, overrides).train.batch_size // processes
    row = [*overrides, f"train.batch_size={batch}", f"resources.processes_per_node={processes}"]
    subprocess.run(
        [sys.executable, "-m", "hpcnli.submit", "--plan-only", "--config", config, "--run-dir", str(run_dir), *row],
        check=True,
        capture_output=True,
    )
    cfg = load_config(RunPaths(run_dir).config)
    subprocess.run(
        [sys.executable, "-m", *finetune_command(cfg, str(run_dir))],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    return json.loads(RunPaths(run_dir).train_metrics.read_text())


def steady_rate(loss_curve: list[dict], warmup: int) -> float:
    """Examples/s after the first `warmup` steps (one loss record per step): the first steps of a
    process are slower (memory first touched, kernels chosen)."""
    start, end = loss_curve[warmup - 1], loss_curve[-1]
    return (end["examples_seen"] - start["examples_seen"]) / (end["elapsed_s"] - start["elapsed_s"])


def token_budget_rows(config: str) -> list[tuple[str, list[str]]]:
    """The config's recipe in batches of batch_size pairs, and in batches of the token budget that holds as
    many pairs per step on average over one epoch of the config's training pairs, cut as finetune cuts them."""
    from hpcnli.data.batching import BatchRule, budget_for_rows, global_batches
    from hpcnli.data.nli import load_split
    from hpcnli.model.loading import load_tokenizer
    from hpcnli.scoring.prompts import tokenize_prompts

    cfg = load_config(config)
    t = cfg.train
    lengths = [len(p) for p in tokenize_prompts(load_tokenizer(cfg), cfg, load_split(cfg, "train").examples)]
    budget = budget_for_rows(
        t.batch_size,
        lambda n: global_batches(lengths, BatchRule(tokens=n), t.seed, 0, t.group_by_length),
        cfg.task.max_length,
    )
    return [
        (f"config's recipe, batches of {t.batch_size} pairs", []),
        (
            f"config's recipe, batches of <= {budget} tokens (train.batch_tokens={budget})",
            [f"train.batch_tokens={budget}"],
        ),
    ]


def recipe_rows(dtypes: bool, batches: bool, config: str) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each in-process row: the config's recipe in each dtype or batching, or the recipe steps."""
    if batches:
        return token_budget_rows(config)
    if dtypes:
        return [(label, [f"model.dtype={w}", f"quantization.compute_dtype={c}"]) for label, (w, c) in DTYPE_ROWS]
    rows, kept = [], list(FIRST_RECIPE)
    for label, dropped, added in STEPS:
        kept = [o for o in kept if not o.startswith(dropped)] + list(added)
        rows.append((label, kept))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/snli_cpu.yaml")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per row (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="first steps of each row left out of examples/s (default: %(default)s)"
    )
    parser.add_argument(
        "--dtypes",
        action="store_true",
        help="rows of the config's recipe in float32 and bfloat16 instead of the recipe steps",
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="rows of batch_size pairs against a token budget holding as many pairs on average",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="rows of 1 process x 2 threads against 2 processes x 1 thread, same global batch",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup: must be at least 1 and below --steps ({args.steps}), got {args.warmup}")
    logging.basicConfig(level=logging.WARNING)
    fixed = [f"train.max_steps={args.steps}", "train.checkpoint_every=0", "train.log_every=1"]

    rows = []

    def add(label: str, metrics: dict) -> None:
        rows.append((label, metrics, steady_rate(metrics["loss_curve"], args.warmup)))
        print(f"{label}: {rows[-1][2]:.2f} examples/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if args.processes:
            for i, (label, processes, threads) in enumerate(PROCESS_ROWS):
                add(label, run_processes(args.config, fixed, processes, threads, Path(tmp) / f"row{i}"))
        for i, (label, row_overrides) in enumerate(
            [] if args.processes else recipe_rows(args.dtypes, args.batches, args.config)
        ):
            paths = RunPaths(Path(tmp) / f"row{i}")
            paths.run_dir.mkdir()
            add(label, finetune.run(load_config(args.config, row_overrides + fixed), paths).to_json())
    cfg = load_config(args.config, fixed)

    first = rows[0][2]
    print(
        f"\n{args.steps} steps of batch {cfg.train.batch_size} per row on {cfg.data.train}, the first {args.warmup} "
        f"left out of examples/s; {rows[0][1]['device']}\n"
    )
    print("| recipe | examples/s | examples/s with the first steps | prompt tokens/s | pairs per step | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, m, rate in rows:
        print(
            f"| {label} | {rate:.2f} | {m['examples_per_s']:.2f} | {m['tokens_per_s']:.0f} | "
            f"{m['examples_seen'] / m['steps']:.1f} | {rate / first:.2f}x |"
        )


if __name__ == "__main__":
    main()
