"""The sweep's report.md and accuracy plot, rendered from its report.json alone (records.SweepReport)."""

from __future__ import annotations

from hpcnli.io import atomic_write_text
from hpcnli.records import SweepReport
from hpcnli.report.markdown import pct
from hpcnli.sweeps.compare import ALPHA, IncompleteSweep, build
from hpcnli.sweeps.grid import SweepPaths

PLOT = "accuracy_by_key.png"


def _pm(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.1f}% ± {100 * sd:.1f}" if sd is not None else f"{100 * mean:.1f}%"


def _settings(settings: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in settings.items())


def plot(rep: SweepReport, path) -> bool:
    """Held-out (solid) and test (dashed) accuracy against each swept key, mean over seeds with sd error bars;
    one line per combination of the other keys' values."""
    if not rep.points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rep.grid)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = rep.grid[key]
        others = sorted({tuple((k, v) for k, v in p["settings"].items() if k != key) for p in rep.points})
        for n, rest in enumerate(others):
            mine = {p["settings"][key]: p for p in rep.points if all(p["settings"][k] == v for k, v in rest)}
            xs = [i for i, v in enumerate(values) if v in mine]
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in rest)
            for field, style in (("heldout", "-o"), ("test", "--s")):
                ax.errorbar(
                    [x + 0.04 * n for x in xs],
                    [100 * mine[values[x]][f"{field}_mean"] for x in xs],
                    yerr=[100 * (mine[values[x]][f"{field}_sd"] or 0.0) for x in xs],
                    fmt=style,
                    color=f"C{n}",
                    capsize=4,
                    label=" ".join([label, "held-out" if field == "heldout" else "test"]).strip(),
                )
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy, % (mean ± sd over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(rep: SweepReport, plotted: bool) -> str:
    seeds = ", ".join(str(s) for s in rep.seeds)
    grid = "; ".join(f"`{k}` in {', '.join(v)}" for k, v in rep.grid.items())
    out = [
        f"# Sweep {rep.sweep}",
        "",
        f"{len(rep.points) + len({p['point'] for p in rep.problems})} points x {len(rep.seeds)} seeds ({seeds}) over "
        f"{grid}; base config `{rep.provenance['config']}`"
        + (f" with {', '.join(f'`{o}`' for o in rep.provenance['overrides'])}" if rep.provenance["overrides"] else "")
        + ".",
        "",
        f"Selection: {rep.selection}",
        "",
    ]
    if rep.problems:
        out += ["## Incomplete: runs left out", "", "| run | problem |", "|---|---|"]
        out += [f"| {p['run']} | {p['problem']} |" for p in rep.problems]
        out += ["", "Points with a run left out are not ranked; complete them with `--resume`.", ""]
    w = rep.winner
    if w:
        base = ", ".join(f"{pct(b['test_accuracy'])} (scored by {b['scored_by']})" for b in rep.base)
        out += [
            "## Winner",
            "",
            f"**{w['point']}** ({_settings(w['settings'])}): held-out {_pm(w['heldout_mean'], w['heldout_sd'])} "
            f"over seeds {', '.join(map(str, w['seeds']))}; then, on the test file, "
            f"**{_pm(w['test_mean'], w['test_sd'])}**. Base model on the same test pairs: {base}.",
            "",
            "## Points, ranked on held-out accuracy",
            "",
            "| rank | point | settings | held-out (mean ± sd) | test (mean ± sd) | training s (mean) |",
            "|---|---|---|---|---|---|",
        ]
        for p in rep.points:
            test = _pm(p["test_mean"], p["test_sd"]) + ("" if p["point"] == w["point"] else " (not used for selection)")
            held = _pm(p["heldout_mean"], p["heldout_sd"])
            out.append(
                f"| {p['rank']} | {p['point']} | {_settings(p['settings'])} | {held} | {test} "
                f"| {p['training_s_mean']:,.1f} |"
            )
        out += [""]
        if plotted:
            out += [f"![accuracy against each swept key]({PLOT})", ""]
    if rep.comparisons:
        out += [
            "## Is the difference real? The winner against each other point, on the test pairs",
            "",
            "Paired bootstrap over test pairs and seeds (seed i against seed i, "
            f"{rep.comparisons[0]['resamples']:,} resamples); p adjusted with Holm's method over "
            f"{len(rep.comparisons)} comparison(s).",
            "",
            "| winner vs | settings | difference | 95% CI | p | Holm p | real at 5%? |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in rep.comparisons:
            lo, hi = c["ci95"]
            out.append(
                f"| {c['point']} | {_settings(c['settings'])} | {100 * c['difference']:+.2f} pts | "
                f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {c['p']:.4f} | {c['p_holm']:.4f} | "
                f"{'yes' if c['real_at_5pct'] else 'no: within seed and sampling noise'} |"
            )
        out += [""]
    out += [
        "## Runs",
        "",
        "| run | point | seed | held-out (step) | test | training s | steps | peak memory | report |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep.runs:
        memory = f"{r['peak_memory_mb']:,.0f} MiB" if r["peak_memory_mb"] else "n/a"
        out.append(
            f"| {r['run']} | {r['point']} | {r['seed']} | {pct(r['heldout_accuracy'])} ({r['heldout_step']}) | "
            f"{pct(r['test_accuracy'])} | {r['training_s']:,.1f} | {r['steps']} | {memory} | [report]({r['report']}) |"
        )
    prov = rep.provenance
    out += [
        "",
        "## Provenance",
        "",
        "- sweep.json beside this report; each run's config.yaml, report and config hash in its directory",
        f"- code: commit `{prov.get('git_commit') or 'unknown'}`"
        + (" (uncommitted changes)" if prov.get("git_dirty") else ""),
        f"- a difference is called real when its Holm-adjusted p < {ALPHA}",
        "",
    ]
    return "\n".join(out)


def write(paths: SweepPaths) -> SweepReport:
    """report.json, the plot and report.md; raises IncompleteSweep (after writing them) if runs are left out."""
    rep = build(paths)
    rep.write(paths.report_json)
    plotted = plot(rep, paths.plot(PLOT))
    atomic_write_text(paths.report_md, render(rep, plotted))
    if rep.problems:
        raise IncompleteSweep(
            f"{len(rep.problems)} run(s) left out:\n"
            + "\n".join(f"  {p['run']}: {p['problem']}" for p in rep.problems)
            + f"\nComplete the sweep with: python -m hpcnli.sweep --resume {paths.sweep_dir}"
        )
    return rep
