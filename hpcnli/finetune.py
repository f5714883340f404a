"""Stage 1: QLoRA fine-tuning (4-bit NF4 base + LoRA) through Accelerate.

The loss is the causal-LM loss of the label word at the answer position, the same position
the evaluation reads, so fine-tuning trains exactly the answer that is scored.

    python -m hpcnli.finetune results/<run>      # what slurm/finetune.sh and the local executor run
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpcnli.cluster.commands import requeue
from hpcnli.cluster.env import JobEnvironment
from hpcnli.config import load_config
from hpcnli.data.batching import BatchRule, global_batches
from hpcnli.data.nli import load_split
from hpcnli.errors import Interrupted, UserFacingError, raise_on_sigterm, run_command
from hpcnli.io import directory_aside
from hpcnli.logs import setup_logging
from hpcnli.model.loading import (
    add_lora,
    dtype_name,
    import_model_libraries,
    load_base_model,
    load_tokenizer,
    narrow_output_layer,
    stage_device,
    stage_dtype,
)
from hpcnli.model.memory import count_parameters, device_name, peak_memory, reset_peak_memory, resident_mb
from hpcnli.records import TrainMetrics
from hpcnli.run.memory_plan import planned_estimate, resolve_in_stage
from hpcnli.run.paths import ADAPTER_WEIGHTS, RunPaths
from hpcnli.run.stages import FINETUNE, MAX_REQUEUES, SIGNAL_LEAD_S, TIME_LIMIT_SIGNAL, Stage
from hpcnli.run.state import training_problem
from hpcnli.scoring.engine import training_logits
from hpcnli.scoring.heldout import better, curve_pairs, score_point
from hpcnli.scoring.prompts import label_token_ids, pad_left, tokenize_prompts

log = logging.getLogger("hpcnli.finetune")


class Preempted(Interrupted):
    """Training stopped at a step boundary with a checkpoint, on SIGTERM or on Slurm's time-limit warning."""

    def __init__(self, signal_name: str, step: int, checkpointed: bool = True):
        self.signal_name, self.step = signal_name, step
        where = "checkpointed" if checkpointed else "before training (nothing new to checkpoint)"
        super().__init__(
            f"{signal_name}: stopped after step {step}, {where}; a requeued or resumed fine-tune continues from there"
        )


def save_checkpoint(paths: RunPaths, model, optimizer, scheduler, state: dict) -> None:
    """Adapter, optimizer, scheduler, RNG and data position; written aside, then marked complete."""
    target = paths.checkpoint(state["step"])
    with directory_aside(target) as staging:
        model.save_pretrained(paths.checkpoint_adapter(staging), safe_serialization=True)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            },
            paths.checkpoint_trainer(staging),
        )
        paths.checkpoint_complete(staging).touch()
    for old in paths.other_checkpoints(target):
        shutil.rmtree(old, ignore_errors=True)
    prune_best_adapters(paths, state.get("best"))  # a resumed run needs only the best its checkpoint names
    log.info("checkpoint at step %d: %s", state["step"], target)


def prune_best_adapters(paths: RunPaths, best: dict | None) -> None:
    """Delete every best adapter but the one of `best` (the best held-out point a checkpoint or a resumed run holds)."""
    for old in paths.best_adapters.glob("step_*"):
        if best is None or paths.step_of(old) != best["step"]:
            shutil.rmtree(old, ignore_errors=True)


