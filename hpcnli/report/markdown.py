"""report.md, rendered from report.json alone (and the plots drawn from it)."""

from __future__ import annotations

import json
import math

from hpcnli.io import atomic_write_text
from hpcnli.records import Report, TrainMetrics
from hpcnli.report.plots import write_plots
from hpcnli.run.paths import MODELS, RunPaths


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = ",.1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _mb(memory: dict, estimate: dict | None = None) -> str:
    """Measured peaks (MiB, GiB: 2**20, 2**30 bytes), and the memory plan's estimate beside them. On a GPU the
    headline is what the card had in use (reserved + CUDA context): the memory it must have free to run this."""
    if "gpu_peak_allocated_mb" in memory:
        planned = ""
        if estimate:
            needs = estimate.get("device_bytes")
            planned = f"; planned {needs / 2**30:,.1f} GiB" if needs else ""
            planned += f", tensors {estimate['total_bytes'] / 2**30:,.1f} GiB"
        in_use = memory.get("gpu_peak_in_use_mb")
        head = (
            f"GPU in use {in_use / 1024:,.1f} GiB (reserved {memory['gpu_peak_reserved_mb'] / 1024:,.1f} + CUDA "
            f"context {memory['gpu_context_mb'] / 1024:,.1f}), "
            if in_use is not None
            else f"GPU reserved {memory['gpu_peak_reserved_mb'] / 1024:,.1f} GiB, "
        )
        return f"{head}allocated {memory['gpu_peak_allocated_mb'] / 1024:,.1f} GiB{planned}"
    planned = f"; planned {estimate['total_bytes'] / 2**20:,.0f} MiB" if estimate else ""
    if "process_peak_rss_mb" in memory:
        work = f", the model and its work {memory['work_peak_rss_mb']:,.0f} MiB" if "work_peak_rss_mb" in memory else ""
        return f"process peak RSS {memory['process_peak_rss_mb']:,.0f} MiB{work} (no GPU){planned}"
    return "n/a"


def p_value(comparison: dict) -> str:
    """McNemar's p, as a bound where it underflowed a double (reports before its logarithm was kept)."""
    p, log10 = comparison["mcnemar_exact_p"], comparison.get("mcnemar_log10_p")
    if p > 0:
        return f"p = {p:.3g}"
    if log10 is None:
        return "p < 1e-307"
    exponent = math.floor(log10)
    return f"p = {10 ** (log10 - exponent):.2g}e{exponent}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_incomplete(rep: Report, run_dir) -> str:
    lines = [
        f"# hpcnli run `{rep.run}`: INCOMPLETE",
        "",
        f"**{len(rep.problems)} problem(s): shards missing or invalid, or inputs changed; "
        f"{rep.missing_examples} example "
        "predictions missing.** No accuracy is reported until every test example has exactly one "
        "prediction per model.",
        "",
        "| model | shard | examples | problem |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {p['model']} | {'—' if p['shard'] is None else p['shard']} | {p['examples']} | {_cell(p['problem'])} |"
        for p in rep.problems
    ]
    lines += ["", f"Complete it with `python -m hpcnli.submit --resume {run_dir}`.", ""]
    return "\n".join(lines)


