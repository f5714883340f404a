"""Evaluation speed, measured side by side in one run on the same examples and model.

    python -m bench.eval_speed [--examples 300] [--data ../shared/snli/test.jsonl] [--prompt harness]
                           [--repeat 3] [--shards 2] [--lm-eval bench/.venv-lmeval/bin/lm_eval] [--profile]

Rows: the seed-style loop (one example per forward pass, fp32, full logits, unquantized weights),
the project's batched path on the 4-bit model, and on that model dequantized to the evaluation dtype
(what `eval.weights: dequantized` runs), once with whole prompts and once with each premise run once
for all its hypotheses (`eval.share_prefix`, the default); the default path in the other dtype
(float32 / bfloat16); then the default path again as --shards 1-thread processes at once, the way
1-CPU eval array tasks share a node. With --adapter, the batched
rows score the fine-tuned model.
With --lm-eval (a venv made by bench/lm_eval_venv.sh), EleutherAI lm-evaluation-harness scores the
same examples, prompt and label words in a subprocess; --prompt harness gives all rows its prompt.
Prints examples/s, the ratio to the per-example loop, and agreement of predictions with the 4-bit
row. --profile instead shows where the default path spends its time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hpcnli.config import load_config, task_overrides
from hpcnli.data import nli
from hpcnli.io import read_jsonl, write_jsonl
from hpcnli.model import loading, memory
from hpcnli.scoring import prompts
from hpcnli.scoring.engine import predict

PROMPTS = {  # --prompt name -> (task.prompt, task.label_words); "config" keeps those of --config
    # The harness's own MNLI prompt and choices (lm_eval/tasks/glue/mnli, which also adds a missing final
    # "." to the hypothesis); each label word is one token for SmolLM2.
    "harness": ("{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:", (" True", " Neither", " False")),
}
HARNESS_TASK = "hpcnli_bench"
HARNESS_BATCH = 32
# tqdm's final line for the harness's scoring loop, e.g. "... 90/90 [01:05<00:00, 1.38it/s]"
SCORING_BAR = re.compile(r"Running loglikelihood requests: 100%\|[^|]*\| \d+/\d+ \[(?:(\d+):)?(\d+):(\d+)<")


def prompt_overrides(name: str) -> list[str]:
    if name == "config":
        return []
    return task_overrides(*PROMPTS[name])


def per_example_loop(model, tokenizer, cfg, examples) -> list[int]:
    """The original assignment's shape: one example per call, full-sequence logits, no batching."""
    label_ids = prompts.label_token_ids(tokenizer, cfg.task.label_words)
    preds = []
    with torch.inference_mode():
        for e in examples:
            ids = tokenizer(
                prompts.format_prompt(cfg.task.prompt, e), return_tensors="pt", add_special_tokens=False
            ).input_ids
            logits = model(input_ids=ids).logits[0, -1]
            preds.append(int(torch.argmax(logits[label_ids])))
    return preds


def profile_predict(model, tokenizer, cfg, examples) -> None:
    """Where the default path's time goes (torch.profiler): top operators, and the matrix products' GFLOP/s.

    Two passes: FLOP counting records every operator's inputs, which slows the small ones several
    times over, so the times come from a second pass without it.
    """
    from torch.profiler import ProfilerActivity, profile

    products = ("aten::mm", "aten::addmm", "aten::bmm")
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as counted:
        predict(model, tokenizer, cfg, examples)
    mm_flops = sum(op.flops for op in counted.key_averages() if op.key in products)
    with profile(activities=[ProfilerActivity.CPU]) as timed_pass:
        predict(model, tokenizer, cfg, examples)
    ops = timed_pass.key_averages()
    print(ops.table(sort_by="self_cpu_time_total", row_limit=12))
    total_us = sum(op.self_cpu_time_total for op in ops)
    mm_us = sum(op.self_cpu_time_total for op in ops if op.key in products)
    print(
        f"matrix products: {100 * mm_us / total_us:.0f}% of operator time, {mm_flops / 1e12:.2f} TFLOP in "
        f"{mm_us / 1e6:.1f} s = {mm_flops / mm_us / 1e3:.0f} GFLOP/s"
    )


def matching_budget(cfg, prompt_ids: list[list[int]]) -> int:
    """The token budget whose batches hold, on average, as many pairs as eval.batch_size (whole prompts,
    length-sorted, as the engine cuts them), at least task.max_length."""
    from hpcnli.data.batching import BatchRule, budget_for_rows

    lengths = [len(p) for p in prompt_ids]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return budget_for_rows(cfg.eval.batch_size, lambda n: BatchRule(tokens=n).cut(order, lengths), cfg.task.max_length)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _shard_worker(config: str, overrides: list[str], adapter, examples: list[dict], barrier, out) -> None:
    """One shard as an eval array task with 1 CPU runs it: one torch thread, model loaded before the clock starts."""
    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    tokenizer = loading.load_tokenizer(cfg)
    model = loading.load_eval_model(cfg, adapter).eval()
    barrier.wait()  # every shard loaded: the shards' predictions start together
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    preds = [r["pred"] for r in predict(model, tokenizer, cfg, examples)]
    out.put((examples[0]["id"], start, time.perf_counter(), preds))