def save_best_adapter(paths: RunPaths, model, step: int) -> None:
    """train.keep: best: the adapter of a new best held-out step (the older bests go at the next checkpoint)."""
    with directory_aside(paths.best_adapter(step)) as staging:
        model.save_pretrained(staging, safe_serialization=True)


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, inputs: dict) -> dict | None:
    """Restore a checkpoint and return its loop state, or None when it was written for other inputs
    (another config or training set) and must not be resumed."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = torch.load(RunPaths.checkpoint_trainer(ckpt), weights_only=False)
    if saved["state"].get("inputs") != inputs:
        log.warning("ignoring %s: written for other inputs (%s, now %s)", ckpt, saved["state"].get("inputs"), inputs)
        return None
    set_peft_model_state_dict(model, load_file(RunPaths.checkpoint_adapter(ckpt) / ADAPTER_WEIGHTS))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["python"])
    log.info("resumed from %s (step %d)", ckpt, saved["state"]["step"])
    return saved["state"]


@dataclass
class Trainee:
    """What the loop trains on: the model, the tokenized prompts, the targets, and what they cost to make."""

    model: Any
    tokenizer: Any
    prompts: list[list[int]]
    answers: torch.Tensor
    params: dict
    load_s: float
    inputs: dict  # what the adapter depends on: {train_config_hash, train_data_hash}
    rss_before_model_mb: float | None  # resident memory before the model was loaded (the work's baseline)
    columns: list[int] | None  # the label words' logit columns when the output layer is narrowed to them
    held_out: list[dict]  # the pairs of the learning curve (train.eval_every; empty: none)


def prepare_model_and_data(cfg, train, inputs: dict, held_out: list[dict]) -> Trainee:
    import_model_libraries(cfg)
    rss_before = resident_mb()
    t_load = time.perf_counter()
    tokenizer = load_tokenizer(cfg)
    label_ids = label_token_ids(tokenizer, cfg.task.label_words)
    head = cfg.task.scoring == "head"
    # The loss target: the class index over 3 logits (head, or the 3 label-word logits), or the label
    # word's token id over the whole vocabulary (train.loss "vocab").
    over_vocab = not head and cfg.train.loss == "vocab"
    model = add_lora(load_base_model(cfg, "train"), cfg)
    load_s = time.perf_counter() - t_load
    params = count_parameters(model)
    log.info("parameters: %s", params)
    narrowed = not head and not over_vocab
    if narrowed:  # the loss reads the label words' logits only, in label order
        narrow_output_layer(model.get_base_model(), label_ids)
    prompts = tokenize_prompts(tokenizer, cfg, train.examples)
    answers = torch.tensor([label_ids[e["label"]] if over_vocab else e["label"] for e in train.examples])
    columns = list(range(len(label_ids))) if narrowed else None
    return Trainee(model, tokenizer, prompts, answers, params, load_s, inputs, rss_before, columns, held_out)


def train_step(cfg, accelerator, model, optimizer, scheduler, trainee: Trainee, idx: list[int], trainable) -> float:
    """One micro-batch of this process: forward, backward and, on a step's last micro-batch, the optimizer
    and the schedule. Returns the loss averaged over all processes (the global batch's loss)."""
    with accelerator.accumulate(model):
        input_ids, mask = pad_left([trainee.prompts[i] for i in idx], trainee.tokenizer.pad_token_id)
        logits = training_logits(model, cfg, input_ids.to(accelerator.device), mask.to(accelerator.device))
        loss = torch.nn.functional.cross_entropy(logits.float(), trainee.answers[idx].to(accelerator.device))
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, cfg.train.max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad()
    return accelerator.reduce(loss.detach(), reduction="mean").item()


STOP_SIGNALS = (signal.SIGTERM, getattr(signal, f"SIG{TIME_LIMIT_SIGNAL}"))


class StopRequest:
    """Set by a stop signal; holds the first signal's name."""

    def __init__(self):
        self.signal_name: str | None = None

    def set(self, signum: int) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def is_set(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_requested():
    """The fine-tune's one preemption mechanism. SIGTERM (Slurm's requeue, preemption and scancel, KillWait
    seconds before SIGKILL; the local executor's stop) and SIGUSR2 (Slurm's warning SIGNAL_LEAD_S before the
    time limit, asked for by `--signal=USR2@90`; Slurm may send it up to a minute early) only set a flag, also
    while the model loads (an exception raised inside a library's loading code would be caught there): training
    ends at its next step with a checkpoint instead of being killed half-written. What follows is `run_task`'s:
    a requeue on the time-limit warning."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, lambda signum, frame: stop.set(signum)) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def memory_of_every_rank(accelerator, mine: dict) -> list[dict]:
    """Every data-parallel rank's peaks, rank 0 first (ranks differ: their shares of a batch differ)."""
    if accelerator.num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return list(gather_object([mine]))


def peak_over_ranks(per_rank: list[dict]) -> dict:
    """Each measure's largest value over the ranks (what a node must hold for its worst process)."""
    out = dict(per_rank[0])
    for k, v in out.items():
        if isinstance(v, (int, float)):
            out[k] = max(m.get(k, 0) for m in per_rank)
    return out


def agreed_stop(accelerator, stop: StopRequest) -> bool:
    """Whether any process was asked to stop: every data-parallel rank stops after the same step."""
    if accelerator.num_processes == 1:
        return stop.is_set()
    flag = torch.tensor([float(stop.is_set())], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def train_loop(cfg, paths: RunPaths, accelerator, trainee: Trainee, stop: StopRequest) -> tuple[dict, int, float]:
    """Optimizer steps up to train.max_steps (or train.epochs), resuming from the last checkpoint, stopping
    early (with a checkpoint) when `stop` is set. Returns the loop state, the number of passes over the data
    begun and the runtime (across restarts)."""
    from transformers import get_scheduler

    t = cfg.train
    prompts, model = trainee.prompts, trainee.model
    lengths = [len(p) for p in prompts]
    n_proc, rank = accelerator.num_processes, accelerator.process_index

    def epoch_batches(epoch: int) -> list[list[int]]:
        return global_batches(lengths, BatchRule.of(t, n_proc), t.seed, epoch, t.group_by_length)

    # With a token budget each epoch may cut into a few more or fewer batches: count them all.
    steps_per_epoch = max(1, math.ceil(len(epoch_batches(0)) / t.grad_accum))
    if t.max_steps > 0:  # one pass more than epoch 0's count suggests: the loop stops at max_steps
        total_steps, epochs = t.max_steps, math.ceil(t.max_steps / steps_per_epoch) + 1
    else:
        total_steps = sum(max(1, math.ceil(len(epoch_batches(e)) / t.grad_accum)) for e in range(t.epochs))
        epochs = t.epochs

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "seen": 0,
        "tokens": 0,
        "elapsed_s": 0.0,
        "losses": [],
        "restarts": 0,
        "inputs": trainee.inputs,
        "curve": [],  # held-out points (train.eval_every), kept in checkpoints: a resumed run neither loses nor
        "best": None,  # repeats one; the best point so far
        "since_best": 0,  # held-out evaluations since the best
        "heldout_s": 0.0,  # seconds spent scoring them
        "ended": None,  # why training ended, once it has
    }
    done = paths.complete_checkpoints()
    resumed = (
        load_checkpoint(done[-1], accelerator.unwrap_model(model), optimizer, scheduler, trainee.inputs)
        if done
        else None
    )
    if resumed is not None:  # checkpoints written before the curve existed lack its keys
        state = {**state, **resumed, "restarts": resumed["restarts"] + 1}
    elif done:  # stale checkpoints: a later checkpoint of this run must not sit beside them
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    if accelerator.is_main_process:  # best adapters of steps the resumed run redoes (or of another attempt)
        prune_best_adapters(paths, state["best"])
    model.train()
    reset_peak_memory()
    if cfg.train.log_with == "tensorboard":  # the same event files across requeues; redone steps replace theirs
        accelerator.init_trackers(
            paths.tensorboard.name, init_kwargs={"tensorboard": {"purge_step": state["step"] + 1 if resumed else 0}}
        )
    if agreed_stop(accelerator, stop):  # asked to stop while loading: nothing new to checkpoint
        raise Preempted(stop.signal_name or "SIGTERM", state["step"], checkpointed=False)

    def held_out_point() -> None:
        point = score_point(
            accelerator.unwrap_model(model),
            trainee.tokenizer,
            cfg,
            trainee.held_out,
            accelerator,
            state["step"],
            state["seen"],
            trainee.columns,
        )
        state["curve"].append(point)
        state["heldout_s"] += point["seconds"]
        if better(point, state["best"]):
            state["best"], state["since_best"] = point, 0
            if t.keep == "best" and accelerator.is_main_process:
                save_best_adapter(paths, accelerator.unwrap_model(model), state["step"])
        else:
            state["since_best"] += 1
        accelerator.log({"heldout/accuracy": point["accuracy"], "heldout/loss": point["loss"]}, step=state["step"])
        log.info(
            "held-out at step %d: accuracy %.4f [%.4f, %.4f], loss %.4f (%d pairs, %.1f s); best step %d",
            state["step"],
            point["accuracy"],
            point["ci_low"],
            point["ci_high"],
            point["loss"],
            point["pairs"],
            point["seconds"],
            state["best"]["step"],
        )

    window = []
    t0 = time.perf_counter() - state["elapsed_s"]
    if trainee.held_out and not state["curve"]:  # the curve starts at the untrained adapter, step 0
        held_out_point()
    for epoch in range(state["epoch"], epochs):
        batches = epoch_batches(epoch)
        first = state["batch"] if epoch == state["epoch"] else 0
        for b, batch in enumerate(batches[first:], start=first):
            idx = batch[rank::n_proc]  # this process's share; DDP averages the shares' gradients
            window.append(train_step(cfg, accelerator, model, optimizer, scheduler, trainee, idx, trainable))
            if not math.isfinite(window[-1]):  # every rank sees the same (all-reduced) loss, so all stop here
                raise UserFacingError(
                    f"the training loss is {window[-1]} at step {state['step'] + 1}: the fine-tune diverged "
                    f"(train.learning_rate {t.learning_rate}); lower train.learning_rate and start a new run"
                )
            state["seen"] += len(batch)
            state["tokens"] += sum(lengths[i] for i in batch)
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            state["epoch"], state["batch"] = (epoch, b + 1) if b + 1 < len(batches) else (epoch + 1, 0)
            state["elapsed_s"] = time.perf_counter() - t0
            if state["step"] % t.log_every == 0 or state["step"] == total_steps:
                mean = sum(window) / len(window)
                state["losses"].append(
                    {
                        "step": state["step"],
                        "examples_seen": state["seen"],
                        "loss": mean,
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": state["elapsed_s"],
                    }
                )
                accelerator.log({"train/loss": mean, "train/lr": scheduler.get_last_lr()[0]}, step=state["step"])
                log.info(
                    "step %d/%d loss %.4f (%.2f examples/s)",
                    state["step"],
                    total_steps,
                    mean,
                    state["seen"] / state["elapsed_s"],
                )
                window = []
            if trainee.held_out and (state["step"] % t.eval_every == 0 or state["step"] == total_steps):
                held_out_point()
                state["elapsed_s"] = time.perf_counter() - t0
                if t.early_stopping_patience and state["since_best"] >= t.early_stopping_patience:
                    state["ended"] = (
                        f"early stopping at step {state['step']}: {state['since_best']} held-out evaluations "
                        f"without a better one than step {state['best']['step']}'s (train.early_stopping_patience)"
                    )
                    break
            if (
                t.checkpoint_every
                and state["step"] % t.checkpoint_every == 0
                and state["step"] < total_steps
                and accelerator.is_main_process
            ):
                save_checkpoint(paths, accelerator.unwrap_model(model), optimizer, scheduler, state)
            if state["step"] < total_steps and agreed_stop(accelerator, stop):  # keep this step
                if accelerator.is_main_process:
                    save_checkpoint(paths, accelerator.unwrap_model(model), optimizer, scheduler, state)
                accelerator.wait_for_everyone()  # no rank ends (and, with --kill-on-bad-exit, kills) before it
                raise Preempted(stop.signal_name or "SIGTERM", state["step"])
            if state["step"] >= total_steps:
                break
        if state["step"] >= total_steps or state["ended"]:
            break
    state["ended"] = state["ended"] or (
        f"train.max_steps {t.max_steps} reached" if t.max_steps > 0 else f"train.epochs {t.epochs} done"
    )
    trainee.model = model
    passes = state["epoch"] + (state["batch"] > 0)  # epochs begun
    return state, passes, time.perf_counter() - t0


def run(cfg, paths: RunPaths, env: JobEnvironment | None = None) -> TrainMetrics:
    """Train, then write the adapter and train_metrics.json (rank 0 only); returns the metrics."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if training_problem(cfg, paths) is None:
        # A requeued job, or slurm/finetune.sh sent again, after the adapter was written: nothing to redo.
        log.info("the adapter in %s is complete and current; not training again", paths.adapter)
        return TrainMetrics.read(paths.train_metrics)
    env = env or JobEnvironment()
    planned = cfg  # the adapter depends on the config as planned; "auto" left open is chosen now (a GPU)
    cfg = resolve_in_stage(cfg, "finetune")
    t = cfg.train
    set_seed(t.seed)
    # From here on, SIGTERM and the time-limit warning only set a flag (stop_requested): one that comes while the
    # model loads is kept, not raised inside a library's loader, and training stops at its next step.
    with stop_requested() as stop:
        device = stage_device(cfg, env.local_rank, env.local_world_size or 1)
        estimate = planned_estimate(paths, "finetune")  # read (and checked) before the work, not after it
        # cpu=True where there is no GPU: Accelerate then forms a gloo group of the processes a launcher started.
        # step_scheduler_with_optimizer=False: the loop steps the schedule once per optimizer step itself
        # (Accelerate would step it once per process; here each step is one global batch already).
        accelerator = Accelerator(
            gradient_accumulation_steps=t.grad_accum,
            cpu=device.type == "cpu",
            step_scheduler_with_optimizer=False,
            log_with="tensorboard" if t.log_with == "tensorboard" else None,
            project_dir=str(paths.run_dir),
        )
        train = load_split(cfg, "train")
        log.info(
            "train set: %d examples from %s (%d without gold label dropped)",
            len(train.examples),
            train.source,
            train.dropped,
        )
        held_out = (
            curve_pairs(load_split(cfg, "holdout").examples, t.eval_pairs, cfg.data.subset_seed) if t.eval_every else []
        )
        trainee = prepare_model_and_data(
            cfg, train, {"train_config_hash": planned.train_hash(), "train_data_hash": train.content_hash}, held_out
        )
        try:
            state, epochs, runtime = train_loop(cfg, paths, accelerator, trainee, stop)
        finally:  # the event files flushed and closed, also when stopped (end_training would also end the
            for tracker in accelerator.trackers:  # process group, which the ranks still need)
                tracker.finish()
    losses = state["losses"]
    train_s = runtime - state["heldout_s"]  # the throughputs are training's own
    best = state["best"]
    adapter_step = best["step"] if t.keep == "best" else state["step"]

    accelerator.wait_for_everyone()
    processes_per_node = env.local_world_size or accelerator.num_processes
    per_rank = memory_of_every_rank(accelerator, peak_memory(trainee.rss_before_model_mb))
    adapter_bytes = 0  # only rank 0 writes the adapter
    if accelerator.is_main_process:
        with directory_aside(paths.adapter) as staging:
            if t.keep == "best":  # the best held-out step's adapter, as saved when it was the best
                kept = paths.best_adapter(adapter_step)
                if not (kept / ADAPTER_WEIGHTS).is_file():
                    raise UserFacingError(
                        f"train.keep: best, but the adapter of the best step {adapter_step} is not in {kept}; "
                        f"start a new run (it was removed by hand?)"
                    )
                shutil.copytree(kept, staging, dirs_exist_ok=True)
            else:
                accelerator.unwrap_model(trainee.model).save_pretrained(staging, safe_serialization=True)
            adapter_bytes = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    metrics = TrainMetrics(
        schema_version=TrainMetrics.VERSION,
        train_examples=len(train.examples),
        train_source=train.source,
        dropped=train.dropped,
        steps=state["step"],
        examples_seen=state["seen"],
        epochs=epochs,
        restarts=state["restarts"],
        runtime_s=runtime,
        model_load_s=trainee.load_s,
        examples_per_s=state["seen"] / train_s,
        tokens_per_s=state["tokens"] / train_s,
        final_loss=losses[-1]["loss"] if losses else None,
        best_loss=min(r["loss"] for r in losses) if losses else None,
        loss_curve=losses,
        parameters=trainee.params,
        memory=peak_over_ranks(per_rank),
        memory_per_rank=per_rank,
        memory_estimate=estimate,
        device=device_name(),
        dtype=dtype_name(stage_dtype(cfg.model.dtype, "train")),
        num_processes=accelerator.num_processes,
        nodes=accelerator.num_processes // processes_per_node,
        batch=BatchRule.of(t).describe(),
        batch_tokens=t.batch_tokens,
        gradient_checkpointing=t.gradient_checkpointing,
        per_process_batch_size=t.batch_size if t.batch_tokens is None else None,
        effective_batch_size=state["seen"] / max(1, state["step"]),  # pairs per optimizer step
        inputs=trainee.inputs,
        adapter_bytes=adapter_bytes,
        heldout_curve=state["curve"] if held_out else None,
        heldout_pairs=len(held_out) if held_out else None,
        heldout_s=state["heldout_s"] if held_out else None,
        best_step=best["step"] if best else None,
        kept=t.keep,
        adapter_step=adapter_step,
        ended=state["ended"],
    )
    if accelerator.is_main_process:
        metrics.write(paths.train_metrics)
        shutil.rmtree(paths.checkpoints, ignore_errors=True)  # the final adapter supersedes them
        shutil.rmtree(paths.best_adapters, ignore_errors=True)
        log.info("trained %d steps in %.1f s; adapter in %s", state["step"], runtime, paths.adapter)
    return metrics


def run_task(cfg, paths: RunPaths, stage: Stage, task: int, job: JobEnvironment) -> str:
    """The fine-tune as a Slurm job or a local process runs it. On Slurm's time-limit warning it checkpoints
    (stop_requested), then rank 0 asks Slurm to requeue the job, up to MAX_REQUEUES times; the requeued job
    resumes from the checkpoint. SIGTERM alone (preemption, scancel) checkpoints and stops: Slurm requeues a
    preempted job itself."""
    limit_signal = f"SIG{TIME_LIMIT_SIGNAL}"
    try:
        run(cfg, paths, job)
    except Preempted as stop:
        if stop.signal_name != limit_signal or job.job_id is None:
            raise
        if job.restart_count >= MAX_REQUEUES:
            raise UserFacingError(
                f"time limit reached {job.restart_count + 1} times (resources.time_min "
                f"{cfg.resources.time_min}); checkpointed at step {stop.step}; raise "
                f"resources.time_min and run: python -m hpcnli.submit --resume {paths.run_dir}"
            ) from None
        if job.global_rank == 0:
            log.warning(
                "time limit in %d s or less: stopped at step %d; requeueing job %s (requeue %d of %d)",
                SIGNAL_LEAD_S,
                stop.step,
                job.job_id,
                job.restart_count + 1,
                MAX_REQUEUES,
            )
            requeue(job.job_id)
        raise SystemExit(0) from None  # Slurm ends this run of the job and starts it again
    return str(paths.adapter)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="run directory made by hpcnli.submit (holds config.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    env = JobEnvironment()
    env.match_torch_threads()
    env.export_torch_distributed()  # srun with several tasks (slurm/finetune.sh): one data-parallel group
    paths = RunPaths(args.run_dir)
    return run_command("hpcnli.finetune", lambda: run_task(load_config(paths.config), paths, FINETUNE, 0, env))


if __name__ == "__main__":
    raise_on_sigterm()
    sys.exit(main())