def _headline(rep: Report, plots: list[tuple[str, str]]) -> list[str]:
    cfg, ts, models, cmp_ = rep.config, rep.test_set, rep.models, rep.comparison
    base = (
        "4-bit " + cfg["quantization"]["quant_type"].upper()
        if cfg["quantization"]["load_in_4bit"]
        else cfg["model"]["dtype"]
    )
    out = [f"# hpcnli run `{rep.run}`", ""]
    if "synthetic" in ts["source"]:
        out += ["> **Synthetic data.** This run uses the project's generated NLI set (templates), not SNLI.", ""]
    out += [
        f"Model `{cfg['model']['name_or_path']}`, {base} base + LoRA r={cfg['lora']['r']}; "
        f"test set `{ts['source']}`, {ts['examples']:,} examples ({ts['dropped']} without gold label dropped)."
        + (f" {ts['train_overlap']:,} of them are also training pairs." if "train_overlap" in ts else ""),
        "",
        "## Did fine-tuning help?",
        "",
        "| model | accuracy | 95% CI | correct / examples |",
        "|---|---|---|---|",
    ]
    for m in MODELS:
        r = models[m]
        out.append(
            f"| {m} | **{pct(r['accuracy'])}** | {pct(r['accuracy_ci95'][0])} – {pct(r['accuracy_ci95'][1])} "
            f"| {r['correct']:,} / {r['examples']:,} |"
        )
    out += [
        "",
        f"Difference (fine-tuned − base): **{100 * cmp_['difference']:+.1f} points** "
        f"(95% CI {100 * cmp_['ci95'][0]:+.1f} to {100 * cmp_['ci95'][1]:+.1f}); fine-tuning fixed "
        f"{cmp_['fixed']:,} examples and broke {cmp_['broken']:,}; McNemar exact {p_value(cmp_)}.",
        "",
    ]
    return out + [f"![{t}]({f})" for t, f in plots]


