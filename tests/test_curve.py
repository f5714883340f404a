"""Learning curves (train.eval_every): held-out points during training on real runs of the smoke config, the best
step and the adapter kept, early stopping, TensorBoard event files, a curve that survives SIGTERM and resume, and
held-out scores equal to the evaluation stage's for the same adapter and pairs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, copy_run, made_once, run_main
from hpcnli.config import load_config
from hpcnli.config.checks import ConfigError
from hpcnli.data.nli import load_split
from hpcnli.model import loading
from hpcnli.records import TrainMetrics
from hpcnli.run import memory_plan
from hpcnli.run.paths import RunPaths
from hpcnli.scoring.engine import predict
from hpcnli.scoring.heldout import curve_pairs

SMOKE = ROOT / "jobs/smoke.yaml"
CURVE = ["data.holdout=16", "train.eval_every=2", "model.dtype=float32", "quantization.compute_dtype=float32"]


def scalars(run: RunPaths) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files, as TensorBoard reads them (purged steps gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tensorboard))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="session")
def best_run(tmp_path_factory):
    """A complete local smoke run with held-out evaluation, keep: best and TensorBoard."""

    def make(root):
        run_main(
            "hpcnli.submit",
            "--config",
            SMOKE,
            "--run-dir",
            root / "best",
            *CURVE,
            "train.max_steps=6",
            "train.keep=best",
            "train.log_with=tensorboard",
            "train.log_every=1",
            "eval.num_shards=1",  # the curve is under test, not the sharding
        )

    return RunPaths(made_once(tmp_path_factory, "curve", make) / "best")


@pytest.mark.model
def test_the_curve_its_best_step_and_the_adapter_kept(best_run):
    m = TrainMetrics.read(best_run.train_metrics)
    assert [p["step"] for p in m.heldout_curve] == [0, 2, 4, 6] and m.heldout_pairs == 16
    top = max(p["accuracy"] for p in m.heldout_curve)
    best = next(p for p in m.heldout_curve if p["step"] == m.best_step)
    assert best["accuracy"] == top and m.kept == "best" and m.adapter_step == m.best_step
    assert all(p["loss"] >= best["loss"] - 1e-3 for p in m.heldout_curve if p["accuracy"] == top)
    assert m.ended == "train.max_steps 6 reached"
    assert all(p["ci_low"] <= p["accuracy"] <= p["ci_high"] and p["pairs"] == 16 for p in m.heldout_curve)
    assert 0 < m.heldout_s == pytest.approx(sum(p["seconds"] for p in m.heldout_curve))
    assert not best_run.best_adapters.exists() and not best_run.checkpoints.exists()
    report = best_run.report_md.read_text()
    assert "## Learning curve (held-out pairs)" in report and f"**Best: step {m.best_step}**" in report
    assert f"the **best** step's, step {m.best_step}" in report and best_run.plot("loss").is_file()


@pytest.mark.model
@pytest.mark.parametrize("weights,tolerance", [("dequantized", 1e-3), ("4bit", 0.02)])
def test_held_out_scores_are_the_evaluation_stages_for_the_kept_adapter(best_run, weights, tolerance):
    """The evaluation stage's model for the kept adapter (full output layer) on the curve's pairs gives the best
    point's accuracy and loss: the adapter scored is the best step's, and the curve scores as the stage does.
    The default, dequantized weights with the adapter merged, is the training model's arithmetic (float32
    here). eval.weights 4bit, unmerged, runs bitsandbytes' packed CPU kernel on AVX512-BF16 CPUs in evaluation
    mode, which training never does (hpcnli.scoring.heldout.scoring_mode): 0.011 nats of mean loss apart on
    these pairs, predictions the same."""
    cfg = load_config(best_run.config, [f"eval.weights={weights}"])
    pairs = curve_pairs(load_split(cfg, "holdout").examples, cfg.train.eval_pairs, cfg.data.subset_seed)
    model = loading.load_eval_model(cfg, best_run.adapter).eval()
    rows = predict(model, loading.load_tokenizer(cfg), cfg, pairs)
    m = TrainMetrics.read(best_run.train_metrics)
    best = next(p for p in m.heldout_curve if p["step"] == m.best_step)
    assert sum(r["pred"] == r["gold"] for r in rows) / len(rows) == best["accuracy"]
    # the stage's scores are over the vocabulary; renormalized over the label words they are the curve's
    loss = sum(-(r["scores"][r["gold"]] - torch.logsumexp(torch.tensor(r["scores"]), 0).item()) for r in rows)
    assert loss / len(rows) == pytest.approx(best["loss"], abs=tolerance)


@pytest.mark.model
def test_tensorboard_has_the_loss_the_learning_rate_and_the_curve(best_run):
    got = scalars(best_run)
    m = TrainMetrics.read(best_run.train_metrics)
    assert [s for s, _ in got["train/loss"]] == [r["step"] for r in m.loss_curve] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got["train/loss"]] == pytest.approx([r["loss"] for r in m.loss_curve], rel=1e-5)
    assert [s for s, _ in got["train/lr"]] == [1, 2, 3, 4, 5, 6]
    assert got["heldout/accuracy"] == [(p["step"], pytest.approx(p["accuracy"])) for p in m.heldout_curve]


def _finetune(run: RunPaths) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpcnli.finetune", str(run.run_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.model
def test_the_curve_survives_sigterm_and_resume(tmp_path):
    """SIGTERM mid-run checkpoints; the resumed fine-tune neither loses nor repeats a point, in
    train_metrics.json and in TensorBoard (the same event files: steps redone replace theirs). And scoring the
    curve changes nothing in training: each step's loss is the one of a fine-tune without a curve."""
    plain = [*CURVE[:1], *CURVE[2:], "train.max_steps=24", "train.checkpoint_every=4", "train.log_every=1"]
    plain += ["data.synthetic_train_size=64"]
    extra = [*plain, "train.eval_every=3", "train.log_with=tensorboard"]
    runs = {}
    for name, overrides in (("plain", plain), ("whole", extra), ("stopped", extra)):
        runs[name] = RunPaths(tmp_path / name)
        run_main("hpcnli.submit", "--config", SMOKE, "--run-dir", runs[name].run_dir, "--plan-only", *overrides)
    assert _finetune(runs["plain"]).wait(timeout=600) == 0
    assert _finetune(runs["whole"]).wait(timeout=600) == 0

    proc, seen = _finetune(runs["stopped"]), []
    assert proc.stdout is not None
    for line in proc.stdout:  # stop it after its point at step 9, between checkpoints 8 and 12
        seen.append(line)
        if "held-out at step 9" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "SIGTERM: stopped after step" in out, out[-2000:]
    assert not runs["stopped"].train_metrics.exists()
    assert _finetune(runs["stopped"]).wait(timeout=600) == 0

    whole, stopped = (TrainMetrics.read(r.train_metrics) for r in (runs["whole"], runs["stopped"]))
    assert stopped.restarts == 1
    steps = [p["step"] for p in stopped.heldout_curve]
    assert steps == [p["step"] for p in whole.heldout_curve] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    for a, b in zip(stopped.heldout_curve, whole.heldout_curve):
        assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    assert stopped.best_step == whole.best_step
    logged = scalars(runs["stopped"])
    assert [s for s, _ in logged["heldout/accuracy"]] == steps
    assert [s for s, _ in logged["train/loss"]] == [r["step"] for r in stopped.loss_curve] == list(range(1, 25))
    plain_losses = [r["loss"] for r in TrainMetrics.read(runs["plain"].train_metrics).loss_curve]
    assert [r["loss"] for r in whole.loss_curve] == plain_losses
    assert [r["loss"] for r in stopped.loss_curve] == pytest.approx(plain_losses, abs=1e-6)


