"""No silently wrong report, no file lost, no traceback for a user's mistake.

A run killed, resumed, or fed a changed input at any point ends with a correct report or a refusal
that says why. The local executor here; the Slurm path's faults are in test_faults.py.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_run, run_cli, run_main
from hpcnli.config import load_config
from hpcnli.data import synthetic
from hpcnli.errors import UserFacingError, run_command
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.run.state import remaining_work

SMOKE = ROOT / "jobs" / "smoke.yaml"


def one_line_error(proc, status: int, message: str) -> None:
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def test_edited_config_retrains_and_rescores_what_depends_on_it(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "edited")
    p.config.write_text(p.config.read_text().replace("learning_rate: 0.0005", "learning_rate: 0.001"))
    proc = run_main("hpcnli.submit", "--resume", p.run_dir)
    # the base model's predictions do not depend on the recipe: its shards stay (ShardMetrics.base_hash)
    assert "finetune=yes, base shards [], finetuned shards [0, 1]" in proc.stdout
    assert "redo: fine-tune: config.yaml changed since the adapter was trained" in proc.stdout
    cfg = load_config(p.config)
    rep = json.loads(p.report_json.read_text())
    assert rep["complete"] and rep["config"]["train"]["learning_rate"] == 0.001
    assert rep["training"]["inputs"]["train_config_hash"] == cfg.train_hash()
    assert all(s["config_hash"] == cfg.hash() for s in rep["shards"]["finetuned"])
    assert all(s["base_hash"] == cfg.base_hash() != s["config_hash"] for s in rep["shards"]["base"])

    # an eval setting changes what both models' predictions depend on, not the adapter
    data = yaml.safe_load(p.config.read_text())
    data["eval"]["batch_size"] = 6
    p.config.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = run_main("hpcnli.submit", "--resume", p.run_dir)
    assert "finetune=done, base shards [0, 1], finetuned shards [0, 1]" in proc.stdout
    assert "redo: base shard 0: written for base settings" in proc.stdout
    rep = json.loads(p.report_json.read_text())
    assert rep["complete"] and all(s["batch_size"] == 6 for m in MODELS for s in rep["shards"][m])


def test_a_deleted_or_corrupt_adapter_is_retrained_not_trusted(smoke_run, tmp_path):
    gone = copy_run(smoke_run, tmp_path / "no-weights")
    (gone.adapter / "adapter_model.safetensors").unlink()
    work = remaining_work(load_config(gone.config), gone)
    assert work.finetune and work.shards("finetuned") == [0, 1] and work.shards("base") == []
    assert work.why == [f"fine-tune: no complete adapter and train_metrics.json in {gone.run_dir}"]

    cut = copy_run(smoke_run, tmp_path / "cut-metrics")
    cut.train_metrics.write_text(cut.train_metrics.read_text()[:40])
    work = remaining_work(load_config(cut.config), cut)
    assert work.finetune and "train_metrics.json is unreadable" in work.why[0]
    proc = run_main("hpcnli.reduce", cut.run_dir, check=False)  # the reducer refuses instead of a report without cost
    one_line_error(proc, 1, "finetuned: fine-tune: train_metrics.json is unreadable")
    assert json.loads(cut.report_json.read_text())["complete"] is False


def test_an_adapter_trained_on_other_pairs_is_retrained(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "other-pairs")
    metrics = json.loads(p.train_metrics.read_text())
    metrics["inputs"]["train_data_hash"] = "0123456789abcdef"  # as if data.train had changed since
    p.train_metrics.write_text(json.dumps(metrics))
    work = remaining_work(load_config(p.config), p)
    assert work.finetune and work.shards("finetuned") == [0, 1]
    assert "fine-tune: data.train changed since the adapter was trained (content hash 0123456789abcdef" in work.why[0]


def test_shards_of_another_adapter_are_redone(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "other-adapter")
    metrics = json.loads(p.shard_metrics("finetuned", 1).read_text())
    p.shard_metrics("finetuned", 1).write_text(json.dumps({**metrics, "adapter_sha256": "0123456789abcdef"}))
    work = remaining_work(load_config(p.config), p)
    assert work.finetune is False and work.shards("finetuned") == [1] and work.shards("base") == []
    assert "finetuned shard 1: scored with another adapter (sha256 0123456789abcdef" in work.why[0]


@pytest.mark.model
def test_a_changed_test_file_is_refused_everywhere(tmp_path):
    """Ids are `<file stem>-<row>`: an edited label keeps every id, only the content hash sees it."""
    rows = synthetic.generate("test", 24)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("premise", "hypothesis", "label")}) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    run_main("hpcnli.submit", "--config", SMOKE, "--plan-only", "--run-dir", run_dir, f"data.test={data}")
    lines = data.read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    lines[2] = json.dumps({**row, "label": (row["label"] + 1) % 3}) + "\n"
    data.write_text("".join(lines))

    message = "data.test changed since the run was planned"
    one_line_error(run_main("hpcnli.submit", "--resume", run_dir, check=False), 2, message)
    one_line_error(run_main("hpcnli.evaluate", run_dir, "--model", "base", "--shard", "0", check=False), 2, message)
    one_line_error(run_main("hpcnli.reduce", run_dir, check=False), 1, message)
    assert not RunPaths(run_dir).shard_predictions("base", 0).exists()


def test_commands_answer_broken_run_files_in_one_line(smoke_run, tmp_path):
    one_line_error(run_main("hpcnli.reduce", tmp_path, check=False), 2, "is not a run directory (no config.yaml)")
    # as its own process once: the exit status a shell sees (the other answers are the same code, in-process)
    one_line_error(run_cli("hpcnli.status", tmp_path, check=False), 2, "is not a run directory (no config.yaml)")

    p = copy_run(smoke_run, tmp_path / "corrupt")
    p.ledger.write_text('{"submissions": [')
    one_line_error(run_main("hpcnli.status", p.run_dir, check=False), 2, "plan.json is corrupt (not valid JSON")
    p.test_manifest.write_text("\x00\x01")
    one_line_error(run_main("hpcnli.reduce", p.run_dir, check=False), 2, "test_set.json is corrupt (not valid JSON")
    p.config.write_bytes(b"\xff\xfe binary")
    one_line_error(
        run_main("hpcnli.submit", "--resume", p.run_dir, check=False),
        2,
        "config.yaml: 1 problem(s):\n  - not UTF-8 text",
    )
    one_line_error(
        run_main("hpcnli.evaluate", p.run_dir, "--model", "base", "--shard", "0", check=False), 2, "not UTF-8 text"
    )


@pytest.mark.parametrize(
    "fault, message",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/r/report.json"),
            "hpcnli.reduce: cannot write (/runs/r/report.json): the disk is full; files already written are kept",
        ),
        (OSError(errno.EROFS, "Read-only file system", "/runs/r"), "the file system is read-only"),
        (OSError(errno.EACCES, "Permission denied", "/runs/r"), "permission denied"),
        (KeyboardInterrupt(), "hpcnli.reduce: interrupted; files already written are kept"),
    ],
)
def test_environment_faults_are_one_line(fault, message, capsys):
    """A full disk or read-only directory cannot be made real here (tests run as root, on one disk), so the
    fault is raised where a write would raise it; the command's answer is what is tested."""

    def work():
        raise fault

    assert run_command("hpcnli.reduce", work) == (130 if isinstance(fault, KeyboardInterrupt) else 2)
    assert message in capsys.readouterr().err