def _per_class(rep: Report) -> list[str]:
    models = rep.models
    out = ["", "## Per class", "", "| model | class | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    for m in MODELS:
        for name, c in models[m]["per_class"].items():
            out.append(f"| {m} | {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    return out + [
        "",
        "Predicted label counts (entailment / neutral / contradiction): "
        + "; ".join(f"{m} {'/'.join(str(k) for k in models[m]['predicted_label_counts'])}" for m in MODELS),
        "",
    ]


def _changed_examples(rep: Report) -> list[str]:
    out, cmp_ = [], rep.comparison
    for title, key in (
        ("Examples fine-tuning fixed", "fixed_examples"),
        ("Examples fine-tuning broke", "broken_examples"),
    ):
        n = cmp_["fixed"] if key == "fixed_examples" else cmp_["broken"]
        shown = getattr(rep, key)
        out += [f"## {title} ({n:,}; up to {len(shown)} shown, chosen by id hash)", ""]
        if shown:
            out += ["| id | premise | hypothesis | gold | base | fine-tuned |", "|---|---|---|---|---|---|"]
            out += [
                f"| {_cell(e['id'])} | {_cell(e['premise'])} | {_cell(e['hypothesis'])} | "
                f"{e['gold']} | {e['base']} | {e['finetuned']} |"
                for e in shown
            ]
        out.append("")
    return out


def _eval_batch(ev: dict) -> str:
    tokens = ev.get("batch_tokens")
    return f"{ev['batch_size']} pairs" if tokens is None else f"<= {tokens} tokens"


def _train_batch(train: TrainMetrics, cfg: dict) -> str:
    if train.batch is not None:
        return train.batch
    return f"{cfg['train']['batch_size']} pairs"  # version 1: runs before token budgets


def _rank_spread(train: TrainMetrics) -> str:
    """The largest rank's peak is shown; with several ranks, how far the others were below it."""
    ranks = train.memory_per_rank or []
    key = next(
        (k for k in ("gpu_peak_in_use_mb", "gpu_peak_allocated_mb") if ranks and k in ranks[0]), "work_peak_rss_mb"
    )
    values = [m[key] for m in ranks if key in m]
    if len(values) < 2:
        return ""
    return f" (the largest of {len(values)} ranks; smallest {min(values):,.0f} MiB)"


def _on_off(flag) -> str:
    return "n/a" if flag is None else ("on" if flag else "off")


def _curve(rep: Report) -> list[str]:
    """The held-out curve (train.eval_every): its points, the best step, the adapter scored and why training
    ended, and what the evaluations cost against training."""
    train = rep.training
    if train is None or not train.heldout_curve:
        return []
    held, cfg = train.heldout_curve, rep.config["train"]
    best = next(p for p in held if p["step"] == train.best_step)
    spent = train.heldout_s or 0.0
    training = train.runtime_s - spent
    out = [
        "",
        "## Learning curve (held-out pairs)",
        "",
        f"{train.heldout_pairs:,} pairs of data.holdout (never trained on, not the test file), scored as the "
        f"evaluation stage scores them at step 0, every {cfg['eval_every']} steps and at the last step. "
        f"**Best: step {best['step']}**, accuracy {100 * best['accuracy']:.2f}% "
        f"[{100 * best['ci_low']:.2f}, {100 * best['ci_high']:.2f}], loss {best['loss']:.4f}.",
        "",
        f"- adapter scored by the evaluation stage: the **{train.kept}** step's, step {train.adapter_step} "
        f"(train.keep: {train.kept})",
        f"- training ended: {train.ended}",
        f"- held-out scoring took {spent:,.1f} s, {100 * spent / training:.1f}% of the {training:,.1f} s of training",
        "",
        "| step | examples seen | held-out accuracy | 95% CI | held-out loss | seconds |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {p['step']}{' (best)' if p['step'] == train.best_step else ''} | {p['examples_seen']:,} | "
        f"{100 * p['accuracy']:.2f}% | [{100 * p['ci_low']:.2f}, {100 * p['ci_high']:.2f}] | {p['loss']:.4f} | "
        f"{p['seconds']:.1f} |"
        for p in held
    ]
    return out + [""]


def _cost(rep: Report) -> list[str]:
    train, models, cfg = rep.training, rep.models, rep.config
    out = ["## Cost", "", "| what | value |", "|---|---|"]
    if train is None:
        out.append("| training | n/a |")
    else:
        params = train.parameters
        out += [
            f"| training examples | {train.train_examples:,} from `{train.train_source}` |",
            f"| training runtime | {train.runtime_s:,.1f} s ({train.steps} steps, "
            f"{train.examples_seen:,} examples seen, "
            f"{train.examples_per_s:.2f} examples/s, {train.tokens_per_s:,.0f} tokens/s) |",
            f"| training processes | {train.num_processes} on "
            f"{1 if train.nodes is None else train.nodes} node(s), batch "
            f"{_train_batch(train, cfg)} per process, {_num(train.effective_batch_size, ',.1f')} pairs per "
            f"optimizer step, gradient checkpointing {_on_off(train.gradient_checkpointing)} |",
            f"| training loss | final {_num(train.final_loss, '.4f')}, best {_num(train.best_loss, '.4f')} |",
            f"| training peak memory | {_mb(train.memory, train.memory_estimate)}{_rank_spread(train)} |",
            f"| parameters | {params['total']:,} total (4-bit weights counted unpacked), "
            f"{params['trainable']:,} trainable LoRA "
            f"({100 * params['trainable_share']:.2f}%) |",
            f"| adapter size on disk | {train.adapter_bytes / 2**20:.1f} MiB |",
        ]
    for m in MODELS:
        r, shards = models[m], rep.shards[m]
        out.append(
            f"| {m} eval | {r['eval_runtime_summed_s']:,.1f} s predicting + {r['eval_model_load_summed_s']:,.1f} s "
            f"model loading summed over {len(shards)} shards ({r['eval_wall_span_s']:,.1f} s wall-clock "
            f"from first start to last end), {_num(r['eval_examples_per_s'])} examples/s per shard-second; "
            f"{_mb(r['peak_memory'], shards[0].memory_estimate if shards else None)} |"
        )
    return out


def _jobs(rep: Report) -> list[str]:
    # Shards since version 3 time their first batch (warm-up) and their wait for the eval weights apart.
    split = all(s.steady_examples_per_s is not None for m in MODELS for s in rep.shards[m])
    extra = (" steady examples/s | first batch s | weights wait s |", "---|---|---|") if split else ("", "")
    out = [
        "",
        "### Shards",
        "",
        "| model | shard | examples | predict s | load s | examples/s | peak memory | node |" + extra[0],
        "|---|---|---|---|---|---|---|---|" + extra[1],
    ]
    for m in MODELS:
        for s in rep.shards[m]:
            row = (
                f"| {m} | {s.shard} | {s.examples} | {s.runtime_s:.1f} | {s.model_load_s:.1f} | "
                f"{_num(s.examples_per_s)} | {_mb(s.memory, s.memory_estimate)} | {s.job.get('node', 'n/a')} |"
            )
            if split:
                row += f" {_num(s.steady_examples_per_s)} | {_num(s.warmup_s)} | {_num(s.weights_wait_s)} |"
            out.append(row)
    jobs = rep.slurm_jobs or {}
    if jobs:
        out += [
            "",
            "### Slurm jobs (sacct)",
            "",
            "| job | name | state | queue wait s | start | end |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {j} | {v['name']} | {v['state']} | {v['queue_wait_s']:,.0f} | {v['start']} | {v['end']} |"
            for j, v in jobs.items()
        ]
    return out


def _rounded_products(rep: Report) -> list[str]:
    """What float32 products that round (eval.matmul: tf32, bf16) did to the predictions: near-ties re-scored."""
    rounded = [s for m in MODELS for s in rep.shards[m] if s.rescore_margin is not None]
    if not rounded:
        return []
    kinds = ", ".join(sorted({str(s.matmul) for s in rounded}))
    pairs = sum(s.examples for s in rounded)
    rescored = sum(s.rescored or 0 for s in rounded)
    changed = sum(s.rescore_changed or 0 for s in rounded)
    shift = max(s.rescore_max_shift or 0.0 for s in rounded)
    margins = ", ".join(f"{m:g}" for m in sorted({s.rescore_margin for s in rounded if s.rescore_margin is not None}))
    return [
        f"- evaluation products: {kinds} (float32 weights) in {len(rounded)} shard(s); the {rescored:,} of "
        f"{pairs:,} pairs whose two best scores were within {margins} nats were scored again in full float32, "
        f"which changed {changed:,} prediction(s); largest score shift {shift:.3g} nats"
    ]


def _provenance(rep: Report) -> list[str]:
    cfg, ts, train = rep.config, rep.test_set, rep.training
    out = [
        "",
        "## Provenance",
        "",
        f"- config hash `{rep.config_hash}`; test-set ids hash `{ts['ids_hash']}`",
        f"- device: {train.device if train else 'n/a'}; scoring `{cfg['task']['scoring']}`, label words "
        f"{cfg['task']['label_words']}, left padding, eval batch {_eval_batch(cfg['eval'])}",
        f"- prompt: `{_cell(cfg['task']['prompt'])}`",
        f"- eval weights: `{cfg['eval']['weights']}` (dequantized = 4-bit base dequantized to the evaluation dtype, "
        "adapter merged); seeds: train " + str(cfg["train"]["seed"]) + ", subsets " + str(cfg["data"]["subset_seed"]),
        f"- compute dtype (model.dtype `{cfg['model']['dtype']}`): training "
        f"{train.dtype if train and train.dtype else 'n/a'}, evaluation "
        + ", ".join(sorted({s.dtype for m in MODELS for s in rep.shards[m]})),
    ] + _rounded_products(rep)
    prov = rep.provenance or {}
    if prov:
        out.append(
            f"- code: git `{prov.get('git_commit')}`{' (uncommitted changes)' if prov.get('git_dirty') else ''}; "
            f"python {prov.get('python')}; " + ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items())
        )
    return out + [
        "",
        "<details><summary>Resolved config</summary>",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "</details>",
        "",
    ]


def render(rep: Report, plots: list[tuple[str, str]], run_dir) -> str:
    if not rep.complete:
        return render_incomplete(rep, run_dir)
    sections = (_curve(rep), _per_class(rep), _changed_examples(rep), _cost(rep), _jobs(rep), _provenance(rep))
    return "\n".join(_headline(rep, plots) + [line for section in sections for line in section])


def write_markdown(paths: RunPaths, rep: Report) -> None:
    plots = write_plots(paths, rep) if rep.complete else []
    atomic_write_text(paths.report_md, render(rep, plots, paths.run_dir))
