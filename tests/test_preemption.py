"""The fine-tune's one preemption mechanism on the real local cluster: a job that reaches its time limit
checkpoints on Slurm's warning signal (--signal=USR2@90), is requeued, and resumes from that checkpoint."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import run_cli
from hpcnli.cluster.commands import job_records
from hpcnli.run.paths import RunPaths

pytestmark = pytest.mark.slurm


def _finetune_job(paths: RunPaths) -> str:
    return str(json.loads(paths.ledger.read_text())["submissions"][0]["jobs"]["finetune"])


def test_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    # resources.time_min=3: Slurm sends USR2 90 s before the limit (up to a minute earlier: it checks periodically),
    # 30 to 90 s in, mid-training (200 steps of ~0.5 s after a ~15 s start); nothing checkpoints periodically.
    paths = RunPaths(tmp_path / "limit")
    run_cli(
        "hpcnli.submit",
        "--config",
        "jobs/smoke.yaml",
        "--partition",
        "gpu",
        "--run-dir",
        paths.run_dir,
        "train.max_steps=200",
        "train.checkpoint_every=1000",
        "train.log_every=1",
        "resources.time_min=3",
        "data.synthetic_train_size=200",
        "data.holdout=16",  # and a learning curve, kept across the requeue
        "train.eval_every=20",
        "train.log_with=tensorboard",
    )
    job = _finetune_job(paths)
    deadline = time.time() + 600
    while time.time() < deadline:
        reason = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%r"], capture_output=True, text=True)
        if reason.stdout.strip() == "BeginTime":  # Slurm holds a requeued job a while; let it start again now
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        if paths.report_json.is_file() and job_records([job]).get(job, {}).get("state") == "COMPLETED":
            break
        time.sleep(2)
    log = "".join(p.read_text() for p in (paths.logs / job).glob("*.out"))
    assert "checkpoint at step" in log and f"requeueing job {job} (requeue 1 of 3)" in log, log[-3000:]
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert resumed, log[-3000:]
    step = int(resumed[0].rsplit("(step ", 1)[1].rstrip(")"))
    assert 0 < step < 200  # the requeued job continued from the time-limit checkpoint, not from step 0
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["steps"] == 200 and metrics["restarts"] >= 1
    assert [r["step"] for r in metrics["loss_curve"]] == list(range(1, 201))  # no step lost or doubled
    assert [p["step"] for p in metrics["heldout_curve"]] == list(range(0, 201, 20))  # nor a held-out point
    from test_curve import scalars

    assert [s for s, _ in scalars(paths)["heldout/accuracy"]] == list(range(0, 201, 20))  # the same event files
    assert json.loads(paths.report_json.read_text())["complete"]