@pytest.mark.model
def test_early_stopping_ends_training_after_the_patience(tmp_path):
    run = RunPaths(tmp_path / "early")
    run_main(
        "hpcnli.submit",
        "--config",
        SMOKE,
        "--run-dir",
        run.run_dir,
        *CURVE,
        "train.max_steps=40",
        "train.learning_rate=1e-12",  # nothing learnt: no evaluation beats step 0's
        "train.early_stopping_patience=2",
        "eval.num_shards=1",
    )
    m = TrainMetrics.read(run.train_metrics)
    assert [p["step"] for p in m.heldout_curve] == [0, 2, 4] and m.steps == 4
    assert m.best_step == 0 and m.kept == "last" and m.adapter_step == 4
    assert m.ended.startswith("early stopping at step 4: 2 held-out evaluations without a better one than step 0's")
    assert "training ended: early stopping at step 4" in run.report_md.read_text()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.keep=best"], "train.keep: needs held-out evaluation"),
        (["train.early_stopping_patience=3"], "train.early_stopping_patience: needs held-out evaluation"),
        (["train.eval_every=5"], "set data.holdout"),
        (["train.eval_every=5", "data.holdout=8", "data.test=holdout"], "would select on the test file"),
        (["train.eval_every=5", "data.holdout=8", "train.eval_pairs=9"], "more than the 8 data.holdout pairs"),
        (["train.log_with=wandb"], "train.log_with"),
    ],
)
def test_a_curve_that_cannot_be_what_it_says_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, overrides)


def test_the_plans_count_the_held_out_scoring(tmp_path, smoke_run):
    """Memory: the eval batches held between steps; time: the evaluations at the newest shard's pairs/s."""
    from hpcnli.model.footprint import model_shape, train_parts

    cfg = load_config(SMOKE, ["data.holdout=16", "train.eval_every=2", "eval.batch_size=64"])
    shape = model_shape(cfg, loading.model_config(cfg))
    held = memory_plan.heldout_tokens(cfg, 40)
    assert held == 64 * 40 and memory_plan.heldout_tokens(load_config(SMOKE), 40) == 0
    assert train_parts(cfg, shape, 256, False, held)["held_out_scoring"] > 0
    assert "held_out_scoring" not in train_parts(cfg, shape, 256, False, 0)
    root = tmp_path / "root"  # the smoke run's throughputs, not results/' runs of other models
    copy_run(smoke_run, root / "smoke")
    planned = run_main(
        "hpcnli.submit",
        "--config",
        SMOKE,
        "--plan-only",
        "--run-dir",
        root / "curve-plan",
        f"output_root={root}",
        "data.holdout=16",
        "train.eval_every=1",
        "train.max_steps=3",
    ).stdout
    assert re.search(r"held-out scoring \(train\.eval_every\)", planned), planned


def test_old_adapters_stay_current_with_the_curve_off():
    """The curve's keys shape the adapter only when set: runs trained before them keep their adapters."""
    cfg = load_config(SMOKE)
    assert cfg.train_hash() == load_config(SMOKE, ["train.eval_every=0", "train.keep=last"]).train_hash()
    assert cfg.train_hash() != load_config(SMOKE, ["data.holdout=8", "train.eval_every=2"]).train_hash()
