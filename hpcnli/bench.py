"""Evaluation speed, measured side by side in one process on the same examples and model.

    python -m hpcnli.bench [--examples 300] [--data ../shared/snli/test.jsonl] [--prompt harness]
                           [--lm-eval bench/.venv-lmeval/bin/lm_eval]

Rows: the seed-style loop (one example per forward pass, fp32, full logits, unquantized weights),
the project's batched path on the 4-bit model, and on that model dequantized to model.dtype (what
`eval.weights: dequantized` runs), once with whole prompts and once with each premise run once for
all its hypotheses (`eval.share_prefix`, the default); with --adapter, the batched rows score the
fine-tuned model.
With --lm-eval (a venv made by bench/lm_eval_venv.sh), EleutherAI lm-evaluation-harness scores the
same examples, prompt and label words in a subprocess; --prompt harness gives all rows its prompt.
Prints examples/s, the ratio to the per-example loop, and agreement of predictions with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hpcnli import data as nli_data
from hpcnli import modeling
from hpcnli.config import load_config, task_overrides
from hpcnli.evaluate import predict
from hpcnli.io import read_jsonl, write_jsonl

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


def lm_eval_harness(binary: str, cfg, examples: list[dict], dtype: str) -> dict:
    """The examples scored by lm-evaluation-harness (its own venv) on the unquantized model in `dtype`.

    A temporary multiple_choice task over the project's formatted prompts; the harness puts
    target_delimiter " " between prompt and choice, so the choices are the label words unspaced.
    Returns its version, accuracy, predictions, the subprocess wall clock and, when its progress
    bar shows it, the seconds of its scoring loop (1 s resolution; no model load, no tokenizing).
    """
    where, _ = modeling.resolve_model(cfg.model)
    command = [binary, "-m", "lm_eval"] if Path(binary).name.startswith("python") else [binary]
    with tempfile.TemporaryDirectory(prefix="hpcnli-lmeval-") as tmp:
        tmp = Path(tmp)
        write_jsonl(tmp / "examples.jsonl", [{"prompt": modeling.format_prompt(cfg.task.prompt, e),
                                              "label": e["label"]} for e in examples])
        task = {"task": HARNESS_TASK, "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(tmp / "examples.jsonl")}}, "test_split": "test",
                "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
                "doc_to_choice": [w.removeprefix(" ") for w in cfg.task.label_words], "doc_to_target": "label",
                "metric_list": [{"metric": "acc"}]}
        (tmp / f"{HARNESS_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(tmp / "datasets")}  # the examples leave no copy behind
        proc, wall_s = timed(lambda: subprocess.run(
            [*command, "--model", "hf", "--model_args", f"pretrained={where},dtype={dtype}", "--tasks", HARNESS_TASK,
             "--include_path", str(tmp), "--batch_size", str(HARNESS_BATCH), "--device", "cpu",
             "--output_path", str(tmp / "out"), "--log_samples"],
            env=env, capture_output=True, text=True))
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
    return {"version": results["lm_eval_version"], "acc": results["results"][HARNESS_TASK]["acc,none"],
            "preds": preds, "wall_s": wall_s, "scoring_s": scoring_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="the first N labelled pairs of --data (default: %(default)s)")
    parser.add_argument("--data", default=str(Path("..") / "shared" / "snli" / "test.jsonl"),
                        help="test file (default: %(default)s; 'synthetic' works offline anywhere)")
    parser.add_argument("--config", default="jobs/default.yaml")
    parser.add_argument("--adapter", type=Path,
                        help="a run's adapter directory: the batched rows score the fine-tuned model (use that run's "
                             "config.yaml as --config)")
    parser.add_argument("--prompt", choices=["config", *PROMPTS], default="config",
                        help="'harness': the harness-style prompt and label words True/Neither/False for every row")
    parser.add_argument("--lm-eval", metavar="BIN",
                        help="python or lm_eval of a venv with lm-evaluation-harness (bench/lm_eval_venv.sh makes one)")
    args = parser.parse_args(argv)
    overrides = [f"data.test={args.data}", "data.max_test_examples=0", *prompt_overrides(args.prompt)]
    cfg = load_config(args.config, overrides)
    if args.lm_eval and not all(w.startswith(" ") for w in cfg.task.label_words):
        parser.error("--lm-eval: the harness puts a space before each choice; every task.label_words entry "
                     "must start with one")
    examples = nli_data.load_split(cfg, "test").examples[:args.examples]  # in file order, as a shard gets them
    tokenizer = modeling.load_tokenizer(cfg)
    modeling.label_token_ids(tokenizer, cfg.task.label_words)  # one token each, checked before any model loads
    print(f"{len(examples)} examples from {args.data}; {modeling.device_name()}; torch {torch.__version__}")

    from transformers import AutoModelForCausalLM

    where, _ = modeling.resolve_model(cfg.model)
    fp32 = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval()
    base_preds, base_s = timed(lambda: per_example_loop(fp32, tokenizer, cfg, examples))
    fp32 = None  # free it before the next model loads
    rows = [("per-example loop, fp32 (seed style)", base_s, base_preds)]

    dtype = str(modeling.torch_dtype(cfg.model.dtype)).removeprefix("torch.")
    adapter = ", adapter merged" if args.adapter else ""
    variants = [  # (row label, config overrides)
        (f"batched, 4-bit NF4{', adapter unmerged' if args.adapter else ''} (eval.weights=4bit)", ["eval.weights=4bit"]),
        (f"batched, dequantized to {dtype}{adapter}, whole prompts (eval.share_prefix=false)", ["eval.share_prefix=false"]),
        (f"batched, dequantized to {dtype}{adapter}, premise run once per group (the default)", []),
    ]
    for label, extra in variants:
        run_cfg = load_config(args.config, [*overrides, *extra])
        model = modeling.load_eval_model(run_cfg, args.adapter).eval()
        out, secs = timed(lambda: predict(model, tokenizer, run_cfg, examples))
        rows.append((label, secs, [r["pred"] for r in out]))
        model = None
    fastest = min(rows[1:], key=lambda row: row[1])

    if args.lm_eval:
        harness = lm_eval_harness(args.lm_eval, cfg, examples, dtype)
        name = f"lm-evaluation-harness {harness['version']}, batch {HARNESS_BATCH}, unquantized {dtype}"
        if harness["scoring_s"]:
            rows.append((f"{name}: scoring loop", harness["scoring_s"], harness["preds"]))
        rows.append((f"{name}: whole subprocess (start-up, model load, scoring)", harness["wall_s"], harness["preds"]))

    print("\n| path | seconds | examples/s | speed-up vs per-example | agreement with 4-bit |")
    print("|---|---|---|---|---|")
    ref4 = rows[1][2]
    for label, secs, preds in rows:
        agree = sum(a == b for a, b in zip(preds, ref4)) / len(preds)
        print(f"| {label} | {secs:.1f} | {len(examples) / secs:.1f} | {base_s / secs:.1f}x | {100 * agree:.1f}% |")

    if args.lm_eval:
        accuracy = sum(p == e["label"] for p, e in zip(base_preds, examples)) / len(examples)
        same = sum(a == b for a, b in zip(harness["preds"], base_preds)) / len(examples)
        print("\nThe harness computes logits at every position over the whole vocabulary; its logits cache gives the "
              "three one-token choices one forward pass per example, as here. Its scoring loop is timed by its "
              "progress bar (1 s resolution).")
        print(f"{fastest[0].split(' (')[0]} / harness: "
              + (f"{harness['scoring_s'] / fastest[1]:.1f}x scoring loop, " if harness["scoring_s"] else "")
              + f"{harness['wall_s'] / fastest[1]:.1f}x whole subprocess")
        print(f"harness accuracy {100 * harness['acc']:.1f}%, per-example fp32 loop {100 * accuracy:.1f}% "
              f"(same unquantized weights); their predictions agree on {100 * same:.1f}%")


if __name__ == "__main__":
    main()
