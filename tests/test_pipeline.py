"""The whole pipeline, end to end on CPU, with the real packaged model and the local executor."""

import json

import pytest
import torch

from conftest import TEST_UMASK, copy_run, run_main
from hpcnli.config import load_config
from hpcnli.io import read_jsonl
from hpcnli.run.paths import MODELS, RunPaths


def test_output_tree(smoke_run):
    p = smoke_run
    for f in (
        p.config,
        p.test_manifest,
        p.memory_plan,
        p.train_metrics,
        p.report_md,
        p.report_json,
        p.adapter / "adapter_config.json",
        p.adapter / "adapter_model.safetensors",
        p.plot("accuracy"),
        p.plot("confusion"),
        p.plot("loss"),
        p.plot("shards"),
        p.run_dir.parent / "report.md",
    ):
        assert f.is_file(), f
    assert "[`smoke`](smoke/report.md)" in (p.run_dir.parent / "report.md").read_text()  # the output_root's index
    cfg = load_config(p.config)
    for m in MODELS:
        for s in range(cfg.eval.num_shards):
            assert p.shard_predictions(m, s).is_file() and p.shard_metrics(m, s).is_file()


def test_shards_cover_test_set_once(smoke_run):
    manifest = json.loads(smoke_run.test_manifest.read_text())
    for m in MODELS:
        ids = [r["id"] for s in range(2) for r in read_jsonl(smoke_run.shard_predictions(m, s))]
        assert ids == manifest["ids"]  # disjoint, complete, in order


def test_report_figures(smoke_run):
    rep = json.loads(smoke_run.report_json.read_text())
    assert rep["complete"] and rep["schema_version"] == 1
    preds = {m: {r["id"]: r for s in range(2) for r in read_jsonl(smoke_run.shard_predictions(m, s))} for m in MODELS}
    for m in MODELS:
        rows = preds[m].values()
        correct = sum(r["pred"] == r["gold"] for r in rows)
        assert rep["models"][m]["correct"] == correct
        assert rep["models"][m]["accuracy"] == pytest.approx(correct / 24)
    fixed = sum(
        preds["base"][i]["pred"] != g and preds["finetuned"][i]["pred"] == g
        for i, g in ((i, r["gold"]) for i, r in preds["base"].items())
    )
    assert rep["comparison"]["fixed"] == fixed
    md = smoke_run.report_md.read_text()
    assert "Synthetic data" in md and f"{100 * rep['models']['base']['accuracy']:.1f}%" in md


def test_parameter_counts_against_unquantized_model(smoke_run):
    """4-bit packing halves stored elements; the report must count the real weights."""
    from transformers import AutoModelForCausalLM

    from hpcnli.model import loading

    cfg = load_config(smoke_run.config)
    where, _ = loading.resolve_model(cfg.model)
    full = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16)
    n_full = sum(p.numel() for p in full.parameters())
    lora = sum(
        cfg.lora.r * (mod.in_features + mod.out_features)
        for name, mod in full.named_modules()
        if name.rsplit(".", 1)[-1] in cfg.lora.target_modules
    )
    params = json.loads(smoke_run.train_metrics.read_text())["parameters"]
    assert params["trainable"] == lora
    assert params["total"] == n_full + lora
    assert n_full == 3_219_776  # the smoke config's tiny SmolLM2 (49,152 x 64 embeddings, 2 layers), not a packed count


def test_results_index_stays_in_output_root(smoke_run, tmp_path):
    """A run outside output_root (--run-dir, or a copy) writes no index beside itself, and the index is
    never written over a report.md that hpcnli did not write."""
    mine = tmp_path / "report.md"
    mine.write_text("my own notes\n")
    p = copy_run(smoke_run, tmp_path / "copy")
    run_main("hpcnli.reduce", p.run_dir)
    assert mine.read_text() == "my own notes\n"
    # a run planned in its output_root (a copy whose provenance says so, to leave the shared smoke run as it is)
    q = copy_run(smoke_run, tmp_path / "root" / "smoke")
    provenance = json.loads(q.provenance.read_text())
    q.provenance.write_text(json.dumps({**provenance, "output_root": str(tmp_path / "root")}))
    index = tmp_path / "root" / "report.md"
    index.write_text("a user's file now\n")
    run_main("hpcnli.reduce", q.run_dir)
    assert index.read_text() == "a user's file now\n"
    index.unlink()
    run_main("hpcnli.reduce", q.run_dir)
    assert "[`smoke`](smoke/report.md)" in index.read_text()


