"""results/report.md: the index of every run under an output root, latest complete run first.

The index is rewritten after every run, but only over a file hpcnli wrote: its first line is MARK.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpcnli.io import RunFileError, atomic_write_text
from hpcnli.records import Report
from hpcnli.report.markdown import pct
from hpcnli.run.paths import RunPaths, results_index

log = logging.getLogger(__name__)
MARK = "<!-- written by hpcnli after every run; edits are lost -->"


def write_index(results_root: Path) -> None:
    """The latest complete run's headline and a link to every run's report; never over a file of someone else's."""
    target = results_index(results_root)
    if target.exists() and not target.read_text(errors="replace").startswith(MARK):
        log.warning("not writing the results index: %s exists and was not written by hpcnli", target)
        return
    runs = []
    for run_dir in sorted(p for p in Path(results_root).iterdir() if p.is_dir()):
        paths = RunPaths(run_dir)
        try:
            rep = Report.read(paths.report_json)
        except (OSError, RunFileError):  # not a run, or its report is unreadable: nothing to index
            continue
        runs.append((paths.report_json.stat().st_mtime, paths.name, rep))
    runs.sort(reverse=True, key=lambda r: (r[0], r[1]))
    out = [MARK, "# hpcnli results", ""]
    complete = [r for r in runs if r[2].complete]
    if complete:
        _, name, rep = complete[0]
        m = rep.models
        out += [
            f"Latest complete run: [`{name}`]({name}/report.md) on `{rep.test_set['source']}`: base "
            f"{pct(m['base']['accuracy'])} → fine-tuned {pct(m['finetuned']['accuracy'])} "
            f"({rep.test_set['examples']:,} examples).",
            "",
        ]
    out += ["| run | test set | examples | base | fine-tuned | status |", "|---|---|---|---|---|---|"]
    for _, name, rep in runs:
        ts = rep.test_set
        if rep.complete:
            m = rep.models
            row = f"{pct(m['base']['accuracy'])} | {pct(m['finetuned']['accuracy'])} | complete"
        else:
            row = f"n/a | n/a | incomplete ({rep.missing_examples} missing)"
        out.append(f"| [`{name}`]({name}/report.md) | `{ts.get('source', '?')}` | {ts.get('examples', '?')} | {row} |")
    atomic_write_text(target, "\n".join(out) + "\n")
