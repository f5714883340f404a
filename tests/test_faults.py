"""Faults on the real local cluster: a cancelled array task, a shard killed with SIGKILL, a training
job requeued mid-run, a truncated shard file. Each run must end, after the automatic retry or a
--resume, with predictions identical to an undisturbed run's and a complete report."""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, run_cli
from hpcnli.run.paths import MODELS, RunPaths
from test_slurm import sacct, sh, wait_done

pytestmark = pytest.mark.slurm
FAULT_CFG = ["train.max_steps=6", "train.checkpoint_every=2", "resources.max_retries=1"]


def submit(run_dir, *extra):
    run_cli(
        "hpcnli.submit",
        "--config",
        ROOT / "jobs/smoke.yaml",
        "--partition",
        "gpu",
        "--run-dir",
        run_dir,
        *extra,
        *FAULT_CFG,
    )
    return json.loads((run_dir / "plan.json").read_text())["submissions"][0]["jobs"]


def wait_for_run(run_dir, timeout=1200) -> dict:
    """Follow the run's reduce jobs (a retry adds a new one) until the last one has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        plan = json.loads((run_dir / "plan.json").read_text())
        last = plan["submissions"][-1]["jobs"]["reduce"]
        wait_done([last], timeout=max(deadline - time.time(), 1))
        if json.loads((run_dir / "plan.json").read_text())["submissions"][-1]["jobs"]["reduce"] == last:
            return plan
    raise AssertionError("run did not finish")


def predictions(run_dir) -> dict:
    p = RunPaths(run_dir)
    return {(m, s): p.shard_predictions(m, s).read_text() for m in MODELS for s in range(2)}


def wait_until(cond, what, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def running(job_id) -> bool:
    return (
        sh("squeue", "--noheader", "--states=RUNNING", "--format=%i", "--jobs", job_id.split("_")[0])
        .split()
        .count(job_id)
        > 0
    )


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults") / "undisturbed"
    submit(run_dir)
    wait_for_run(run_dir)
    assert json.loads(RunPaths(run_dir).report_json.read_text())["complete"]
    return run_dir


def test_cancel_kill_and_requeue_recover(reference, tmp_path):
    run_dir = tmp_path / "disturbed"
    jobs = submit(run_dir)
    train, base = jobs["finetune"], jobs["base"]["array_job_id"]

    # 1. scancel base shard 0 while it runs.
    wait_until(lambda: running(f"{base}_0"), "base task 0 to run")
    sh("scancel", f"{base}_0")
    # 2. kill -9 the processes of base shard 1 while it runs.
    wait_until(lambda: running(f"{base}_1"), "base task 1 to run")
    raw_id = next(w for w in sh("scontrol", "show", "job", f"{base}_1").split() if w.startswith("JobId="))[6:]
    listing = sh("scontrol", "listpids", raw_id).splitlines()[1:]  # PID JOBID STEPID LOCALID GLOBALID
    pids = [int(line.split()[0]) for line in listing if line.split() and line.split()[0].isdigit()]
    assert pids and os.getpid() not in pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # 3. requeue the training job after its first checkpoint; let it start again at once.
    ckpt = RunPaths(run_dir).checkpoints
    wait_until(lambda: any(ckpt.glob("step_*/COMPLETE")), "the first training checkpoint")
    sh("scontrol", "requeue", train)
    subprocess.run(["scontrol", "update", f"jobid={train}", "StartTime=now"], capture_output=True)

    plan = wait_for_run(run_dir)
    states = sacct([f"{base}_0", f"{base}_1"])
    assert states[f"{base}_0"]["state"] == "CANCELLED" and states[f"{base}_1"]["state"] in ("FAILED", "CANCELLED")
    assert len(plan["submissions"]) == 2  # the reduce job resubmitted the two lost shards
    assert plan["submissions"][1]["jobs"]["base"]["shards"] == [0, 1]
    train_metrics = json.loads(RunPaths(run_dir).train_metrics.read_text())
    assert train_metrics["restarts"] == 1  # resumed from the checkpoint, not from scratch
    assert predictions(run_dir) == predictions(reference)
    assert json.loads(RunPaths(run_dir).report_json.read_text())["complete"]


def test_truncated_shard_is_redone_by_resume(reference, tmp_path):
    run_dir = tmp_path / "truncated"
    subprocess.run(["cp", "-a", str(reference), str(run_dir)], check=True)
    (run_dir / "plan.json").unlink()  # the copy's jobs are not this run's
    p = RunPaths(run_dir)
    kept = p.shard_metrics("base", 0).read_text()
    full = p.shard_predictions("finetuned", 1).read_text()
    p.shard_predictions("finetuned", 1).write_text(full[: len(full) // 2])
    proc = run_cli("hpcnli.submit", "--resume", run_dir, "--partition", "gpu", "--wait")
    assert "finetuned shards [1]" in proc.stdout and "base shards []" in proc.stdout
    assert p.shard_metrics("base", 0).read_text() == kept
    assert predictions(run_dir) == predictions(reference)
    assert json.loads(p.report_json.read_text())["complete"]
