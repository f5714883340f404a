"""The Slurm path on the real local cluster: submitit arrays with dependencies, and the plain sbatch scripts.

Skipped, with the reason, where no cluster answers; in CI (CI set) a missing cluster fails instead.
"""

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import ROOT, run_main
from hpcnli.cluster.commands import job_records, live_jobs
from hpcnli.run.paths import RunPaths

pytestmark = pytest.mark.slurm
SMOKE = ROOT / "jobs" / "smoke.yaml"


def sh(*cmd) -> str:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc.stdout.strip()


def sacct(job_ids) -> dict[str, dict]:
    """The jobs' sacct records (state, start, end, exit code) through hpcnli's own Slurm adapter."""
    return job_records([str(j) for j in job_ids])


def wait_done(job_ids, timeout=900) -> dict[str, dict]:
    """Poll sacct until none of the jobs (array tasks included) is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = sacct(job_ids)
        live = live_jobs([str(j) for j in job_ids])
        if rows and not live and all(r["state"] not in ("PENDING", "RUNNING", "REQUEUED") for r in rows.values()):
            return rows
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still running after {timeout} s: {sacct(job_ids)}")


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def dependency(job_id) -> str:
    out = sh("scontrol", "show", "job", str(job_id))
    return next(w for w in out.split() if w.startswith("Dependency="))


def check_complete_report(run_dir: Path) -> dict:
    rep = json.loads(RunPaths(run_dir).report_json.read_text())
    assert rep["complete"], rep.get("problems")
    assert {"base", "finetuned"} <= rep["models"].keys()
    assert rep["models"]["base"]["examples"] == 24
    assert rep["training"]["parameters"]["trainable"] > 0
    assert "## Did fine-tuning help?" in RunPaths(run_dir).report_md.read_text()
    return rep


def test_submitit_pipeline_arrays_and_dependencies(slurm_cluster, tmp_path):
    run_dir = tmp_path / "submitit-run"
    proc = run_main("hpcnli.submit", "--config", SMOKE, "--partition", "gpu", "--run-dir", run_dir)
    assert "submitted to partition gpu" in proc.stdout and "hpcnli.status" in proc.stdout
    jobs = json.loads((run_dir / "plan.json").read_text())["submissions"][0]["jobs"]
    train, reduce_ = jobs["finetune"], jobs["reduce"]
    base, tuned = jobs["base"]["array_job_id"], jobs["finetuned"]["array_job_id"]
    # Dependencies as Slurm holds them, read before the jobs they wait on have ended.
    assert dependency(reduce_) in (
        f"Dependency=afterany:{base}_*(unfulfilled),afterany:{tuned}_*(unfulfilled)",
        f"Dependency=afterany:{base}_*(unfulfilled)&afterany:{tuned}_*(unfulfilled)",
    )
    dep_tuned = dependency(f"{tuned}_0") if sh("squeue", "--noheader", "--jobs", tuned) else ""
    assert dep_tuned == "" or dep_tuned.startswith(f"Dependency=afterok:{train}")

    rows = wait_done([train, base, tuned, reduce_])
    assert {f"{base}_0", f"{base}_1", f"{tuned}_0", f"{tuned}_1"} <= rows.keys()  # ran as arrays
    assert all(r["state"] == "COMPLETED" for r in rows.values()), rows
    assert min(ts(rows[f"{tuned}_{i}"]["start"]) for i in (0, 1)) >= ts(rows[train]["end"])
    assert ts(rows[reduce_]["start"]) >= max(ts(rows[f"{a}_{i}"]["end"]) for a in (base, tuned) for i in (0, 1))
    rep = check_complete_report(run_dir)
    assert {s["job"]["array_job_id"] for s in rep["shards"]["base"]} == {base}
    assert rep["slurm_jobs"][train]["state"] == "COMPLETED" and rep["slurm_jobs"][train]["queue_wait_s"] >= 0
    assert f"{base}_1" in rep["slurm_jobs"] and "queue wait s" in (run_dir / "report.md").read_text()

    status = run_main("hpcnli.status", run_dir).stdout
    assert f"array {base}: {base}_0 COMPLETED, {base}_1 COMPLETED" in status
    assert f"reduce     job {reduce_}: COMPLETED" in status


def test_plain_sbatch_scripts(slurm_cluster, tmp_path):
    """The shipped scripts chained by hand, with a run directory no shell may interpret."""
    work = tmp_path / "work"
    work.mkdir()
    run_dir = work / "run with 'quotes' ; touch x"
    sbatch = ["sbatch", "--parsable", f"--chdir={work}", "--export=ALL,HPCNLI_PYTHON=" + sys.executable]
    train = sh(*sbatch, "--cpus-per-task=1", "--mem=3G", ROOT / "slurm/finetune.sh", run_dir, SMOKE)
    base = sh(*sbatch, "--array=0-1", ROOT / "slurm/eval_array.sh", run_dir, "base", SMOKE)
    tuned = sh(
        *sbatch,
        "--array=0-1",
        f"--dependency=afterok:{train}",
        ROOT / "slurm/eval_array.sh",
        run_dir,
        "finetuned",
        SMOKE,
    )
    reduce_ = sh(*sbatch, f"--dependency=afterany:{base}:{tuned}", ROOT / "slurm/reduce.sh", run_dir)
    rows = wait_done([train, base, tuned, reduce_])
    assert all(r["state"] == "COMPLETED" for r in rows.values()), rows
    assert {f"{base}_0", f"{base}_1", f"{tuned}_0", f"{tuned}_1"} <= rows.keys()
    check_complete_report(run_dir)
    assert not (work / "x").exists() and not (ROOT / "x").exists()
    logs = sorted(p.name for p in work.glob("hpcnli-*.out"))
    assert f"hpcnli-eval_{base}_0.out" in logs and f"hpcnli-finetune_{train}.out" in logs


def test_unknown_partition_is_refused_before_anything_runs(slurm_cluster, tmp_path):
    run_dir = tmp_path / "bad-partition"
    proc = run_main(
        "hpcnli.submit", "--config", SMOKE, "--partition", "nosuchpartition", "--run-dir", run_dir, check=False
    )
    assert proc.returncode == 2
    assert "resources.partition: Slurm has no partition 'nosuchpartition'" in proc.stderr
    assert not run_dir.exists()
