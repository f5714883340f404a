"""The GPU path as a cluster runs it, proved on the CPU: a stage runs on the device it was planned for or stops,
GPUs are picked per process, emulated bf16 is not taken for fast bf16, and eval weights stay right whatever the
file lock does. Where these need CUDA, torch.cuda's answers are replaced (no GPU here); the rest runs for real."""

from __future__ import annotations

import errno
import threading
import time

import filelock
import pytest
import torch

from conftest import run_main
from hpcnli.config import load_config
from hpcnli.io import directory_aside, work_saving_lock
from hpcnli.model import loading
from hpcnli.model.errors import ModelError


def _gpus(monkeypatch, n: int, bf16_native: bool = True) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or bf16_native
    )
    return chosen


def test_a_cpu_plan_runs_on_the_cpu_even_beside_a_gpu(monkeypatch):
    _gpus(monkeypatch, 2)
    assert loading.stage_device(load_config("jobs/smoke.yaml")) == torch.device("cpu")


def test_a_gpu_plan_without_a_gpu_stops(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(ModelError, match=r"resources\.gpus_per_node is 1 but this process sees no GPU"):
        loading.stage_device(load_config("jobs/smoke.yaml", ["resources.gpus_per_node=1"]))


@pytest.mark.parametrize("seen,processes,rank,expected", [(4, 4, 3, 3), (1, 2, 1, 0), (8, 2, 1, 1)])
def test_each_process_takes_its_own_gpu(monkeypatch, seen, processes, rank, expected):
    chosen = _gpus(monkeypatch, seen)
    cfg = load_config("jobs/smoke.yaml", [f"resources.gpus_per_node={processes}"])
    assert loading.stage_device(cfg, rank, processes) == torch.device("cuda", expected) and chosen == [expected]


def test_processes_that_would_share_a_gpu_stop(monkeypatch):
    _gpus(monkeypatch, 2)
    with pytest.raises(ModelError, match="4 training processes on this node see 2 GPUs"):
        loading.stage_device(load_config("jobs/smoke.yaml", ["resources.gpus_per_node=4"]), 3, 4)


def test_emulated_bf16_is_not_fast(monkeypatch):
    _gpus(monkeypatch, 1, bf16_native=False)  # a V100 or T4: bf16 only through emulation
    assert loading.fast_bf16() is False
    _gpus(monkeypatch, 1, bf16_native=True)
    assert loading.fast_bf16() is True


def test_two_writers_without_a_working_lock_leave_one_whole_set(monkeypatch, tmp_path):
    """Lustre without flock (ENOSYS), or node-local locks that do not exclude: both writers write; each stages
    its own directory and renames it into place whole, so the result is one complete set and no leftovers."""

    def no_lock(self, *args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_lock)
    target = tmp_path / "eval_weights" / "base"

    def writer(name: str) -> None:
        with work_saving_lock(tmp_path / "eval_weights" / ".base.lock") as held:
            assert held is False
            with directory_aside(target) as staging:
                for part in range(3):
                    (staging / f"part{part}").write_text(name)
                    time.sleep(0.05)
                (staging / "COMPLETE").write_text(name)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = {p.name: p.read_text() for p in target.iterdir()}
    assert set(names) == {"part0", "part1", "part2", "COMPLETE"} and len(set(names.values())) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["base"]  # no staging or old copy left


@pytest.mark.model
def test_a_stage_planned_for_gpus_stops_on_a_machine_without(tmp_path):
    """Through the local executor, as on a node Slurm gave no GPU: each stage says so in one line, nothing scored."""
    proc = run_main(
        "hpcnli.submit",
        "--config",
        "jobs/smoke.yaml",
        "--run-dir",
        tmp_path / "run",
        "resources.gpus_per_node=1",
        check=False,
    )
    assert proc.returncode != 0
    for log in ("finetune", "eval_base_0"):
        text = (tmp_path / "run" / "logs" / f"{log}.log").read_text()
        assert "resources.gpus_per_node is 1 but this process sees no GPU" in text and "Traceback" not in text, text
    assert not list((tmp_path / "run").glob("predictions/*/*.jsonl"))
