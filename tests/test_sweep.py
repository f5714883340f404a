"""Sweeps (hpcnli.sweep): the grid and its refusals, a real sweep of the smoke config through the local executor
(stopped in a fine-tune and resumed) and through the local Slurm cluster (one fine-tune array, the base model
scored once, a point whose fine-tune is cancelled retried), and the comparison report checked against the runs'
own files."""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_main
from hpcnli.records import SweepReport, TrainMetrics
from hpcnli.report.stats import holm, paired_bootstrap
from hpcnli.run.planning import PlanError
from hpcnli.sweeps.grid import Sweep, SweepPaths, point_configs, split_values
from test_slurm import sacct, sh

SMOKE = "jobs/smoke.yaml"
GRID = ["train.learning_rate=5e-4,1e-3"]
HELD_OUT = ["data.holdout=8", "train.eval_every=3"]
SMALL = [
    "eval.num_shards=1",
    "data.synthetic_test_size=12",
]  # one eval task per model, 12 test pairs: the sweep is under test
RUNS = ["p00-s0", "p00-s1", "p01-s0", "p01-s1"]


def sweep_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["hpcnli.sweep", "--config", SMOKE, *GRID, *HELD_OUT, *SMALL, f"output_root={root}", "--name", name, *extra]


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("3e-4,1e-3", ["3e-4", "1e-3"]),
        ("8", ["8"]),
        ("[q_proj,v_proj],[q_proj,k_proj,v_proj]", ["[q_proj,v_proj]", "[q_proj,k_proj,v_proj]"]),
        ("'{premise}, yes or no?',{premise}", ["{premise}, yes or no?", "{premise}"]),
        ('"a,b"', ["a,b"]),
    ],
)
def test_commas_split_values_outside_brackets_and_quotes(raw, values):
    assert split_values(raw) == values


def test_a_sweep_file_is_the_same_sweep_as_its_command_line(tmp_path):
    file = tmp_path / "s.yaml"
    file.write_text(
        "name: s\nconfig: jobs/smoke.yaml\noverrides:\n  data.holdout: 8\n  train.eval_every: 3\n"
        "grid:\n  train.learning_rate: [5.0e-4, 1.0e-3]\n  lora.target_modules: [[q_proj, v_proj], [q_proj]]\n"
        "seeds: [0, 1]\n"
    )
    from_file = Sweep.from_file(str(file))
    from_cli = Sweep.from_cli(
        SMOKE,
        [*HELD_OUT, "train.learning_rate=0.0005,0.001", 'lora.target_modules=["q_proj", "v_proj"],["q_proj"]'],
        "0,1",
        "s",
    )
    assert from_file == from_cli
    planned = point_configs(from_file, [])
    assert len(planned) == 8  # 2 x 2 points x 2 seeds
    assert [(p["point"], seed) for p, seed, _ in planned][:3] == [("p00", 0), ("p00", 1), ("p01", 0)]
    cfg = planned[3][2]  # p01, seed 1
    assert (cfg.train.learning_rate, cfg.lora.target_modules, cfg.train.seed) == (5e-4, ("q_proj",), 1)
    assert cfg.data.holdout == 8 and cfg.name == "s-p01-s1"
    # Every run of a point has the base hash of the others: the recipe is not in it.
    assert len({c.base_hash() for _, _, c in planned}) == 1 and len({c.hash() for _, _, c in planned}) == 8


@pytest.mark.parametrize(
    ("items", "seeds", "message"),
    [
        (HELD_OUT, "0,1", "the grid is empty"),
        ([*HELD_OUT, "data.test=a.jsonl,b.jsonl"], "0,1", "data.test: cannot be swept: every point is trained"),
        ([*HELD_OUT, "data.holdout=8,16"], "0,1", "data.holdout: cannot be swept"),
        ([*HELD_OUT, "eval.batch_size=8,16"], "0,1", "eval.batch_size: cannot be swept"),
        ([*HELD_OUT, "train.eval_pairs=4,8"], "0,1", "train.eval_pairs: cannot be swept"),
        ([*HELD_OUT, "resources.mem_gb=4,8"], "0,1", "resources.mem_gb: cannot be swept: resources change no result"),
        ([*HELD_OUT, "train.seed=0,1"], "0,1", "train.seed: cannot be swept: seeds are the sweep's other axis"),
        ([*HELD_OUT, "train.seed=3", *GRID], "0,1", "train.seed: seeds are the sweep's other axis"),
        (
            [*HELD_OUT, "train.learning_rate=1e-3,1e-3"],
            "0,1",
            "train.learning_rate: the value(s) ['1e-3'] are given twice",
        ),
        ([*HELD_OUT, *GRID], "0", "--seeds: '0' gives 1 seed(s); a sweep needs at least 2"),
        ([*HELD_OUT, *GRID], "0,0", "repeats a seed"),
        ([*HELD_OUT, *GRID], "0,x", "must be integers"),
        (GRID, "0,1", "a sweep ranks recipes on held-out pairs, never on the test file: set data.holdout"),
        (["data.holdout=8", *GRID], "0,1", "set data.holdout (pairs set aside, e.g. 800) and train.eval_every"),
        (
            [*HELD_OUT, "lora.rank=8,16"],
            "0,1",
            "point p00 (lora.rank=8): lora.rank: unknown key; valid keys here are: r, alpha",
        ),
        (
            [*HELD_OUT, "train.learning_rate=fast,1e-3"],
            "0,1",
            "point p00 (train.learning_rate=fast): train.learning_rate: expected float",
        ),
        (
            [*HELD_OUT, "train.learning_rate=1e-3,-1"],
            "0,1",
            "point p01 (train.learning_rate=-1): train.learning_rate: must be > 0",
        ),
        ([*HELD_OUT, "train.learning_rate=" + ",".join(str(i) for i in range(1, 502))], "0,1", "at most 1000"),
    ],
)
def test_bad_sweeps_are_refused_with_the_key_to_change(items, seeds, message):
    with pytest.raises(PlanError) as e:
        point_configs(Sweep.from_cli(SMOKE, items, seeds, None), [])
    assert message in str(e.value)