def test_errors_hpcnli_cannot_name_keep_their_traceback():
    """A bug must not pass for a user's mistake."""

    def bad_descriptor():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        run_command("hpcnli.reduce", bad_descriptor)
    with pytest.raises(KeyError):
        run_command("hpcnli.reduce", lambda: {}["missing"])

    def mistake():
        raise UserFacingError("say what to change")

    assert run_command("hpcnli.reduce", mistake) == 2


def processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line names the run directory (the stage processes)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run_dir).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def start_submit(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpcnli.submit", *map(str, args)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )


@pytest.mark.model
def test_stopping_submit_stops_its_stages_and_the_lock_covers_orphans(tmp_path):
    run_dir = tmp_path / "stopped"
    paths = RunPaths(run_dir)
    # 1. submit dies hard (SIGKILL: no cleanup) while fine-tuning: the stage lives on and still holds the run.
    first = start_submit("--config", SMOKE, "--executor", "local", "--run-dir", run_dir)
    wait_for(lambda: len(processes_of(run_dir)) >= 2, 120, "the fine-tune stage to start")  # submit and its stage
    first.kill()
    first.wait()
    assert processes_of(run_dir), "the fine-tune stage should outlive a SIGKILLed submit"
    refused = run_main("hpcnli.submit", "--resume", run_dir, check=False)
    one_line_error(refused, 2, "is in use by another hpcnli.submit; wait for it to end")
    wait_for(lambda: not processes_of(run_dir), 300, "the orphaned fine-tune to end")

    # 2. SIGTERM during a shard: submit stops the shard with it, says how to resume, leaves no process.
    second = start_submit("--resume", run_dir)
    wait_for(lambda: paths.stage_log("eval_base_0").is_file(), 300, "the first shard to start")
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 130, (out, err)
    assert (
        f"stopped, and the stage that was running with it; nothing computed is lost: python -m hpcnli.submit "
        f"--resume {run_dir}" in err
    )
    assert not processes_of(run_dir)

    # 3. --resume completes the run; the fine-tune finished by the orphan is kept.
    done = run_main("hpcnli.submit", "--resume", run_dir)
    assert "finetune=done" in done.stdout
    assert json.loads(paths.report_json.read_text())["complete"]
