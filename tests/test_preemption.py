"""The fine-tune's one preemption mechanism on the real local cluster: a job warned of its time limit by Slurm's
signal (USR2, which `--signal=USR2@90` asks Slurm to send 90 s before the limit) checkpoints, requeues itself and
resumes from that checkpoint.

The warning is sent through Slurm (`scancel --signal=USR2`: to every step of the job, as the time-limit warning
is) at a step the test chooses. Waiting for the real time limit made the test depend on the machine's speed and on
when Slurm's periodic check fires (up to a minute early): on a CPU without bf16 the 135M model trained too slowly
and hit the limit four times. The sbatch text that asks for the warning is pinned by tests/test_sbatch_golden.py."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import run_main
from hpcnli.cluster.commands import job_records
from hpcnli.run.paths import RunPaths

pytestmark = pytest.mark.slurm
STEPS = 300  # the smoke config's tiny model: seconds of training, a warning at step 20 lands mid-run


def _finetune_job(paths: RunPaths) -> str:
    return str(json.loads(paths.ledger.read_text())["submissions"][0]["jobs"]["finetune"])


def test_the_time_limit_warning_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    paths = RunPaths(tmp_path / "limit")
    run_main(
        "hpcnli.submit",
        "--config",
        "jobs/smoke.yaml",
        "--partition",
        "gpu",
        "--run-dir",
        paths.run_dir,
        f"train.max_steps={STEPS}",
        "train.checkpoint_every=1000",  # nothing checkpoints periodically: the checkpoint is the warning's
        "train.log_every=1",
        "data.synthetic_train_size=200",
        "data.holdout=16",  # and a learning curve, kept across the requeue
        "train.eval_every=20",
        "train.log_with=tensorboard",
    )
    job = _finetune_job(paths)

    def log() -> str:
        return "".join(p.read_text() for p in (paths.logs / job).glob("*.out")) if (paths.logs / job).is_dir() else ""

    deadline = time.time() + 600
    while f"step 20/{STEPS}" not in log():
        assert time.time() < deadline and f"step {STEPS}/{STEPS}" not in log(), log()[-3000:]
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    while time.time() < deadline:
        reason = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%r"], capture_output=True, text=True)
        if reason.stdout.strip() == "BeginTime":  # Slurm holds a requeued job a while; let it start again now
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        if paths.report_json.is_file() and job_records([job]).get(job, {}).get("state") == "COMPLETED":
            break
        time.sleep(0.5)
    text = log()
    assert "checkpoint at step" in text and f"requeueing job {job} (requeue 1 of 3)" in text, text[-3000:]
    resumed = [line for line in text.splitlines() if "resumed from" in line]
    assert resumed, text[-3000:]
    step = int(resumed[0].rsplit("(step ", 1)[1].rstrip(")"))
    assert 20 <= step < STEPS  # the requeued job continued from the warning's checkpoint, not from step 0
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["steps"] == STEPS and metrics["restarts"] == 1
    assert [r["step"] for r in metrics["loss_curve"]] == list(range(1, STEPS + 1))  # no step lost or doubled
    assert [p["step"] for p in metrics["heldout_curve"]] == list(range(0, STEPS + 1, 20))  # nor a held-out point
    from test_curve import scalars

    assert [s for s, _ in scalars(paths)["heldout/accuracy"]] == list(range(0, STEPS + 1, 20))  # the same event files
    assert json.loads(paths.report_json.read_text())["complete"]
