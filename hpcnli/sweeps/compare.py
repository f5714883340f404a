"""The sweep's comparison: every run's figures, the points ranked on held-out accuracy, the winner, and paired
tests of the winner against each other point; report.json (records.SweepReport), report.md and a plot.

Selection never reads the test file: a point's score is its held-out accuracy (data.holdout pairs, at the step
whose adapter was scored: the best step with train.keep best, else the last), mean over its seeds. The winner's
test accuracy is given after it is chosen; the others' are shown too, marked as not used for selection. The
paired tests compare test predictions on the same pairs, seed i against seed i, and Holm's correction keeps
the chance of any false "real difference" at 5% over all the comparisons.
"""

from __future__ import annotations

import statistics

from hpcnli.config import load_config
from hpcnli.io import RunFileError
from hpcnli.records import Report, SweepPlan, SweepReport, TestManifest
from hpcnli.report import stats
from hpcnli.run.state import collect
from hpcnli.sweeps.grid import SweepPaths

ALPHA = 0.05
SELECTION = (
    "points ranked on mean held-out accuracy over seeds (data.holdout pairs, never trained on, at the step of the "
    "adapter that was scored); ties go to the smaller sd, then grid order. The test file is read only after."
)


class IncompleteSweep(RuntimeError):
    """Some run of the sweep has no complete report; the message lists them."""


def _heldout(training) -> tuple[float, int] | None:
    """The held-out accuracy of the adapter that was scored, and its step."""
    curve = training.heldout_curve or []
    at = [p for p in curve if p["step"] == training.adapter_step] or curve[-1:]
    return (at[0]["accuracy"], at[0]["step"]) if at else None


def _peak_mb(memory: dict) -> float | None:
    return memory.get("gpu_peak_in_use_mb") or memory.get("gpu_peak_reserved_mb") or memory.get("process_peak_rss_mb")


def run_figures(paths: SweepPaths, entry: dict) -> tuple[dict | None, list[bool] | None, str | None]:
    """One run's row of the table and its test pairs right/wrong, or why it is left out."""
    run = paths.run(entry["run"])
    try:
        rep = Report.read(run.report_json)
    except (RunFileError, FileNotFoundError) as e:
        return None, None, f"no report ({e.__class__.__name__}); run python -m hpcnli.sweep --resume {paths.sweep_dir}"
    if not rep.complete or rep.training is None:
        return None, None, f"its report is incomplete: {'; '.join(p['problem'] for p in rep.problems)[:300]}"
    heldout = _heldout(rep.training)
    if heldout is None:
        return None, None, "no held-out accuracy in its train_metrics.json (train.eval_every was 0)"
    cfg = load_config(run.config)
    manifest = TestManifest.read(run.test_manifest)
    predictions, _, problems = collect(run, cfg, manifest)
    if problems:  # the report was written from shards that have changed since
        return None, None, f"its shards changed since its report: {problems[0]['problem']}"
    correct = [predictions["finetuned"][i]["pred"] == predictions["finetuned"][i]["gold"] for i in manifest.ids]
    row = {
        "run": entry["run"],
        "point": entry["point"],
        "seed": entry["seed"],
        "heldout_accuracy": heldout[0],
        "heldout_step": heldout[1],
        "heldout_pairs": rep.training.heldout_pairs,
        "test_accuracy": rep.models["finetuned"]["accuracy"],
        "base_test_accuracy": rep.models["base"]["accuracy"],
        "base_owner": entry["base_owner"],
        "training_s": rep.training.runtime_s,
        "steps": rep.training.steps,
        "peak_memory_mb": _peak_mb(rep.training.memory),
        "config_hash": rep.config_hash,
        "report": f"{entry['run']}/report.md",
    }
    return row, correct, None


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def build(paths: SweepPaths) -> SweepReport:
    plan = SweepPlan.read(paths.plan)
    rows: list[dict] = []
    correct: dict[str, list[bool]] = {}
    problems = []
    for entry in plan.runs:
        row, right, why = run_figures(paths, entry)
        if row is None or right is None:
            problems.append({"run": entry["run"], "point": entry["point"], "seed": entry["seed"], "problem": why})
            continue
        rows.append(row)
        correct[entry["run"]] = right
    left_out = {p["point"] for p in problems}
    points = []
    for i, point in enumerate(plan.points):
        mine = [r for r in rows if r["point"] == point["point"]]
        if point["point"] in left_out or not mine:
            continue
        held, held_sd = _mean_sd([r["heldout_accuracy"] for r in mine])
        test, test_sd = _mean_sd([r["test_accuracy"] for r in mine])
        points.append(
            {
                **point,
                "order": i,
                "seeds": [r["seed"] for r in mine],
                "heldout_mean": held,
                "heldout_sd": held_sd,
                "test_mean": test,
                "test_sd": test_sd,
                "training_s_mean": statistics.fmean(r["training_s"] for r in mine),
            }
        )
    points.sort(key=lambda p: (-p["heldout_mean"], p["heldout_sd"] or 0.0, p["order"]))
    for rank, p in enumerate(points, 1):
        p["rank"] = rank
        p["used_for_selection"] = "held-out only"
    winner = points[0] if points else None
    comparisons = _compare(points[0], points[1:], plan, correct) if points else []
    base = sorted(
        {(r["base_owner"], r["base_test_accuracy"]) for r in rows}, key=lambda x: x[0]
    )  # one figure per base group
    return SweepReport(
        schema_version=SweepReport.VERSION,
        sweep=plan.name,
        complete=not problems,
        selection=SELECTION,
        grid=plan.grid,
        seeds=plan.seeds,
        runs=rows,
        points=points,
        winner=winner,
        comparisons=comparisons,
        base=[{"scored_by": owner, "test_accuracy": acc} for owner, acc in base],
        problems=problems,
        provenance={"config": plan.config, "overrides": plan.overrides, **plan.provenance},
    )


def _compare(winner: dict, others: list[dict], plan: SweepPlan, correct: dict) -> list[dict]:
    """Paired bootstrap over test pairs and seeds (seed i against seed i) of the winner against each other point,
    Holm-adjusted over the comparisons."""
    names = {(r["point"], r["seed"]): r["run"] for r in plan.runs}
    out = []
    for other in others:
        seeds = [s for s in winner["seeds"] if s in other["seeds"]]
        diff = [
            [int(a) - int(b) for a, b in zip(correct[names[winner["point"], s]], correct[names[other["point"], s]])]
            for s in seeds
        ]
        out.append(
            {"point": other["point"], "settings": other["settings"], "seeds": seeds, **stats.paired_bootstrap(diff)}
        )
    for c, adjusted in zip(out, stats.holm([c["p"] for c in out])):
        c["p_holm"] = adjusted
        c["real_at_5pct"] = adjusted < ALPHA
    return out
