"""Evaluation as a GPU cluster runs it, proved on the CPU: rounded float32 products (eval.matmul) with near-ties
re-scored in full float32, eval array tasks sized from their own plan, and one memory unit (GiB) with the
headline a card must have free. The CPU's bf16 products stand in for a GPU's TF32 (both round a float32
product's inputs); where CUDA's answers are needed (capability, memory), torch.cuda's are replaced."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from conftest import ROOT, run_main
from hpcnli.config import load_config
from hpcnli.config.checks import ConfigError
from hpcnli.data.nli import load_split
from hpcnli.launch.slurm import executor_for
from hpcnli.model import loading
from hpcnli.model.errors import ModelError
from hpcnli.model.footprint import GPU_CONTEXT_BYTES, GPU_RESERVED_FACTOR, GiB
from hpcnli.records import ShardMetrics
from hpcnli.report.markdown import _mb
from hpcnli.run import eval_resources, memory_plan
from hpcnli.run.paths import MODELS, RunPaths
from hpcnli.scoring import precision
from hpcnli.scoring.engine import predict

SMOKE = ROOT / "jobs/smoke.yaml"


# ---------------------------------------------------------------- eval.matmul


@pytest.mark.parametrize("capability,expected", [((9, 0), "tf32"), ((8, 0), "tf32"), ((7, 0), "float32")])
def test_auto_takes_tf32_on_gpus_that_have_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.eval_matmul("auto", torch.device("cuda", 0)) == expected
    assert precision.eval_matmul("auto", torch.device("cpu")) == "float32"


def test_a_precision_the_device_lacks_stops(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ModelError, match="'tf32' is not available on cpu"):
        precision.eval_matmul("tf32", torch.device("cpu"))
    with pytest.raises(ModelError, match=r"compute capability 8\.0"):
        precision.eval_matmul("tf32", torch.device("cuda", 0))
    with pytest.raises(ModelError, match="'bf16' is not available on cuda"):
        precision.eval_matmul("bf16", torch.device("cuda", 0))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["eval.matmul=tf32"], "tf32 needs GPUs"),
        (["eval.matmul=bf16", "resources.gpus_per_node=1"], "bf16 products are the CPU's"),
        (["eval.matmul=fp16"], "is not one of"),
        (["eval.rescore_margin=-1"], "eval.rescore_margin"),
    ],
)
def test_the_plan_refuses_a_precision_the_stage_cannot_have(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, overrides)


def test_matmul_precision_rounds_inside_the_block_only():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    exact = a @ b
    with precision.matmul_precision("bf16", torch.device("cpu")):
        rounded = a @ b
    assert torch.equal(a @ b, exact)  # restored
    if loading.fast_bf16():  # the CPU rounds only where it has bf16 products (oneDNN)
        assert not torch.equal(rounded, exact) and torch.allclose(rounded, exact, atol=1.0)


@pytest.fixture(scope="module")
def smoke_scorer():
    cfg = load_config(SMOKE, ["model.dtype=float32"])
    examples = load_split(cfg, "test").examples
    model = loading.load_eval_model(cfg, None).eval()
    return cfg, examples, model, loading.load_tokenizer(cfg)


@pytest.mark.model
def test_near_ties_take_the_float32_scores(smoke_scorer):
    cfg, examples, model, tokenizer = smoke_scorer
    exact = predict(model, tokenizer, cfg, examples)
    with precision.matmul_precision("bf16", torch.device("cpu")):
        fast = predict(model, tokenizer, cfg, examples)
    asked: list[list[int]] = []

    def rescore(near):
        asked.append(near)
        return predict(model, tokenizer, cfg, [examples[i] for i in near])

    near = [i for i, r in enumerate(fast) if precision.margin(r["scores"]) < 0.5]
    before = [dict(r) for r in fast]
    done = precision.rescore_near_ties(fast, rescore, 0.5)
    assert asked == ([near] if near else []) and done["rescored"] == len(near)
    for i, (got, want, old) in enumerate(zip(fast, exact, before)):
        if i in near:  # float32's own scores, whatever the batch they were scored in
            assert got["pred"] == want["pred"] and got["scores"] == pytest.approx(want["scores"], abs=1e-4)
        else:
            assert got == old
    assert done["rescore_changed"] == sum(fast[i]["pred"] != before[i]["pred"] for i in near)
    shifts = [abs(a - b) for i in near for a, b in zip(fast[i]["scores"], before[i]["scores"])]
    assert done["rescore_max_shift"] == pytest.approx(max(shifts, default=0.0))
    # a margin no pair is inside re-scores nothing; one every pair is inside gives float32's predictions
    assert precision.rescore_near_ties(before, rescore, 0.0)["rescored"] == 0
    everything = [dict(r) for r in before]
    precision.rescore_near_ties(everything, rescore, math.inf)
    assert [r["pred"] for r in everything] == [r["pred"] for r in exact]


@pytest.mark.model
def test_a_run_with_rounded_products_says_what_rescoring_did(tmp_path):
    run_main("hpcnli.submit", "--config", SMOKE, "--run-dir", tmp_path / "run", "eval.matmul=bf16")
    paths = RunPaths(tmp_path / "run")
    shards = [ShardMetrics.read(paths.shard_metrics(m, s)) for m in MODELS for s in range(2)]
    assert all(s.matmul == "bf16" and s.rescore_margin == 0.1 for s in shards)
    for s in shards:  # a pair left with rounded scores was outside the margin: those inside were re-scored
        rows = [json.loads(line) for line in paths.shard_predictions(s.model, s.shard).read_text().splitlines()]
        assert s.rescored is not None and s.rescored >= sum(precision.margin(r["scores"]) < 0.1 for r in rows)
    report = paths.report_md.read_text()
    total = sum(s.rescored or 0 for s in shards)
    assert f"the {total:,} of 48 pairs whose two best scores were within 0.1 nats were scored again" in report
    assert "evaluation products: bf16 (float32 weights) in 4 shard(s)" in report


# ---------------------------------------------------------------- eval tasks' own resources


def _sbatch(cfg, stage: str) -> dict[str, str]:
    text = executor_for(cfg, RunPaths("/runs/r"), stage)._make_submission_file_text("C", "u")
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", text, re.M))


def test_eval_tasks_ask_for_their_own_plan_not_the_fine_tunes(tmp_path):
    gpu_job = [
        "resources.gpus_per_node=1",
        "resources.mem_gb=64",
        "resources.cpus_per_task=8",
        "resources.time_min=120",
        f"output_root={tmp_path}",  # no earlier run: no throughput to size the time from
    ]
    cfg, task = eval_resources.plan(load_config(SMOKE, gpu_job), 11 * GiB, 9824)
    assert task == {
        "mem_gb": math.ceil((1 + 11) * eval_resources.HOST_MARGIN),  # the process and one host copy of the weights
        "cpus_per_task": eval_resources.EVAL_GPU_CPUS,
        "time_min": 120,
        "time_from": "resources.time_min: no earlier eval shard of this model in output_root",
    }
    fine_tune, shard = _sbatch(cfg, "finetune"), _sbatch(cfg, "eval-base")
    assert (fine_tune["mem"], fine_tune["cpus-per-task"]) == ("64G", "8")
    assert (shard["mem"], shard["cpus-per-task"], shard["time"]) == ("15G", "4", "120")
    # on CPUs the shard scores with them, and its batches were sized to resources.mem_gb
    _, task = eval_resources.plan(
        load_config(SMOKE, ["resources.mem_gb=24", "resources.cpus_per_task=2"]), 0.5 * GiB, 48
    )
    assert (task["mem_gb"], task["cpus_per_task"]) == (24, 2)
    # what the config sets is kept
    set_, task = eval_resources.plan(load_config(SMOKE, [*gpu_job, "resources.eval_mem_gb=40"]), 11 * GiB, 9824)
    assert task["mem_gb"] == 40 and _sbatch(set_, "eval-finetuned")["mem"] == "40G"


def test_eval_time_comes_from_the_newest_shards_throughput(smoke_run):
    cfg = load_config(smoke_run.config, ["resources.time_min=600"])
    shards = [ShardMetrics.read(smoke_run.shard_metrics(m, s)) for m in MODELS for s in range(2)]
    newest = max(shards, key=lambda s: smoke_run.shard_metrics(s.model, s.shard).stat().st_mtime)
    rate = newest.steady_examples_per_s or newest.examples_per_s
    minutes, why = eval_resources.eval_time_min(cfg, 200_000)
    expected = math.ceil((200_000 / rate + newest.model_load_s + newest.warmup_s) * eval_resources.TIME_SAFETY / 60)
    assert minutes == min(600, max(eval_resources.EVAL_MIN_TIME_MIN, expected))
    assert f"(run {smoke_run.name})" in why
    assert eval_resources.eval_time_min(cfg, 10)[0] == eval_resources.EVAL_MIN_TIME_MIN  # never below the floor
    gpu = load_config(smoke_run.config, ["resources.gpus_per_node=1"])
    assert eval_resources.eval_time_min(gpu, 10)[0] == gpu.resources.time_min  # a CPU's rate says nothing of a GPU


# ---------------------------------------------------------------- one unit, what a card must have free


def test_gpu_mem_gb_is_what_the_card_must_have_free():
    cfg = load_config(SMOKE, ["resources.gpus_per_node=1", "resources.gpu_mem_gb=60"])
    limit, key = memory_plan.ceiling(cfg)
    assert limit == (60 * GiB - GPU_CONTEXT_BYTES) / GPU_RESERVED_FACTOR and key == "resources.gpu_mem_gb"
    text = memory_plan._allowance(limit, key)
    assert text.startswith(f"{limit / GiB:.1f} GiB its tensors may use (resources.gpu_mem_gb 60 GiB free on the card")
    plan = {
        "ceiling_bytes": limit,
        "ceiling_key": key,
        "stages": {"eval": {"batch": "b", "total_bytes": 10 * GiB, "parts": {"weights": 10 * GiB}}},
    }
    line = memory_plan.lines(plan)[-1]
    needs = 10 * GPU_RESERVED_FACTOR + GPU_CONTEXT_BYTES / GiB
    assert f"needs {needs:.2f} GiB free on its GPU" in line and "GB " not in line


def test_a_gpu_stages_memory_headline_is_what_the_card_had_in_use():
    memory = {
        "gpu_peak_allocated_mb": 40 * 1024,
        "gpu_peak_reserved_mb": 44 * 1024,
        "gpu_context_mb": 512,
        "gpu_peak_in_use_mb": 44.5 * 1024,
    }
    estimate = {"total_bytes": 41 * GiB, "device_bytes": 41 * GiB * GPU_RESERVED_FACTOR + GPU_CONTEXT_BYTES}
    text = _mb(memory, estimate)
    assert text.startswith("GPU in use 44.5 GiB (reserved 44.0 + CUDA context 0.5), allocated 40.0 GiB")
    assert f"planned {estimate['device_bytes'] / GiB:,.1f} GiB, tensors 41.0 GiB" in text
    cpu = _mb({"process_peak_rss_mb": 1500.0, "work_peak_rss_mb": 700.0}, {"total_bytes": 600 * 2**20})
    assert cpu == "process peak RSS 1,500 MiB, the model and its work 700 MiB (no GPU); planned 600 MiB"
