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

from conftest import ROOT, made_once, run_main
from hpcnli.run.paths import MODELS, RunPaths
from test_slurm import dependency, sacct, sh, wait_done

pytestmark = pytest.mark.slurm
# The smoke config's tiny model trains a step in milliseconds: enough steps that the fine-tune is still running
# when a test requeues it after its first checkpoint.
FAULT_CFG = ["train.max_steps=300", "train.checkpoint_every=10", "resources.max_retries=1"]


def submit(run_dir, *extra):
    run_main(
        "hpcnli.submit",
        "--config",
        ROOT / "jobs/smoke.yaml",
        "--partition",
        "gpu",
        "--run-dir",
        run_dir,
        *FAULT_CFG,
        *extra,
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
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pending(job_id) -> bool:
    return job_id in sh("squeue", "--noheader", "--states=PENDING", "--format=%i", "--jobs", job_id).split()


def requeue_now(job_id) -> None:
    """Requeue a job and let it start again at once (Slurm holds a requeued job for a while)."""
    sh("scontrol", "requeue", job_id)
    wait_until(lambda: pending(job_id), f"job {job_id} to be pending again")
    sh("scontrol", "update", f"jobid={job_id}", "StartTime=now")


def running(job_id) -> bool:
    return (
        sh("squeue", "--noheader", "--states=RUNNING", "--format=%i", "--jobs", job_id.split("_")[0])
        .split()
        .count(job_id)
        > 0
    )


@pytest.fixture(scope="session")
def reference(slurm_cluster, tmp_path_factory):
    def make(root):
        submit(root / "undisturbed")
        wait_for_run(root / "undisturbed")
        assert json.loads(RunPaths(root / "undisturbed").report_json.read_text())["complete"]

    return made_once(tmp_path_factory, "faults", make) / "undisturbed"


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
    requeue_now(train)

    plan = wait_for_run(run_dir)
    states = sacct([f"{base}_0", f"{base}_1"])
    assert states[f"{base}_0"]["state"] == "CANCELLED" and states[f"{base}_1"]["state"] in ("FAILED", "CANCELLED")
    assert len(plan["submissions"]) == 2  # the reduce job resubmitted the two lost shards
    assert plan["submissions"][1]["jobs"]["base"]["shards"] == [0, 1]
    train_metrics = json.loads(RunPaths(run_dir).train_metrics.read_text())
    assert train_metrics["restarts"] == 1  # resumed from the checkpoint, not from scratch
    assert predictions(run_dir) == predictions(reference)
    assert json.loads(RunPaths(run_dir).report_json.read_text())["complete"]


def test_a_fine_tune_still_queued_when_reduce_runs_is_waited_for(reference, tmp_path):
    """Slurm may cancel an afterok array (kill-on-invalid-dep) when the fine-tune it waits for ends one run to be
    requeued; the reduce job then runs while the fine-tune is still queued. It must not report the fine-tune as
    failed: it resubmits the fine-tuned shards after the queued job, without using a retry (max_retries=0)."""
    run_dir = tmp_path / "held"
    jobs = submit(run_dir, "resources.max_retries=0")
    train, finetuned = jobs["finetune"], jobs["finetuned"]["array_job_id"]
    subprocess.run(["scontrol", "hold", train], capture_output=True)  # succeeds on a running job, doing nothing
    deadline = time.time() + 120
    while not pending(train):  # it was running: end this run and hold it in the queue
        assert time.time() < deadline and train in sh("squeue", "--noheader", "--format=%i").split(), "not held"
        subprocess.run(["scontrol", "requeuehold", train], capture_output=True)
        time.sleep(0.2)
    subprocess.run(["scancel", finetuned], capture_output=True)  # Slurm may have cancelled it already

    def resubmitted():
        return len(json.loads((run_dir / "plan.json").read_text())["submissions"]) == 2

    wait_until(resubmitted, "the reduce job to resubmit the fine-tuned shards")
    second = json.loads((run_dir / "plan.json").read_text())["submissions"][1]
    assert second["jobs"]["finetune"] is None and second["jobs"]["base"] is None
    assert second["jobs"]["finetuned"]["shards"] == [0, 1]
    assert second["retries_left"] == 0
    assert f"afterok:{train}" in dependency(second["jobs"]["finetuned"]["array_job_id"])
    sh("scontrol", "release", train)
    sh("scontrol", "update", f"jobid={train}", "StartTime=now")

    wait_for_run(run_dir)
    assert json.loads(RunPaths(run_dir).report_json.read_text())["complete"]
    assert predictions(run_dir) == predictions(reference)


def test_truncated_shard_is_redone_by_resume(reference, tmp_path):
    run_dir = tmp_path / "truncated"
    subprocess.run(["cp", "-a", str(reference), str(run_dir)], check=True)
    (run_dir / "plan.json").unlink()  # the copy's jobs are not this run's
    p = RunPaths(run_dir)
    kept = p.shard_metrics("base", 0).read_text()
    full = p.shard_predictions("finetuned", 1).read_text()
    p.shard_predictions("finetuned", 1).write_text(full[: len(full) // 2])
    proc = run_main("hpcnli.submit", "--resume", run_dir, "--partition", "gpu", "--wait")
    assert "finetuned shards [1]" in proc.stdout and "base shards []" in proc.stdout
    assert p.shard_metrics("base", 0).read_text() == kept
    assert predictions(run_dir) == predictions(reference)
    assert json.loads(p.report_json.read_text())["complete"]
