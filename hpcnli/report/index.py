"""results/report.md: the index of every run under an output root, latest complete run first."""

from __future__ import annotations

import json
from pathlib import Path

from hpcnli.io import atomic_write_text
from hpcnli.report.markdown import pct
from hpcnli.run.paths import results_index


def write_index(results_root: Path) -> None:
    """The latest complete run's headline and a link to every run's report."""
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
                f"{pct(m['base']['accuracy'])} → fine-tuned {pct(m['finetuned']['accuracy'])} "
                f"({rep['test_set']['examples']:,} examples).", ""]
    out += ["| run | test set | examples | base | fine-tuned | status |", "|---|---|---|---|---|---|"]
    for _, name, rep in runs:
        ts = rep.get("test_set", {})
        if rep.get("complete"):
            m = rep["models"]
            row = f"{pct(m['base']['accuracy'])} | {pct(m['finetuned']['accuracy'])} | complete"
        else:
            row = f"n/a | n/a | incomplete ({rep.get('missing_examples', '?')} missing)"
        out.append(f"| [`{name}`]({name}/report.md) | `{ts.get('source', '?')}` | {ts.get('examples', '?')} | {row} |")
    atomic_write_text(results_index(results_root), "\n".join(out) + "\n")
