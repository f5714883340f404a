"""Issue 12: batches by tokens, the memory plan before anything is queued, eval weights made once per run."""

from __future__ import annotations

import itertools
import json
import random
import subprocess

import pytest
import torch

from conftest import ROOT, SNLI, run_cli, run_main
from hpcnli.config import load_config
from hpcnli.data import nli
from hpcnli.data.batching import BatchRule, batch_tokens, global_batches
from hpcnli.io import read_json, read_jsonl
from hpcnli.model import footprint, loading
from hpcnli.records import TestManifest
from hpcnli.run.paths import RunPaths
from hpcnli.scoring.engine import predict
from hpcnli.scoring.prompts import tokenize_prompts

needs_snli = pytest.mark.skipif(not (SNLI / "test.jsonl").is_file(), reason="../shared/snli not present")
DEFAULT = ROOT / "jobs" / "default.yaml"
SMOKE = ROOT / "jobs" / "smoke.yaml"


# ---------------------------------------------------------------- cutting batches


@pytest.mark.parametrize("ways", [1, 2, 3])
@pytest.mark.parametrize("parts", [1, 2])
def test_token_batches_never_exceed_the_budget_and_hold_every_row_once(ways, parts):
    rng = random.Random(ways * 10 + parts)
    n, budget = 500, 300
    widths = [
        tuple(rng.randint(1, 150 // parts) for _ in range(parts)) if parts > 1 else rng.randint(1, 150)
        for _ in range(n)
    ]
    order = sorted(range(n), key=lambda i: widths[i] if parts == 1 else widths[i][-1])
    batches = BatchRule(tokens=budget, ways=ways).cut(order, widths)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert [i for b in batches for i in b] == order  # consecutive, in the given order
    for b in batches:
        assert batch_tokens(b, widths, ways) <= budget
        for r in range(ways):  # each process's share, padded on its own
            assert not b[r::ways] or batch_tokens(b[r::ways], widths) <= budget
    # greedy: a batch is closed only when the next row would not fit
    for b, nxt in itertools.pairwise(batches):
        assert batch_tokens(b + [nxt[0]], widths, ways) > budget
    with pytest.raises(ValueError, match="does not fit"):
        BatchRule(tokens=10).cut([0], [11])


def test_fixed_rule_cuts_as_before():
    order = list(range(23))
    assert BatchRule(rows=5).cut(order, [1] * 23) == [order[i : i + 5] for i in range(0, 23, 5)]
    assert BatchRule(rows=5).times(8).rows == 40 and BatchRule(tokens=100).times(8).tokens == 800


@pytest.mark.parametrize("processes", [1, 2])
def test_training_epochs_by_tokens_cover_every_pair_within_budget(processes):
    rng = random.Random(processes)
    lengths = [rng.randint(20, 120) for _ in range(700)]
    rule = BatchRule(tokens=512, ways=processes)
    for epoch in range(2):
        batches = global_batches(lengths, rule, seed=1, epoch=epoch, by_length=True)
        seen = [i for b in batches for i in b]
        assert (
            len(seen) == len(set(seen)) and len(seen) >= len(lengths) - processes
        )  # only a too-small last batch dropped
        for b in batches:
            for r in range(processes):
                assert batch_tokens(b[r::processes], lengths) <= 512
        assert batches == global_batches(lengths, rule, seed=1, epoch=epoch, by_length=True)  # resumable
        # length-grouped: far less padding than the same budget over shuffled rows
        pad = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
        plain = global_batches(lengths, rule, seed=1, epoch=epoch, by_length=False)
        assert pad < 0.5 * sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in plain)


# ---------------------------------------------------------------- scoring by tokens


@pytest.fixture(scope="module")
def scored_model():
    """The smoke config's tiny model (SmolLM2's architecture and tokenizer): how batches are cut and scored does not
    depend on the weights' size."""
    cfg = load_config(SMOKE, ["model.dtype=float32"])
    model = loading.load_eval_model(cfg, None).eval()
    return cfg, model, loading.load_tokenizer(cfg)


@pytest.mark.model
@pytest.mark.parametrize("share_prefix", [True, False])
def test_token_budget_scores_like_fixed_batches_and_never_exceeds_it(scored_model, share_prefix):
    """Every forward pass holds at most batch_tokens tokens (rows x (cached + new columns)), every pair is
    scored once, and the predictions are those of fixed-count batches."""
    _, model, tok = scored_model
    examples = nli.load_split(load_config(SMOKE, ["data.synthetic_test_size=90"]), "test").examples
    budget = 300
    fixed = load_config(SMOKE, ["model.dtype=float32", "eval.batch_size=8", f"eval.share_prefix={share_prefix}"])
    by_tokens = load_config(
        DEFAULT, ["model.dtype=float32", f"eval.batch_tokens={budget}", f"eval.share_prefix={share_prefix}"]
    )
    seen = []

    def record(module, args, kwargs):
        ids = kwargs["input_ids"]
        cache = kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        seen.append(ids.shape[0] * (ids.shape[1] + cached))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        rows = predict(model, tok, by_tokens, examples)
    finally:
        handle.remove()
    assert seen and max(seen) <= budget
    assert max(seen) > budget * 0.6  # the budget is used, not a few pairs at a time
    assert [r["id"] for r in rows] == [e["id"] for e in examples]
    ref = predict(model, tok, fixed, examples)
    assert [r["pred"] for r in rows] == [r["pred"] for r in ref]
    assert torch.allclose(
        torch.tensor([r["scores"] for r in rows]), torch.tensor([r["scores"] for r in ref]), atol=1e-4
    )


# ---------------------------------------------------------------- the memory plan


def plan(tmp_path, *overrides, check=True):
    return run_main(
        "hpcnli.submit", "--config", DEFAULT, "--plan-only", "--run-dir", tmp_path / "run", *overrides, check=check
    )


@pytest.mark.model
def test_auto_budgets_are_chosen_to_fit_and_written_into_the_plan(tmp_path):
    proc = plan(
        tmp_path,
        "train.batch_tokens=auto",
        "eval.batch_tokens=auto",
        "train.gradient_checkpointing=auto",
        "resources.mem_gb=4",
    )
    paths = RunPaths(tmp_path / "run")
    cfg = load_config(paths.config)
    memory = read_json(paths.memory_plan)
    assert isinstance(cfg.train.batch_tokens, int) and isinstance(cfg.eval.batch_tokens, int)
    assert cfg.train.gradient_checkpointing is False  # 1.5 GiB holds batches without it
    # a CPU stage's tensors may use mem_gb less 1 GiB for the process, halved for what glibc keeps resident
    assert memory["ceiling_bytes"] == (4 - 1) / footprint.CPU_RESIDENT_FACTOR * footprint.GiB
    for stage in ("finetune", "eval"):
        assert memory["stages"][stage]["total_bytes"] <= memory["ceiling_bytes"]
    assert "memory plan" in proc.stdout and "finetune: batches of <=" in proc.stdout
    # a smaller ceiling: smaller budgets
    plan(tmp_path / "small", "train.batch_tokens=auto", "eval.batch_tokens=auto", "resources.mem_gb=3")
    small = load_config(RunPaths(tmp_path / "small" / "run").config)
    assert small.train.batch_tokens < cfg.train.batch_tokens and small.eval.batch_tokens < cfg.eval.batch_tokens


@pytest.mark.model
def test_checkpointing_is_switched_on_only_when_needed(tmp_path):
    """A fixed batch too big for the memory: "auto" turns gradient checkpointing on, which cuts activations."""
    plan(tmp_path / "fits", "train.gradient_checkpointing=auto", "train.batch_size=16")
    assert load_config(RunPaths(tmp_path / "fits" / "run").config).train.gradient_checkpointing is False
    plan(tmp_path / "tight", "train.gradient_checkpointing=auto", "train.batch_size=480", "resources.mem_gb=12")
    paths = RunPaths(tmp_path / "tight" / "run")
    memory = read_json(paths.memory_plan)
    assert load_config(paths.config).train.gradient_checkpointing is True
    assert memory["stages"]["finetune"]["total_bytes"] <= memory["ceiling_bytes"]
    cfg = load_config(paths.config)  # one batch of all 480 training pairs, padded to the longest
    lengths = map(len, tokenize_prompts(loading.load_tokenizer(cfg), cfg, nli.load_split(cfg, "train").examples))
    assert memory["worst_fixed_train_batch"] == 480 * max(lengths)


@pytest.mark.model
@pytest.mark.parametrize(
    "executor, overrides, key",
    [
        ("local", ["resources.gpus_per_node=1", "resources.gpu_mem_gb=0.5"], "resources.gpu_mem_gb"),
        ("local", ["resources.mem_gb=2", "train.batch_size=480"], "resources.mem_gb"),
    ],
)
def test_plan_over_the_memory_ceiling_is_refused_before_anything_runs(tmp_path, executor, overrides, key):
    proc = run_main(
        "hpcnli.submit",
        "--config",
        DEFAULT,
        "--executor",
        executor,
        "--run-dir",
        tmp_path / "run",
        *overrides,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{key}: the " in proc.stderr and "over the" in proc.stderr and "lower" in proc.stderr
    assert "GiB" in proc.stderr and not (tmp_path / "run").exists()  # nothing planned, nothing run


@pytest.mark.model
@pytest.mark.parametrize("gpus", [1, 2])
def test_auto_training_batches_on_gpus_need_a_ceiling(tmp_path, gpus):
    """The batches a run trains on are fixed when it is planned: each process (and a requeue onto another GPU type)
    would size "auto" from its own GPU's free memory, so the plan asks for resources.gpu_mem_gb instead."""
    for auto in ("train.batch_tokens=auto", "train.gradient_checkpointing=auto"):
        proc = plan(tmp_path, f"resources.gpus_per_node={gpus}", auto, check=False)
        assert (
            proc.returncode == 2
            and "resources.gpu_mem_gb: train.batch_tokens or train.gradient_checkpointing is "
            f"'auto' on GPUs ({gpus} training process(es)); set resources.gpu_mem_gb"
            in proc.stderr
        ), proc.stderr
        assert not (tmp_path / "run").exists()
    plan(tmp_path / "fixed", f"resources.gpus_per_node={gpus}", "resources.gpu_mem_gb=40", "train.batch_tokens=auto")
    memory = read_json(RunPaths(tmp_path / "fixed" / "run").memory_plan)
    assert isinstance(load_config(RunPaths(tmp_path / "fixed" / "run").config).train.batch_tokens, int)
    assert memory["stages"]["finetune"]["tokens_per_batch"] > 0


def test_plan_over_gpu_mem_is_refused_before_slurm_sees_it(tmp_path, slurm_cluster):
    def jobs() -> list[str]:  # this test's jobs alone: other tests may submit beside it
        out = subprocess.run(
            ["sacct", "-a", "-X", "-n", "-P", "--format=JobID,SubmitLine", "--starttime=now-1days"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line for line in out.splitlines() if str(tmp_path) in line]

    proc = run_main(
        "hpcnli.submit",
        "--config",
        DEFAULT,
        "--partition",
        "debug",
        "--run-dir",
        tmp_path / "run",
        "resources.mem_gb=2",
        "eval.batch_tokens=100000",
        check=False,
    )
    assert (
        proc.returncode == 2 and "resources.mem_gb: the " in proc.stderr and "stage's tensors need about" in proc.stderr
    ), proc.stderr
    assert jobs() == [] and not (tmp_path / "run").exists()


@pytest.mark.real_model
def test_memory_estimate_is_within_25_percent_of_the_measured_peak(tmp_path):
    """Each stage's estimate (planned from the model's configuration alone) against the resident peak of its
    work on this CPU: the peak since the model was loaded, less the process before it. glibc is told to return
    freed blocks at once (its own environment knob), so that resident memory is what the tensors hold. The
    stages run as the executor runs them; of the two eval tasks, the fine-tuned model's (the adapter merged
    in), as the base model's is the same stage on the same shapes (their peaks were 1,567 and 1,560 MiB here)."""
    paths = RunPaths(tmp_path / "run")
    run_main(
        "hpcnli.submit",
        "--config",
        DEFAULT,
        "--plan-only",
        "--run-dir",
        paths.run_dir,
        "data.synthetic_train_size=240",
        "data.synthetic_test_size=480",  # with 120 pairs the eval peak measured 1,109 MiB: fewer miss the largest batch
        "train.max_steps=3",
        "train.batch_tokens=2048",
        "eval.batch_tokens=2048",
        "eval.num_shards=1",
    )
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    run_cli("hpcnli.finetune", paths.run_dir, env=env)
    run_cli("hpcnli.evaluate", paths.run_dir, "--model", "finetuned", "--shard", "0", env=env)
    checked = []
    for metrics in [read_json(paths.train_metrics), read_json(paths.shard_metrics("finetuned", 0))]:
        estimate = metrics["memory_estimate"]["total_bytes"] / 2**20
        measured = metrics["memory"]["work_peak_rss_mb"]
        checked.append((round(estimate), round(measured)))
        assert abs(estimate - measured) <= 0.25 * measured, checked
    assert min(m for _, m in checked) > 600  # the work, not the interpreter, is what was measured


# ---------------------------------------------------------------- eval weights made once per run


def test_eval_weights_are_made_once_and_score_as_a_fresh_load(smoke_run):
    cfg = load_config(smoke_run.config)
    for model in ("base", "finetuned"):
        sources = [read_json(smoke_run.shard_metrics(model, s))["weights_from"] for s in range(cfg.eval.num_shards)]
        assert sources == ["written"] + ["read"] * (cfg.eval.num_shards - 1), sources
    assert not smoke_run.eval_weights_root.exists()  # the complete report removed them
    # the shard that read the weights back scored exactly as a model quantized and dequantized afresh
    model = loading.load_eval_model(cfg, smoke_run.adapter).eval()
    manifest = TestManifest.read(smoke_run.test_manifest)
    from hpcnli.evaluate import shard_examples

    fresh = predict(model, loading.load_tokenizer(cfg), cfg, shard_examples(cfg, manifest, 1))
    assert fresh == read_jsonl(smoke_run.shard_predictions("finetuned", 1))


def test_stale_eval_weights_are_not_reused(smoke_run, tmp_path):
    """Weights written for another adapter are made again, not read."""
    from hpcnli.evaluate import eval_model

    run = tmp_path / "copy"
    import shutil

    shutil.copytree(smoke_run.run_dir, run)
    paths = RunPaths(run)
    cfg = load_config(paths.config)
    _, source, _ = eval_model(cfg, paths, "finetuned")
    assert source == "written"
    assert eval_model(cfg, paths, "finetuned")[1] == "read"
    marker = paths.eval_weights("finetuned") / "COMPLETE"
    stale = json.loads(marker.read_text())
    stale["adapter_sha256"] = "0" * 64
    marker.write_text(json.dumps(stale))
    assert eval_model(cfg, paths, "finetuned")[1] == "written"


# ---------------------------------------------------------------- the shipped phi-2 plan


@pytest.fixture(scope="module")
def phi2_config_dir(tmp_path_factory):
    """microsoft/phi-2's configuration (2.78B parameters; bench/gpu_check.sh builds the same model with random
    weights on a GPU) with SmolLM2's tokenizer. Planning reads config.json alone; the weights file only has to
    exist, so it holds a placeholder (bench.phi2_plan writes it)."""
    from bench.phi2_plan import phi2_dir

    return phi2_dir(tmp_path_factory.mktemp("phi2"), loading.load_tokenizer(load_config(DEFAULT)))


@pytest.mark.model
@pytest.mark.parametrize(
    "config, checkpointing", [("phi2_snli_qlora.yaml", False), ("phi2_snli_seed_recipe.yaml", True)]
)
def test_the_phi2_configs_plan_to_fit_an_80gb_card(phi2_config_dir, tmp_path, config, checkpointing):
    proc = run_main(
        "hpcnli.submit",
        "--config",
        ROOT / "jobs" / config,
        "--plan-only",
        "--run-dir",
        tmp_path / "run",
        f"model.name_or_path={phi2_config_dir}",
        "data.train=synthetic",
        "data.test=synthetic",
    )
    paths = RunPaths(tmp_path / "run")
    cfg, memory = load_config(paths.config), read_json(paths.memory_plan)
    assert memory["shape"]["quantizable"] + memory["shape"]["other"] > 2.7e9  # phi-2's 2.78B parameters
    assert cfg.train.gradient_checkpointing is checkpointing
    for stage in ("finetune", "eval"):  # what the card must have free, tensors + allocator reserve + context
        est = memory["stages"][stage]
        assert est["device_bytes"] == est["total_bytes"] * footprint.GPU_RESERVED_FACTOR + footprint.GPU_CONTEXT_BYTES
        assert est["device_bytes"] <= cfg.resources.gpu_mem_gb * footprint.GiB < 79 * footprint.GiB
    if config == "phi2_snli_qlora.yaml":  # sized from memory: far more than the seed's 4 pairs per step
        assert cfg.train.batch_tokens >= 4096 and cfg.eval.batch_tokens >= 4096
        assert memory["stages"]["finetune"]["total_bytes"] > 20 * footprint.GiB  # it uses the card
    print(proc.stdout)


def test_budget_for_rows_holds_that_many_pairs_on_average():
    from hpcnli.data.batching import budget_for_rows

    rng = random.Random(5)
    lengths = sorted(rng.randint(20, 90) for _ in range(400))
    order = list(range(400))

    def cut(n):
        return BatchRule(tokens=n).cut(order, lengths)

    budget = budget_for_rows(16, cut, 90)
    mean = lambda n: 400 / len(cut(n))  # noqa: E731
    assert mean(budget) >= 16 > mean(budget - 1)