def shards_at_once(config: str, overrides: list[str], adapter, examples: list[dict], n: int) -> tuple[list[int], float]:
    """The examples split as eval.num_shards=n splits them, one 1-thread process per shard, all at once.

    Returns the predictions in example order and the seconds from the first shard's start to the
    last shard's end (model loading excluded, as in the other rows).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    slices = [examples[slice(*nli.shard_bounds(len(examples), n, k))] for k in range(n)]
    procs = [
        ctx.Process(target=_shard_worker, args=(config, overrides, adapter, part, barrier, out)) for part in slices
    ]
    for proc in procs:
        proc.start()
    results = {}
    while len(results) < n:
        if not any(proc.is_alive() for proc in procs) and out.empty():
            raise SystemExit("a shard process died; see its error above")
        try:
            first_id, start, end, preds = out.get(timeout=5)
        except queue.Empty:
            continue
        results[first_id] = (start, end, preds)
    for proc in procs:
        proc.join()
    ordered = [results[part[0]["id"]] for part in slices]
    return [p for _, _, preds in ordered for p in preds], max(e for _, e, _ in ordered) - min(s for s, _, _ in ordered)


def lm_eval_harness(binary: str, cfg, examples: list[dict], dtype: str) -> dict:
    """The examples scored by lm-evaluation-harness (its own venv) on the unquantized model in `dtype`.

    A temporary multiple_choice task over the project's formatted prompts; the harness puts
    target_delimiter " " between prompt and choice, so the choices are the label words unspaced.
    Returns its version, accuracy, predictions, the subprocess wall clock and, when its progress
    bar shows it, the seconds of its scoring loop (1 s resolution; no model load, no tokenizing).
    """
    where, _ = loading.resolve_model(cfg.model)
    command = [binary, "-m", "lm_eval"] if Path(binary).name.startswith("python") else [binary]
    with tempfile.TemporaryDirectory(prefix="hpcnli-lmeval-") as tmp:
        tmp = Path(tmp)
        write_jsonl(
            tmp / "examples.jsonl",
            [{"prompt": prompts.format_prompt(cfg.task.prompt, e), "label": e["label"]} for e in examples],
        )
        task = {
            "task": HARNESS_TASK,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(tmp / "examples.jsonl")}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{prompt}}",
            "doc_to_choice": [w.removeprefix(" ") for w in cfg.task.label_words],
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc"}],
        }
        (tmp / f"{HARNESS_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp / "datasets"),
        }  # the examples leave no copy behind
        proc, wall_s = timed(
            lambda: subprocess.run(
                [
                    *command,
                    "--model",
                    "hf",
                    "--model_args",
                    f"pretrained={where},dtype={dtype}",
                    "--tasks",
                    HARNESS_TASK,
                    "--include_path",
                    str(tmp),
                    "--batch_size",
                    str(HARNESS_BATCH),
                    "--device",
                    "cpu",
                    "--output_path",
                    str(tmp / "out"),
                    "--log_samples",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
        )
        if proc.returncode != 0:
            raise SystemExit(f"lm_eval exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
        results = json.loads(next((tmp / "out").rglob("results_*.json")).read_text())
        samples = read_jsonl(next((tmp / "out").rglob(f"samples_{HARNESS_TASK}_*.jsonl")))
    preds = [0] * len(examples)
    for s in samples:  # filtered_resps: one (log-likelihood, is_greedy) per choice
        lls = [float(ll) for ll, _ in s["filtered_resps"]]
        preds[s["doc_id"]] = max(range(len(lls)), key=lls.__getitem__)
    bar = SCORING_BAR.findall(proc.stderr)
    scoring_s = None
    if bar:
        h, m, s = bar[-1]
        scoring_s = 3600 * int(h or 0) + 60 * int(m) + int(s)
    return {
        "version": results["lm_eval_version"],
        "acc": results["results"][HARNESS_TASK]["acc,none"],
        "preds": preds,
        "wall_s": wall_s,
        "scoring_s": scoring_s,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--examples", type=int, default=300, help="the first N labelled pairs of --data (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        default=str(Path("..") / "shared" / "snli" / "test.jsonl"),
        help="test file (default: %(default)s; 'synthetic' works offline anywhere)",
    )
    parser.add_argument("--config", default="jobs/default.yaml")
    parser.add_argument(
        "--adapter",
        type=Path,
        help="a run's adapter directory: the batched rows score the fine-tuned model (use that run's "
        "config.yaml as --config)",
    )
    parser.add_argument(
        "--prompt",
        choices=["config", *PROMPTS],
        default="config",
        help="'harness': the harness-style prompt and label words True/Neither/False for every row",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="a row with this many 1-thread shards at once, as eval_cpus_per_task: 1 runs them on a node "
        "with that many CPUs (default: the CPUs here, %(default)s; 1 leaves the row out)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of all rows, interleaved; each row reports its fastest round (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        help="a row of the default path by token budget (eval.batch_tokens); default: the budget whose "
        "batches hold eval.batch_size pairs on average over these examples",
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="only the default path in batches of eval.batch_size pairs against batches of --batch-tokens, "
        "one model loaded once for both, --repeat interleaved rounds",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile the default path once (torch.profiler) instead of the table",
    )
    parser.add_argument(
        "--lm-eval",
        metavar="BIN",
        help="python or lm_eval of a venv with lm-evaluation-harness (bench/lm_eval_venv.sh makes one)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.shards < 1:
        parser.error("--repeat and --shards: must be >= 1")
    return args, parser


def fastest_of_rounds(runners, repeat: int) -> list[tuple[str, float, list[int]]]:
    """(label, seconds, predictions) of every row: the fastest of `repeat` rounds. Rounds interleave the rows,
    so a slow spell of the machine hits them all."""
    best = {}
    for round_ in range(repeat):
        for runner in runners:
            for label, secs, preds in runner():
                if label in best and best[label][1] != preds:
                    print(f"note: predictions of '{label}' changed between rounds")
                if label not in best or secs < best[label][0]:
                    best[label] = (secs, preds)
        print(f"round {round_ + 1}/{repeat} done", flush=True)
    return [(label, secs, preds) for label, (secs, preds) in best.items()]


def print_table(rows, n_examples: int, repeat: int) -> None:
    """Speed against the first row (the per-example loop); agreement with the second (4-bit)."""
    base_s, ref4 = rows[0][1], rows[1][2]
    print(f"\nfastest of {repeat} interleaved round(s) per row" if repeat > 1 else "")
    print("| path | seconds | examples/s | speed-up vs per-example | agreement with 4-bit |")
    print("|---|---|---|---|---|")
    for label, secs, preds in rows:
        agree = sum(a == b for a, b in zip(preds, ref4)) / len(preds)
        print(f"| {label} | {secs:.1f} | {n_examples / secs:.1f} | {base_s / secs:.1f}x | {100 * agree:.1f}% |")


def print_harness_comparison(harness: dict, rows, compared_labels, examples) -> None:
    base_preds = rows[0][2]
    accuracy = sum(p == e["label"] for p, e in zip(base_preds, examples)) / len(examples)
    same = sum(a == b for a, b in zip(harness["preds"], base_preds)) / len(examples)
    print(
        "\nThe harness computes logits at every position over the whole vocabulary; its logits cache gives the "
        "three one-token choices one forward pass per example, as here. Its scoring loop is timed by its "
        "progress bar (1 s resolution)."
    )
    for label, secs, _ in (row for row in rows if row[0] in compared_labels):
        print(
            f"{label.split(' (')[0]} / harness: "
            + (f"{harness['scoring_s'] / secs:.2f}x scoring loop, " if harness["scoring_s"] else "")
            + f"{harness['wall_s'] / secs:.2f}x whole subprocess"
        )
    print(
        f"harness accuracy {100 * harness['acc']:.1f}%, per-example fp32 loop {100 * accuracy:.1f}% "
        f"(same unquantized weights); their predictions agree on {100 * same:.1f}%"
    )


def compare_batches(args, cfg, overrides, tokenizer, examples) -> None:
    """Batches of eval.batch_size pairs against batches of a token budget, on one loaded model (no load noise),
    the two interleaved over --repeat rounds; each row reports its fastest round."""
    budget = args.batch_tokens or matching_budget(cfg, prompts.tokenize_prompts(tokenizer, cfg, examples))
    model = loading.load_eval_model(cfg, args.adapter).eval()
    predict(model, tokenizer, cfg, examples[:32])  # warm-up
    rows = {
        f"{cfg.eval.batch_size} pairs per batch (eval.batch_size)": cfg,
        f"<= {budget} tokens per batch (eval.batch_tokens={budget})": load_config(
            args.config, [*overrides, f"eval.batch_tokens={budget}"]
        ),
    }
    best: dict[str, tuple[float, list]] = {}
    for _ in range(args.repeat):
        for label, row_cfg in rows.items():
            out, secs = timed(functools.partial(predict, model, tokenizer, row_cfg, examples))
            if label not in best or secs < best[label][0]:
                best[label] = (secs, [r["pred"] for r in out])
    first = next(iter(best.values()))
    print(f"\nthe default path, fastest of {args.repeat} interleaved round(s)\n")
    print("| batches | seconds | examples/s | vs pairs | same predictions |\n|---|---|---|---|---|")
    for label, (secs, preds) in best.items():
        same = sum(a == b for a, b in zip(preds, first[1])) / len(preds)
        print(f"| {label} | {secs:.1f} | {len(examples) / secs:.1f} | {first[0] / secs:.2f}x | {100 * same:.1f}% |")


def main(argv=None) -> None:
    args, parser = parse_args(argv)
    overrides = [f"data.test={args.data}", "data.max_test_examples=0", *prompt_overrides(args.prompt)]
    cfg = load_config(args.config, overrides)
    if args.lm_eval and not all(w.startswith(" ") for w in cfg.task.label_words):
        parser.error(
            "--lm-eval: the harness puts a space before each choice; every task.label_words entry must start with one"
        )
    examples = nli.load_split(cfg, "test").examples[: args.examples]  # in file order, as a shard gets them
    args.shards = min(args.shards, len(examples))
    tokenizer = loading.load_tokenizer(cfg)
    prompts.label_token_ids(tokenizer, cfg.task.label_words)  # one token each, checked before any model loads
    print(f"{len(examples)} examples from {args.data}; {memory.device_name()}; torch {torch.__version__}")

    if args.profile:
        return profile_predict(loading.load_eval_model(cfg, args.adapter).eval(), tokenizer, cfg, examples)
    if args.batches:
        return compare_batches(args, cfg, overrides, tokenizer, examples)

    from transformers import AutoModelForCausalLM

    where, _ = loading.resolve_model(cfg.model)
    dtype = loading.dtype_name(loading.stage_dtype(cfg.model.dtype, "eval"))
    adapter = ", adapter merged" if args.adapter else ""
    default = f"batched, dequantized to {dtype}{adapter}, premise run once per group (the default)"
    other = "bfloat16" if dtype == "float32" else "float32"  # the same path in the other dtype, side by side
    at_once = (
        f"{args.shards} shards at once, 1 thread each (the default path, as eval_cpus_per_task: 1 runs "
        f"eval.num_shards={args.shards} on a {args.shards}-CPU node)"
    )

    def per_example():
        fp32 = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval()
        preds, secs = timed(lambda: per_example_loop(fp32, tokenizer, cfg, examples))
        return [("per-example loop, fp32 (seed style)", secs, preds)]

    def batched(label, extra):
        def run():
            run_cfg = load_config(args.config, [*overrides, *extra])
            model = loading.load_eval_model(run_cfg, args.adapter).eval()
            out, secs = timed(lambda: predict(model, tokenizer, run_cfg, examples))
            return [(label, secs, [r["pred"] for r in out])]

        return run

    def shards():
        preds, secs = shards_at_once(args.config, overrides, args.adapter, examples, args.shards)
        return [(at_once, secs, preds)]

    harness = {}

    def lm_eval():
        harness.update(lm_eval_harness(args.lm_eval, cfg, examples, dtype))
        name = f"lm-evaluation-harness {harness['version']}, batch {HARNESS_BATCH}, unquantized {dtype}"
        scoring = [(f"{name}: scoring loop", harness["scoring_s"], harness["preds"])] if harness["scoring_s"] else []
        return scoring + [
            (f"{name}: whole subprocess (start-up, model load, scoring)", harness["wall_s"], harness["preds"])
        ]

    budget = args.batch_tokens or matching_budget(cfg, prompts.tokenize_prompts(tokenizer, cfg, examples))
    runners = [
        per_example,
        batched(
            f"batched, 4-bit NF4{', adapter unmerged' if args.adapter else ''} (eval.weights=4bit)",
            ["eval.weights=4bit"],
        ),
        batched(
            f"batched, dequantized to {dtype}{adapter}, whole prompts (eval.share_prefix=false)",
            ["eval.share_prefix=false"],
        ),
        batched(default, []),
        batched(
            f"the default, in batches of <= {budget} tokens (eval.batch_tokens={budget}) instead of "
            f"{cfg.eval.batch_size} pairs",
            [f"eval.batch_tokens={budget}"],
        ),
        batched(
            f"batched, dequantized to {other}{adapter}, premise run once per group (model.dtype={other})",
            [f"model.dtype={other}", f"quantization.compute_dtype={other}"],
        ),
    ]
    if args.shards > 1:
        runners.append(shards)
    if args.lm_eval:
        runners.append(lm_eval)
    rows = fastest_of_rounds(runners, args.repeat)
    print_table(rows, len(examples), args.repeat)
    if args.lm_eval:
        print_harness_comparison(harness, rows, (default, at_once), examples)


if __name__ == "__main__":
    main()
