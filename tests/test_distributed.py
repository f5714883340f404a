"""Data-parallel fine-tuning on the real local cluster: 2 processes (gloo) through Slurm and Accelerate.

2 processes of batch b must train like 1 process of batch 2b with the same seed and data order, and a
rank lost mid-run must fail the job as a whole, after which --resume completes it from its checkpoint.
Training runs in float32 here: the comparison is of the data split and the gradient all-reduce, and
bf16 would add rounding that differs with the split. The model is the smoke config's tiny one: its steps take
milliseconds, so the runs that are stopped mid-way train many steps (LONG) to leave time to stop them.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import ROOT, made_once, run_main
from hpcnli.run.paths import MODELS, RunPaths
from test_slurm import wait_done

pytestmark = pytest.mark.slurm
SMOKE = ROOT / "jobs" / "smoke.yaml"
COMMON = [
    "model.dtype=float32",
    "quantization.compute_dtype=float32",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "resources.cpus_per_task=1",
    "train.learning_rate=1e-3",
    "data.synthetic_train_size=44",  # 32 to train on, as without a curve,
    "data.holdout=12",  # and a learning curve: each rank scores its share of the held-out pairs
    "train.eval_every=3",
]
LOSS_TOLERANCE = 1e-3  # float32 sums in another order (per process, then all-reduced)
LONG = 150  # steps of a run that is stopped after its first few: seconds of training left to stop it in


def submit(run_dir: Path, *overrides: str, wait: bool = True) -> dict:
    run_main(
        "hpcnli.submit",
        "--config",
        SMOKE,
        "--partition",
        "gpu",
        "--run-dir",
        run_dir,
        *(["--wait"] if wait else []),
        *COMMON,
        *overrides,
    )
    return json.loads(RunPaths(run_dir).ledger.read_text())["submissions"][-1]["jobs"]


@pytest.fixture(scope="session")
def one_and_two(slurm_cluster, tmp_path_factory):
    def make(root):  # submitted together: the cluster runs what fits side by side
        jobs = [
            submit(root / "one", "train.max_steps=6", "train.batch_size=8", wait=False),
            submit(
                root / "two", "train.max_steps=6", "train.batch_size=4", "resources.processes_per_node=2", wait=False
            ),
        ]
        wait_done([j["reduce"] for j in jobs])

    root = made_once(tmp_path_factory, "ddp", make)
    return RunPaths(root / "one"), RunPaths(root / "two")


def test_two_processes_train_like_one_with_twice_the_batch(one_and_two):
    one, two = one_and_two
    m1, m2 = (json.loads(p.train_metrics.read_text()) for p in (one, two))
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    assert m1["effective_batch_size"] == m2["effective_batch_size"] == 8
    assert m1["examples_seen"] == m2["examples_seen"] == 48
    c1, c2 = m1["loss_curve"], m2["loss_curve"]
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == list(range(1, 7))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(c1, c2)]
    assert max(diffs) <= LOSS_TOLERANCE, f"loss curves differ by up to {max(diffs):.2e}: {c1} {c2}"
    assert c1[-1]["loss"] < c1[0]["loss"]  # it did learn: the comparison is not of two idle runs
    h1, h2 = m1["heldout_curve"], m2["heldout_curve"]
    assert [p["step"] for p in h1] == [p["step"] for p in h2] == [0, 3, 6]
    assert all(p["pairs"] == 12 for p in h1 + h2)  # two ranks' shares of the 12 pairs, gathered into one curve
    for a, b in zip(h1, h2):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 12 and abs(a["loss"] - b["loss"]) <= 1e-2, (h1, h2)
    assert m1["best_step"] == m2["best_step"]

    preds = {}
    for name, p in (("one", one), ("two", two)):
        preds[name] = [
            r["pred"]
            for s in range(2)
            for r in map(json.loads, p.shard_predictions("finetuned", s).read_text().splitlines())
        ]
    agree = sum(a == b for a, b in zip(preds["one"], preds["two"])) / len(preds["one"])
    assert agree >= 0.99, f"fine-tuned predictions agree on {agree:.1%}"
    report = two.report_md.read_text()
    assert (
        "| training processes | 2 on 1 node(s), batch 4 pairs per process, 8.0 pairs per optimizer step, "
        "gradient checkpointing off |"
    ) in report


def test_two_nodes_train_like_one_process(one_and_two, tmp_path):
    """2 nodes x 1 process: the local cluster's partition `multi` is two slurmd nodes on this host."""
    one, _ = one_and_two
    nodes = RunPaths(tmp_path / "two-nodes")
    run_main(
        "hpcnli.submit",
        "--config",
        SMOKE,
        "--partition",
        "multi",
        "--run-dir",
        nodes.run_dir,
        "--wait",
        *COMMON,
        "train.max_steps=6",
        "train.batch_size=4",
        "resources.nodes=2",
        "eval.num_shards=1",  # the training is what is compared: one eval task per model
    )
    m1, m2 = (json.loads(p.train_metrics.read_text()) for p in (one, nodes))
    assert (m2["num_processes"], m2["nodes"], m2["effective_batch_size"]) == (2, 2, 8)
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(m1["loss_curve"], m2["loss_curve"])]
    assert len(diffs) == 6 and max(diffs) <= LOSS_TOLERANCE, (m1["loss_curve"], m2["loss_curve"])
    # each node's rank scored its share of the 12 held-out pairs; the curve holds them all
    assert [(p["step"], p["pairs"]) for p in m2["heldout_curve"]] == [(0, 12), (3, 12), (6, 12)]
    jobs = json.loads(nodes.ledger.read_text())["submissions"][0]["jobs"]
    assert wait_done([jobs["finetune"]])[jobs["finetune"]]["state"] == "COMPLETED"
    assert (
        "| training processes | 2 on 2 node(s), batch 4 pairs per process, 8.0 pairs per optimizer step, "
        "gradient checkpointing off |"
    ) in nodes.report_md.read_text()


