"""report.md (and its PNG plots) rendered from report.json; results/report.md, the index page."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from hpcnli.io import atomic_write_text
from hpcnli.paths import MODELS, RunPaths

LABELS = ("entailment", "neutral", "contradiction")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = ",.1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _mb(memory: dict) -> str:
    if "gpu_peak_allocated_mb" in memory:
        return (f"GPU allocated {memory['gpu_peak_allocated_mb']:,.0f} MB, reserved "
                f"{memory['gpu_peak_reserved_mb']:,.0f} MB")
    if "process_peak_rss_mb" in memory:
        return f"process peak RSS {memory['process_peak_rss_mb']:,.0f} MB (no GPU)"
    return "n/a"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_plots(paths: RunPaths, rep: dict) -> list[tuple[str, str]]:
    """PNG plots next to the report; returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    models = rep["models"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    acc = [models[m]["accuracy"] for m in MODELS]
    err = [[a - models[m]["accuracy_ci95"][0] for a, m in zip(acc, MODELS)],
           [models[m]["accuracy_ci95"][1] - a for a, m in zip(acc, MODELS)]]
    ax.bar(MODELS, acc, yerr=err, capsize=6, color=["#999999", "#3b7dd8"])
    ax.axhline(1 / 3, ls="--", c="k", lw=0.8, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(paths.plot("accuracy"), dpi=110)
    plt.close(fig)
    made.append(("Accuracy with 95% confidence intervals", "accuracy.png"))

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, m in zip(axes, MODELS):
        cm = models[m]["confusion"]
        ax.imshow(cm, cmap="Blues")
        for i in range(3):
            for j in range(3):
                dark = cm[i][j] > 0.5 * max(max(row) for row in cm)
                ax.text(j, i, cm[i][j], ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(3), [w[:7] for w in LABELS])
        ax.set_yticks(range(3), [w[:7] for w in LABELS])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(m)
    fig.tight_layout()
    fig.savefig(paths.plot("confusion"), dpi=110)
    plt.close(fig)
    made.append(("Confusion matrices (rows gold, columns predicted)", "confusion.png"))

    curve = (rep.get("training") or {}).get("loss_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        fig.tight_layout()
        fig.savefig(paths.plot("loss"), dpi=110)
        plt.close(fig)
        made.append(("Training loss", "loss.png"))

    shards = [s for m in MODELS for s in rep["shards"][m]]
    if shards:
        t0 = min(datetime.fromisoformat(s["started_at"]).timestamp() for s in shards)
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(shards)))
        for k, s in enumerate(shards):
            start = datetime.fromisoformat(s["started_at"]).timestamp() - t0
            end = datetime.fromisoformat(s["finished_at"]).timestamp() - t0
            ax.barh(k, end - start, left=start, color="#3b7dd8" if s["model"] == "finetuned" else "#999999")
        ax.set_yticks(range(len(shards)), [f"{s['model']} {s['shard']}" for s in shards])
        ax.set_xlabel("seconds since the first shard started")
        fig.tight_layout()
        fig.savefig(paths.plot("shards"), dpi=110)
        plt.close(fig)
        made.append(("Shard timeline", "shards.png"))
    return made


def render_incomplete(rep: dict) -> str:
    lines = [f"# hpcnli run `{rep['run']}`: INCOMPLETE", "",
             f"**{len(rep['problems'])} shard(s) missing or invalid; {rep['missing_examples']} example "
             "predictions missing.** No accuracy is reported until every test example has exactly one "
             "prediction per model.", "", "| model | shard | examples | problem |", "|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['shard']} | {p['examples']} | {_cell(p['problem'])} |" for p in rep["problems"]]
    lines += ["", f"Complete it with `python -m hpcnli.submit --resume results/{rep['run']}`.", ""]
    return "\n".join(lines)


def render(rep: dict, plots: list[tuple[str, str]]) -> str:
    if not rep["complete"]:
        return render_incomplete(rep)
    cfg, ts, models, cmp_ = rep["config"], rep["test_set"], rep["models"], rep["comparison"]
    train = rep.get("training") or {}
    synthetic = "synthetic" in ts["source"]
    out = [f"# hpcnli run `{rep['run']}`", ""]
    if synthetic:
        out += ["> **Synthetic data.** This run uses the project's generated NLI set (templates), not SNLI.", ""]
    out += [f"Model `{cfg['model']['name_or_path']}`, {'4-bit ' + cfg['quantization']['quant_type'].upper() if cfg['quantization']['load_in_4bit'] else cfg['model']['dtype']} base + LoRA r={cfg['lora']['r']}; "
            f"test set `{ts['source']}`, {ts['examples']:,} examples ({ts['dropped']} without gold label dropped).", "",
            "## Did fine-tuning help?", "",
            "| model | accuracy | 95% CI | correct / examples |", "|---|---|---|---|"]
    for m in MODELS:
        r = models[m]
        out.append(f"| {m} | **{_pct(r['accuracy'])}** | {_pct(r['accuracy_ci95'][0])} – {_pct(r['accuracy_ci95'][1])} "
                   f"| {r['correct']:,} / {r['examples']:,} |")
    out += ["", f"Difference (fine-tuned − base): **{100 * cmp_['difference']:+.1f} points** "
            f"(95% CI {100 * cmp_['ci95'][0]:+.1f} to {100 * cmp_['ci95'][1]:+.1f}); fine-tuning fixed "
            f"{cmp_['fixed']:,} examples and broke {cmp_['broken']:,}; McNemar exact p = {cmp_['mcnemar_exact_p']:.3g}.", ""]
    out += [f"![{t}]({f})" for t, f in plots]
    out += ["", "## Per class", "", "| model | class | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    for m in MODELS:
        for name, c in models[m]["per_class"].items():
            out.append(f"| {m} | {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    out += ["", "Predicted label counts (entailment / neutral / contradiction): " +
            "; ".join(f"{m} {'/'.join(str(k) for k in models[m]['predicted_label_counts'])}" for m in MODELS), ""]
    for title, key in (("Examples fine-tuning fixed", "fixed_examples"), ("Examples fine-tuning broke", "broken_examples")):
        n = cmp_["fixed"] if key == "fixed_examples" else cmp_["broken"]
        out += [f"## {title} ({n:,}; up to {len(rep[key])} shown, chosen by id hash)", ""]
        if rep[key]:
            out += ["| id | premise | hypothesis | gold | base | fine-tuned |", "|---|---|---|---|---|---|"]
            out += [f"| {_cell(e['id'])} | {_cell(e['premise'])} | {_cell(e['hypothesis'])} | {e['gold']} | {e['base']} | {e['finetuned']} |"
                    for e in rep[key]]
        out.append("")
    params = train.get("parameters", {})
    out += ["## Cost", "", "| what | value |", "|---|---|",
            f"| training examples | {train.get('train_examples', 'n/a'):,} from `{train.get('train_source', 'n/a')}` |" if train else "| training | n/a |"]
    if train:
        out += [f"| training runtime | {train['runtime_s']:,.1f} s ({train['steps']} steps, {train['examples_seen']:,} examples seen, "
                f"{train['examples_per_s']:.2f} examples/s, {train['tokens_per_s']:,.0f} tokens/s) |",
                f"| training loss | final {_num(train['final_loss'], '.4f')}, best {_num(train['best_loss'], '.4f')} |",
                f"| training peak memory | {_mb(train['memory'])} |",
                f"| parameters | {params['total']:,} total (4-bit weights counted unpacked), {params['trainable']:,} trainable LoRA "
                f"({100 * params['trainable_share']:.2f}%) |",
                f"| adapter size on disk | {train.get('adapter_bytes', 0) / 2**20:.1f} MiB |"]
    for m in MODELS:
        r = models[m]
        out.append(f"| {m} eval | {r['eval_runtime_summed_s']:,.1f} s predicting + {r['eval_model_load_summed_s']:,.1f} s "
                   f"model loading summed over {len(rep['shards'][m])} shards ({r['eval_wall_span_s']:,.1f} s wall-clock "
                   f"from first start to last end), {_num(r['eval_examples_per_s'])} examples/s per shard-second; "
                   f"{_mb(r['peak_memory'])} |")
    out += ["", "### Shards", "", "| model | shard | examples | predict s | load s | examples/s | peak memory | node |",
            "|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        for s in rep["shards"][m]:
            out.append(f"| {m} | {s['shard']} | {s['examples']} | {s['runtime_s']:.1f} | {s['model_load_s']:.1f} | "
                       f"{_num(s['examples_per_s'])} | {_mb(s['memory'])} | {s['job'].get('node', 'n/a')} |")
    jobs = rep.get("slurm_jobs") or {}
    if jobs:
        out += ["", "### Slurm jobs (sacct)", "", "| job | name | state | queue wait s | start | end |",
                "|---|---|---|---|---|---|"]
        out += [f"| {j} | {v['name']} | {v['state']} | {v['queue_wait_s']:,.0f} | {v['start']} | {v['end']} |"
                for j, v in jobs.items()]
    out += ["", "## Provenance", "", f"- config hash `{rep['config_hash']}`; test-set ids hash `{ts['ids_hash']}`",
            f"- device: {train.get('device', 'n/a')}; scoring `{cfg['task']['scoring']}`, label words "
            f"{cfg['task']['label_words']}, left padding, eval batch {cfg['eval']['batch_size']}",
            f"- prompt: `{_cell(cfg['task']['prompt'])}`",
            f"- eval weights: `{cfg['eval']['weights']}` (dequantized = 4-bit base dequantized to {cfg['model']['dtype']}, "
            "adapter merged); seeds: train " + str(cfg['train']['seed']) + ", subsets " + str(cfg['data']['subset_seed'])]
    prov = rep.get("provenance") or {}
    if prov:
        out.append(f"- code: git `{prov.get('git_commit')}`{' (uncommitted changes)' if prov.get('git_dirty') else ''}; "
                   f"python {prov.get('python')}; " + ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items()))
    out += ["",
            "<details><summary>Resolved config</summary>", "", "```json", json.dumps(cfg, indent=2), "```", "</details>", ""]
    return "\n".join(out)


def write_markdown(paths: RunPaths, rep: dict) -> None:
    plots = write_plots(paths, rep) if rep["complete"] else []
    atomic_write_text(paths.report_md, render(rep, plots))


def write_index(results_root: Path) -> None:
    """results/report.md: the latest complete run's headline and links to every run."""
    runs = []
    for rj in sorted(Path(results_root).glob("*/report.json")):
        try:
            rep = json.loads(rj.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        runs.append((rj.stat().st_mtime, rj.parent.name, rep))
    runs.sort(reverse=True)
    out = ["# hpcnli results", ""]
    complete = [r for r in runs if r[2].get("complete")]
    if complete:
        _, name, rep = complete[0]
        m = rep["models"]
        out += [f"Latest complete run: [`{name}`]({name}/report.md) on `{rep['test_set']['source']}`: base "
                f"{_pct(m['base']['accuracy'])} → fine-tuned {_pct(m['finetuned']['accuracy'])} "
                f"({rep['test_set']['examples']:,} examples).", ""]
    out += ["| run | test set | examples | base | fine-tuned | status |", "|---|---|---|---|---|---|"]
    for _, name, rep in runs:
        ts = rep.get("test_set", {})
        if rep.get("complete"):
            m = rep["models"]
            row = f"{_pct(m['base']['accuracy'])} | {_pct(m['finetuned']['accuracy'])} | complete"
        else:
            row = f"n/a | n/a | incomplete ({rep.get('missing_examples', '?')} missing)"
        out.append(f"| [`{name}`]({name}/report.md) | `{ts.get('source', '?')}` | {ts.get('examples', '?')} | {row} |")
    atomic_write_text(Path(results_root) / "report.md", "\n".join(out) + "\n")