def test_outputs_follow_the_umask(smoke_run):
    """Files are readable by the group and others as the umask allows (mkstemp alone would make them 0600)."""
    for f in (
        smoke_run.report_json,
        smoke_run.report_md,
        smoke_run.shard_predictions("base", 0),
        smoke_run.config,
        smoke_run.memory_plan,
        smoke_run.adapter / "adapter_model.safetensors",
    ):
        assert f.stat().st_mode & 0o777 == 0o666 & ~TEST_UMASK, f


def test_reducer_refuses_missing_shard(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "missing")
    p.shard_predictions("finetuned", 1).unlink()
    proc = run_main("hpcnli.reduce", p.run_dir, check=False)
    assert proc.returncode == 1
    assert "finetuned shard 1 (12 examples): missing" in proc.stderr
    rep = json.loads(p.report_json.read_text())
    assert rep["complete"] is False and rep["missing_examples"] == 12
    assert "INCOMPLETE" in p.report_md.read_text()


def test_reducer_refuses_duplicated_rows(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "dup")
    rows0 = p.shard_predictions("base", 0).read_text().splitlines(keepends=True)
    with open(p.shard_predictions("base", 1), "a") as f:
        f.write(rows0[0])  # an example of shard 0 predicted again in shard 1
    proc = run_main("hpcnli.reduce", p.run_dir, check=False)
    assert proc.returncode == 1
    assert "base shard 1" in proc.stderr and "belong to no example of this shard" in proc.stderr
    with open(p.shard_predictions("base", 0), "a") as f:
        f.write(rows0[0])  # the same example twice in one shard
    proc = run_main("hpcnli.reduce", p.run_dir, check=False)
    assert "base shard 0 (12 examples): 1 duplicated example id(s)" in proc.stderr


def test_resume_redoes_only_the_missing_shard(smoke_run, tmp_path):
    p = copy_run(smoke_run, tmp_path / "resume")
    before = {m: [p.shard_predictions(m, s).read_text() for s in range(2)] for m in MODELS}
    kept = p.shard_metrics("base", 0).read_text()
    p.shard_predictions("base", 1).write_text(before["base"][1][:50])  # truncated mid-row
    proc = run_main("hpcnli.submit", "--resume", p.run_dir)
    assert "finetune=done, base shards [1], finetuned shards []" in proc.stdout
    assert p.shard_metrics("base", 0).read_text() == kept  # not recomputed
    after = {m: [p.shard_predictions(m, s).read_text() for s in range(2)] for m in MODELS}
    assert after == before  # identical predictions to the undisturbed run
    assert json.loads(p.report_json.read_text())["complete"]


@pytest.mark.model
def test_head_scoring_end_to_end(tmp_path):
    """task.scoring=head: a 3-way head (random before training) read through pipeline("text-classification")."""
    run_dir = tmp_path / "head"
    run_main(
        "hpcnli.submit", "--config", "jobs/smoke.yaml", "--executor", "local", "--run-dir", run_dir, "task.scoring=head"
    )
    p = RunPaths(run_dir)
    rep = json.loads(p.report_json.read_text())
    assert rep["complete"] and rep["config"]["task"]["scoring"] == "head"
    for m in MODELS:
        rows = [r for s in range(2) for r in read_jsonl(p.shard_predictions(m, s))]
        assert len(rows) == 24 and all(len(r["scores"]) == 3 for r in rows)
        assert rep["models"][m]["correct"] == sum(r["pred"] == r["gold"] for r in rows)
    cfg = load_config(p.config)
    params = json.loads(p.train_metrics.read_text())["parameters"]
    hidden, kv, layers = 64, 32, 2  # the smoke config's tiny SmolLM2: 4 heads and 2 key/value heads of 16
    lora = layers * cfg.lora.r * ((hidden + hidden) * 2 + (hidden + kv) * 2)  # q, o: 64->64; k, v: 64->32
    assert params["trainable"] == lora + 3 * hidden  # LoRA plus the trained copy of the 3-way head
