"""Typed records: the committed runs' files still read and render byte-identically; a file missing a field, or of
another shape, is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcnli.config import load_config
from hpcnli.io import RunFileError
from hpcnli.records import Report, ShardMetrics, SweepReport, TrainMetrics
from hpcnli.report.markdown import render
from hpcnli.report.plots import write_plots
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.sweeps import compare
from hpcnli.sweeps import report as sweep_report
from hpcnli.sweeps.grid import SweepPaths

RESULTS = Path(__file__).resolve().parents[1] / "results"
SWEEPS = sorted(p.parent for p in RESULTS.glob("*/sweep.json"))
# The committed runs, and those of the committed sweeps (their directories inside the sweep's)
COMMITTED = sorted(p.parent for p in RESULTS.glob("*/report.json") if p.parent not in SWEEPS) + sorted(
    p.parent for sweep in SWEEPS for p in sweep.glob("*/report.json")
)


def test_there_are_committed_reports():
    assert len(COMMITTED) >= 2


@pytest.mark.parametrize("run_dir", COMMITTED, ids=lambda p: p.name)
def test_committed_report_renders_byte_identical(run_dir, tmp_path):
    rep = Report.read(run_dir / "report.json")
    (tmp_path / run_dir.name).mkdir()
    plots = write_plots(RunPaths(tmp_path / run_dir.name), rep) if rep.complete else []
    # What the renderer made of it before reports were typed records (commit ac0ad14) where report.md is older;
    # a sweep's runs are newer: their report.md is the rendering.
    golden = Path(__file__).parent / "golden" / f"report_{run_dir.name}.md"
    expected = (run_dir / "report.md") if run_dir.parent in SWEEPS else golden
    assert render(rep, plots, RunPaths(run_dir).run_dir) == expected.read_text()


@pytest.mark.parametrize("sweep_dir", SWEEPS, ids=lambda p: p.name)
def test_committed_sweep_report_is_what_its_runs_files_give(sweep_dir):
    """The sweep's report.json rebuilt from its runs' committed files (reports, held-out curves, validated test
    predictions), and its report.md rendered from that report.json."""
    paths = SweepPaths(sweep_dir)
    rep = SweepReport.read(paths.report_json)
    assert compare.build(paths) == rep
    assert sweep_report.render(rep, plotted=True) == paths.report_md.read_text()


@pytest.mark.parametrize("run_dir", COMMITTED, ids=lambda p: p.name)
def test_committed_records_read(run_dir):
    paths = RunPaths(run_dir)
    train = TrainMetrics.read(paths.train_metrics)
    if train.schema_version == 1:  # written before adapters recorded their inputs
        assert train.inputs is None
    else:  # the adapter records the training settings of the run's config.yaml
        assert train.inputs["train_config_hash"] == load_config(paths.config).train_hash()
    for model in MODELS:
        for f in sorted(paths.shard_dir(model).glob("*.metrics.json")):
            assert ShardMetrics.read(f).model == model


def _committed_train_metrics() -> dict:
    return json.loads((COMMITTED[0] / "train_metrics.json").read_text())


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: {}, "missing adapter_bytes, best_loss"),
        (lambda d: {k: v for k, v in d.items() if k != "runtime_s"}, "missing runtime_s"),
        (lambda d: {**d, "steps": "ten"}, "steps is str"),
        (lambda d: {**d, "steps": True}, "steps is bool"),
        (lambda d: {**d, "surprise": 1}, "unknown surprise"),
        (lambda d: {**d, "schema_version": 99}, "schema_version 99 is not one this hpcnli reads"),
        (lambda d: [d], "expected a JSON object"),
    ],
)
def test_a_bad_record_is_refused_by_name(tmp_path, edit, message):
    f = tmp_path / "train_metrics.json"
    f.write_text(json.dumps(edit(_committed_train_metrics())))
    with pytest.raises(RunFileError, match=message.replace("(", r"\(")):
        TrainMetrics.read(f)


def test_a_record_round_trips(tmp_path):
    old = TrainMetrics.from_json(_committed_train_metrics(), "committed")
    old.write(tmp_path / "t.json")
    assert TrainMetrics.read(tmp_path / "t.json") == old
    rep = Report.read(COMMITTED[0] / "report.json")
    rep.write(tmp_path / "r.json")
    assert Report.read(tmp_path / "r.json") == rep


def test_a_version_declares_its_fields():
    """A version-3 record needs the fields added in version 2 (inputs among them); version 1 had none of them."""
    data = {**_committed_train_metrics(), "schema_version": 3}
    with pytest.raises(RunFileError, match=r"missing .*inputs"):
        TrainMetrics.from_json(data, "v3")