@pytest.mark.model
def test_a_refused_sweep_makes_nothing_and_says_so_in_one_line(tmp_path):
    proc = run_main(*sweep_args(tmp_path, "bad", "lora.r=8,0"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("hpcnli.sweep: point p01 (train.learning_rate=5e-4, lora.r=0): lora.r: must be > 0")
    )
    assert not any(tmp_path.iterdir())


def test_too_many_jobs_for_the_cluster_are_refused_before_anything_is_queued(slurm_cluster, tmp_path):
    limit = int(sh("scontrol", "show", "config").split("MaxJobCount")[1].split("=")[1].split()[0])
    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    proc = run_main(
        "hpcnli.sweep", "--config", SMOKE, f"train.learning_rate={lrs}", *HELD_OUT, "eval.num_shards=200",
        "data.synthetic_test_size=200", f"output_root={tmp_path}", "--seeds", "0,1,2,3,4", "--partition", "gpu",
        check=False,
    )  # fmt: skip
    jobs = 50 * (1 + 200) + 200 + 1
    assert proc.returncode == 2 and f"would queue {jobs} jobs" in proc.stderr and f"at most {limit}" in proc.stderr
    assert not any(tmp_path.iterdir())


def heldout_of(run_dir: Path) -> float:
    """The held-out accuracy of the adapter a run scored, read from its train_metrics.json alone."""
    t = TrainMetrics.read(run_dir / "train_metrics.json")
    return next(p["accuracy"] for p in t.heldout_curve if p["step"] == t.adapter_step)


def test_bootstrap_and_holm_on_known_cases():
    same = paired_bootstrap([[0] * 50, [0] * 50])
    assert same["difference"] == 0 and same["p"] == 1.0
    better = paired_bootstrap([[1] * 30 + [0] * 70, [1] * 28 + [0] * 72])  # A right where B is wrong, 29% of pairs
    assert better["p"] < 0.001 and 0.2 < better["ci95"][0] < better["difference"] < better["ci95"][1] < 0.4
    noise = paired_bootstrap([[1, -1] * 50, [-1, 1] * 50])
    assert noise["p"] > 0.5 and noise["ci95"][0] < 0 < noise["ci95"][1]
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def check_sweep_report(sweep_dir: Path) -> SweepReport:
    """The sweep's report against the runs' own files: the winner is the best mean held-out accuracy, its test
    figure the mean of its runs' reports, every test of the winner Holm-adjusted."""
    rep = SweepReport.read(sweep_dir / "report.json")
    assert rep.complete and not rep.problems and len(rep.runs) == len(RUNS)
    held = {p: statistics.fmean(heldout_of(sweep_dir / f"{p}-s{s}") for s in (0, 1)) for p in ("p00", "p01")}
    best = max(held.values())
    assert rep.winner is not None and held[rep.winner["point"]] == best
    assert rep.winner["heldout_mean"] == pytest.approx(best)
    tests = [json.loads((sweep_dir / f"{rep.winner['point']}-s{s}" / "report.json").read_text()) for s in (0, 1)]
    assert rep.winner["test_mean"] == pytest.approx(
        statistics.fmean(t["models"]["finetuned"]["accuracy"] for t in tests)
    )
    (comparison,) = rep.comparisons
    assert comparison["point"] != rep.winner["point"] and comparison["p_holm"] >= comparison["p"]
    text = (sweep_dir / "report.md").read_text()
    assert "(not used for selection)" in text and "## Is the difference real?" in text
    assert (sweep_dir / "accuracy_by_key.png").stat().st_size > 10_000
    return rep


@pytest.mark.model
def test_local_sweep_stopped_in_a_fine_tune_resumes_what_is_missing(tmp_path):
    sweep_dir = tmp_path / "local"
    proc = subprocess.Popen(
        [sys.executable, "-m", *sweep_args(tmp_path, "local")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stopped_in = sweep_dir / "p01-s0" / "logs" / "finetune.log"
    deadline = time.monotonic() + 900
    while not stopped_in.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # inside the fine-tune: its process has started, its log is open
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert f"python -m hpcnli.sweep --resume {sweep_dir}" in err.decode()
    assert not (sweep_dir / "p01-s0" / "train_metrics.json").exists()

    resumed = run_main("hpcnli.sweep", "--resume", sweep_dir)
    assert "sweep report:" in resumed.stdout and "p00-s0: finetune" not in resumed.stdout  # done runs not redone
    for run in RUNS:  # one fine-tune per run, the stopped one started twice; the base model scored once, by p00-s0
        starts = (sweep_dir / run / "logs" / "finetune.log").read_text().count("$ ")
        assert starts == (2 if run == "p01-s0" else 1), run
        assert (run == "p00-s0") == (sweep_dir / run / "logs" / "eval_base_0.log").is_file()
        assert (run != "p00-s0") == (sweep_dir / run / "predictions" / "base").is_symlink()
    rep = check_sweep_report(sweep_dir)
    assert [b["scored_by"] for b in rep.base] == ["p00-s0"]

    status = run_main("hpcnli.status", sweep_dir).stdout
    assert "p01-s1     finetune done; shards base 1/1, finetuned 1/1; report written (base shards: p00-s0's)" in status
    assert "report     complete; winner p0" in status
    # The console command; the report is rewritten from the same files to the same text.
    before = (sweep_dir / "report.md").read_text()
    hpcnli = shutil.which("hpcnli", path=str(Path(sys.executable).parent))
    assert hpcnli is not None
    subprocess.run([hpcnli, "reduce", str(sweep_dir)], check=True, capture_output=True, cwd=ROOT)
    assert (sweep_dir / "report.md").read_text() == before


def test_slurm_sweep_one_fine_tune_array_and_a_cancelled_point_retried(slurm_cluster, tmp_path):
    from hpcnli.launch.slurm import wait_for_sweep

    sweep_dir = tmp_path / "slurm"
    proc = run_main(*sweep_args(tmp_path, "slurm", "--partition", "gpu"))
    assert "sweep reduce" in proc.stdout
    ledgers = {run: json.loads((sweep_dir / run / "plan.json").read_text())["submissions"] for run in RUNS}
    first = {run: subs[0]["jobs"] for run, subs in ledgers.items()}
    fine_tunes = [first[run]["finetune"] for run in RUNS]
    array = fine_tunes[0].split("_")[0]
    assert fine_tunes == [f"{array}_{i}" for i in range(4)]  # one array for the four runs
    assert [run for run in RUNS if first[run].get("base")] == ["p00-s0"]  # the base model scored once
    sh("scancel", f"{array}_3")  # p01-s1's fine-tune: its eval is cancelled with it, the sweep's reduce retries

    assert wait_for_sweep(SweepPaths(sweep_dir), timeout_s=1200) == 0
    check_sweep_report(sweep_dir)
    retried = json.loads((sweep_dir / "p01-s1" / "plan.json").read_text())["submissions"]
    assert len(retried) == 2 and retried[1]["retries_left"] == 0 and retried[1]["jobs"]["finetune"] != f"{array}_3"
    assert all(len(json.loads((sweep_dir / r / "plan.json").read_text())["submissions"]) == 1 for r in RUNS[:3])
    rows = sacct([array])
    assert all(rows[f"{array}_{i}"]["state"] == "COMPLETED" for i in range(3)), rows
    # a task cancelled while pending was never split out of its array: sacct has no record of it
    assert rows.get(f"{array}_3", {"state": "CANCELLED"})["state"].startswith("CANCELLED"), rows
    reduces = json.loads((sweep_dir / "submissions.json").read_text())["submissions"]
    assert len(reduces) == 2  # the first reduce resubmitted the cancelled point and a second reduce


def test_arrays_beyond_max_array_size_are_split_from_index_zero():
    from hpcnli.launch.slurm import _chunks

    assert [len(c) for c in _chunks(list(range(2500)), 1001)] == [1001, 1001, 498]
    assert _chunks(["a"], 1001) == [["a"]]


@pytest.mark.model
def test_plan_only_plans_every_run_and_the_shared_base_and_runs_nothing(tmp_path):
    proc = run_main(*sweep_args(tmp_path, "planned", "--plan-only", "--seeds", "0,1"))
    assert "planned 4 runs" in proc.stdout and "base model scored once for each of 1 base(s)" in proc.stdout
    sweep_dir = tmp_path / "planned"
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["run"] for r in plan["runs"]] == RUNS and {r["base_owner"] for r in plan["runs"]} == {"p00-s0"}
    for run in RUNS:
        assert (sweep_dir / run / "config.yaml").is_file() and not (sweep_dir / run / "logs").exists()
    assert (sweep_dir / "p01-s1" / "predictions" / "base").resolve() == (sweep_dir / "p00-s0" / "predictions" / "base")
    again = run_main(*sweep_args(tmp_path, "planned", "--plan-only"), check=False)
    assert again.returncode == 2 and f"{sweep_dir} exists; use --resume" in again.stderr
    as_run = run_main("hpcnli.submit", "--resume", sweep_dir, check=False)
    assert as_run.returncode == 2 and "is a sweep; complete it with python -m hpcnli.sweep --resume" in as_run.stderr
