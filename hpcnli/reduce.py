"""Stage 3: merge and validate every shard of both models, then write report.json and report.md.

Rerunnable at any time (`python -m hpcnli.reduce <run>`): the same files give the same report. Given a sweep's
directory, it reduces each of its runs and writes the sweep's report.
If any shard is missing or invalid, the report says which and how many examples are missing,
and the stage exits non-zero; `hpcnli.submit --resume <run>` completes the run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
from pathlib import Path

from hpcnli.cluster.commands import job_times
from hpcnli.config import load_config
from hpcnli.data.nli import LABELS, load_split
from hpcnli.errors import raise_on_sigterm, run_command
from hpcnli.io import RunFileError, read_json
from hpcnli.logs import setup_logging
from hpcnli.records import Report, ShardMetrics, SweepPlan, SweepReport, TestManifest, TrainMetrics
from hpcnli.report import index, markdown, stats
from hpcnli.run.ledger import SubmissionLedger
from hpcnli.run.paths import MODELS, SWEEP_PLAN, RunPaths
from hpcnli.run.stages import Stage
from hpcnli.run.state import collect, test_set_changed, training_problem
from hpcnli.sweeps import report as sweep_report
from hpcnli.sweeps.compare import IncompleteSweep
from hpcnli.sweeps.grid import SweepPaths

log = logging.getLogger("hpcnli.reduce")
METRIC_MODULE = Path(__file__).parent / "metrics" / "accuracy" / "accuracy.py"


class IncompleteRun(RuntimeError):
    """Some shard is missing or invalid; the message lists them."""


def _accuracy(gold: list[int], pred: list[int]) -> float:
    import evaluate

    metric = evaluate.load(str(METRIC_MODULE))
    return metric.compute(predictions=pred, references=gold)["accuracy"]


def _pick(ids: list[str], n: int, salt: str) -> list[str]:
    """A reproducible choice of up to n ids: those with the smallest hash, in test-set order."""
    chosen = set(sorted(ids, key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())[:n])
    return [i for i in ids if i in chosen]


def build_report(paths: RunPaths, cfg, max_examples: int = 10) -> Report:
    manifest = TestManifest.read(paths.test_manifest)
    test = load_split(cfg, "test")
    predictions, shard_metrics, problems = collect(paths, cfg, manifest, test)
    changed = test_set_changed(test, manifest)
    if changed:  # gold labels and texts would not be the ones the models were scored on
        problems.append(
            {"model": "both", "shard": None, "examples": len(manifest.ids), "problem": changed, "file": test.source}
        )
    train_why = training_problem(cfg, paths)  # the adapter the fine-tuned shards were scored with is still there
    if train_why:
        problems.append(
            {
                "model": "finetuned",
                "shard": None,
                "examples": 0,
                "problem": f"fine-tune: {train_why}",
                "file": str(paths.train_metrics),
            }
        )
    train = None if train_why else TrainMetrics.read(paths.train_metrics)
    base = dict(  # noqa: C408 (Report's field names)
        schema_version=Report.VERSION,
        run=paths.name,
        config=cfg.to_dict(),
        config_hash=cfg.hash(),
        test_set=manifest.summary(),
        training=train,
        shards=shard_metrics,
        provenance=read_json(paths.provenance) if paths.provenance.is_file() else None,
        slurm_jobs=slurm_jobs(paths),
    )
    if problems:
        missing = sum(p["examples"] for p in problems)
        return Report(**base, complete=False, problems=problems, missing_examples=missing)

    ids = manifest.ids
    labels = {e["id"]: e["label"] for e in test.examples}
    gold = [labels[i] for i in ids]  # the planned test set's labels (each shard's were checked against them)
    models = {}
    for model in MODELS:
        pred = [predictions[model][i]["pred"] for i in ids]
        correct = sum(int(p == g) for p, g in zip(pred, gold))
        runtimes = [m.runtime_s for m in shard_metrics[model]]
        models[model] = {
            "accuracy": _accuracy(gold, pred),
            "correct": correct,
            "examples": len(ids),
            "accuracy_ci95": list(stats.accuracy_ci(correct, len(ids))),
            "per_class": stats.per_class(gold, pred, LABELS),
            "confusion": stats.confusion(gold, pred),
            "predicted_label_counts": [pred.count(k) for k in range(3)],
            "eval_runtime_summed_s": sum(runtimes),
            "eval_model_load_summed_s": sum(m.model_load_s for m in shard_metrics[model]),
            "eval_examples_per_s": len(ids) / sum(runtimes) if sum(runtimes) else None,
            "eval_wall_span_s": wall_span(shard_metrics[model]),
            "peak_memory": max_memory(shard_metrics[model]),
        }
    base_ok = [predictions["base"][i]["pred"] == predictions["base"][i]["gold"] for i in ids]
    tuned_ok = [predictions["finetuned"][i]["pred"] == predictions["finetuned"][i]["gold"] for i in ids]
    fixed = [i for i, b, t in zip(ids, base_ok, tuned_ok) if t and not b]
    broken = [i for i, b, t in zip(ids, base_ok, tuned_ok) if b and not t]
    texts = {e["id"]: e for e in test.examples}

    def table(chosen: list[str]) -> list[dict]:
        return [
            {
                "id": i,
                "premise": texts[i]["premise"],
                "hypothesis": texts[i]["hypothesis"],
                "gold": LABELS[predictions["base"][i]["gold"]],
                "base": LABELS[predictions["base"][i]["pred"]],
                "finetuned": LABELS[predictions["finetuned"][i]["pred"]],
            }
            for i in chosen
        ]

    return Report(
        **base,
        complete=True,
        models=models,
        comparison=stats.paired_difference(base_ok, tuned_ok),
        fixed_examples=table(_pick(fixed, max_examples, "fixed")),
        broken_examples=table(_pick(broken, max_examples, "broken")),
    )


def slurm_jobs(paths: RunPaths) -> dict:
    """Queue wait and times of the run's Slurm jobs (sacct); empty for local runs or without sacct."""
    return job_times([str(j) for j in SubmissionLedger(paths).job_ids()])