def rank_pid(job_id: str, rank: int) -> int | None:
    """The process of one task (rank) of a Slurm job step on this node, found by its environment."""
    want = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode(), b"SLURM_STEP_ID=0"}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = set(environ.read_bytes().split(b"\0"))
            cmdline = (environ.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if want <= env and b"python" in cmdline:
            return int(environ.parent.name)
    return None


def test_a_lost_rank_fails_the_job_and_resume_completes_it(slurm_cluster, tmp_path):
    run_dir = tmp_path / "lost-rank"
    paths = RunPaths(run_dir)
    jobs = submit(
        run_dir,
        f"train.max_steps={LONG}",
        "train.checkpoint_every=3",
        "train.batch_size=4",
        "resources.processes_per_node=2",
        "resources.max_retries=0",
        wait=False,
    )
    deadline = time.time() + 600
    while not paths.complete_checkpoints():
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    pid = rank_pid(jobs["finetune"], rank=1)
    assert pid is not None, "rank 1 of the fine-tune job is not running"
    os.kill(pid, signal.SIGKILL)

    rows = wait_done([jobs["finetune"], jobs["reduce"]])
    assert rows[jobs["finetune"]]["state"] in ("FAILED", "CANCELLED"), rows  # the job as a whole, not rank 1 alone
    assert not paths.train_metrics.exists() and paths.complete_checkpoints()

    run_main("hpcnli.submit", "--resume", run_dir, "--partition", "gpu", "--wait")
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["restarts"] == 1 and metrics["steps"] == LONG and metrics["num_processes"] == 2
    assert json.loads(paths.report_json.read_text())["complete"]
    assert all(paths.shard_predictions(m, s).is_file() for m in MODELS for s in range(2))


def test_sigterm_to_one_rank_stops_both_at_one_checkpoint(slurm_cluster, tmp_path):
    """The stop flag is agreed across ranks: SIGTERM to rank 1 alone stops both after the same step, rank 0 writes
    that step's checkpoint before either exits (no --kill-on-bad-exit race), and --resume continues from it."""
    run_dir = tmp_path / "term-rank"
    paths = RunPaths(run_dir)
    jobs = submit(
        run_dir,
        f"train.max_steps={LONG}",
        "train.checkpoint_every=0",
        "train.batch_size=4",
        "resources.processes_per_node=2",
        "resources.max_retries=0",
        wait=False,
    )
    log_dir, deadline = paths.logs / str(jobs["finetune"]), time.time() + 600

    def log() -> str:
        return "".join(p.read_text() for p in log_dir.glob("*.out")) if log_dir.is_dir() else ""

    while f"step 3/{LONG}" not in log():
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
    pid = rank_pid(jobs["finetune"], rank=1)
    assert pid is not None, "rank 1 of the fine-tune job is not running"
    os.kill(pid, signal.SIGTERM)
    wait_done([jobs["finetune"], jobs["reduce"]])
    lines = [line for line in log().splitlines() if "stopped after step" in line]
    stopped = {line.split("stopped after step ")[1].split(",")[0] for line in lines}
    assert len(lines) >= 2 and len(stopped) == 1, log()[-3000:]  # both ranks stopped, after the same step
    step = int(stopped.pop())
    assert [p.name for p in paths.complete_checkpoints()] == [f"step_{step:07d}"] and 3 <= step < LONG

    run_main("hpcnli.submit", "--resume", run_dir, "--partition", "gpu", "--wait")
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["restarts"] == 1 and metrics["steps"] == LONG
    assert [r["step"] for r in metrics["loss_curve"]] == list(range(1, LONG + 1))  # no step lost or doubled
    assert [p["step"] for p in metrics["heldout_curve"]] == [*range(0, LONG, 3), LONG]  # nor a held-out point
    assert len(metrics["memory_per_rank"]) == 2  # every rank's peak, not rank 0's alone


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["resources.gpus_per_node=4"],
            "resources.gpus_per_node: 4 GPUs per node, but the nodes of partition 'gpu' have 2",
        ),
        (["resources.nodes=3"], "resources.nodes: 3 nodes, but partition 'gpu' has "),
        (
            ["resources.processes_per_node=2", "resources.cpus_per_task=2"],
            (
                "resources.cpus_per_task: 2 training processes per node x 2 CPUs = 4, "
                "but the nodes of partition 'gpu' have 2"
            ),
        ),
    ],
)
def test_jobs_the_partition_cannot_hold_are_refused_before_queueing(slurm_cluster, tmp_path, overrides, message):
    run_dir = tmp_path / "refused"
    proc = run_main(
        "hpcnli.submit", "--config", SMOKE, "--partition", "gpu", "--run-dir", run_dir, *overrides, check=False
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not run_dir.exists()