def wall_span(metrics: list[ShardMetrics]) -> float:
    """First shard start to last shard end: what parallel shards buy against the summed shard time."""
    from datetime import datetime

    starts = [datetime.fromisoformat(m.started_at).timestamp() for m in metrics]
    ends = [datetime.fromisoformat(m.finished_at).timestamp() for m in metrics]
    return max(ends) - min(starts)


def max_memory(metrics: list[ShardMetrics]) -> dict:
    keys = {k for m in metrics for k, v in m.memory.items() if isinstance(v, (int, float))}
    return {k: max(m.memory.get(k, 0) for m in metrics) for k in sorted(keys)}


def run(cfg, paths: RunPaths) -> Report:
    rep = build_report(paths, cfg)
    rep.write(paths.report_json)
    markdown.write_markdown(paths, rep)
    if (rep.provenance or {}).get("output_root") == str(paths.run_dir.parent):  # planned in output_root, still there
        index.write_index(paths.run_dir.parent)
    if not rep.complete:
        lines = [
            f"  {p['model']} shard {p['shard']} ({p['examples']} examples): {p['problem']}"
            if p["shard"] is not None
            else f"  {p['model']}: {p['problem']}"
            for p in rep.problems
        ]
        raise IncompleteRun(
            f"{len(rep.problems)} problem(s) (shards missing or invalid, or stale inputs), {rep.missing_examples} "
            "example predictions missing:\n"
            + "\n".join(lines)
            + f"\nComplete the run with: python -m hpcnli.submit --resume {paths.run_dir}"
        )
    shutil.rmtree(paths.eval_weights_root, ignore_errors=True)  # every shard is in: the weights are not needed again
    log.info("report: %s", paths.report_md)
    return rep


def run_task(cfg, paths: RunPaths, stage: Stage, task: int, job) -> str:
    run(cfg, paths)  # raises IncompleteRun (the job fails) if shards are still missing
    return str(paths.report_md)


def reduce_sweep(paths: SweepPaths) -> SweepReport:
    """Every run's report (an incomplete one is listed in the sweep's), then the sweep's report; raises
    IncompleteSweep, after writing it, when runs are left out."""
    for entry in SweepPlan.read(paths.plan).runs:
        run_paths = paths.run(entry["run"])
        try:
            run(load_config(run_paths.config), run_paths)
        except IncompleteRun as e:
            log.warning("%s: %s", entry["run"], str(e).splitlines()[0])
    return sweep_report.write(paths)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    setup_logging()

    def reduce_run() -> int:
        if (Path(args.run_dir) / SWEEP_PLAN).is_file():
            sweep = SweepPaths(Path(args.run_dir))
            try:
                reduce_sweep(sweep)
                print(f"sweep report: {sweep.report_md}")
            except IncompleteSweep as e:
                print(f"hpcnli.reduce: {e}", file=sys.stderr)
                return 1
            return 0
        paths = RunPaths(args.run_dir)
        if not paths.config.is_file():
            raise RunFileError(
                f"{args.run_dir} is not a run directory (no config.yaml); give the directory hpcnli.submit printed"
            )
        try:
            run(load_config(paths.config), paths)
        except IncompleteRun as e:
            print(f"hpcnli.reduce: {e}", file=sys.stderr)
            return 1
        return 0

    return run_command("hpcnli.reduce", reduce_run)


if __name__ == "__main__":
    raise_on_sigterm()
    sys.exit(main())
