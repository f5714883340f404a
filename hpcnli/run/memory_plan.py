"""The memory plan: each stage's estimated peak before anything is queued; "auto" batches and gradient
checkpointing chosen from it; a run that would not fit refused with the knob to turn.

All sizes are GiB (2**30 bytes), as torch, nvidia-smi (MiB) and Slurm's --mem=..G count them; a card sold as
"80 GB" has about 79 GiB. The ceiling a stage's tensors may use is, on a GPU, `resources.gpu_mem_gb` (the GiB a
card must have free for the stage) less the CUDA context, divided by the caching allocator's reserve
(footprint.GPU_CONTEXT_BYTES, GPU_RESERVED_FACTOR); on a CPU it is `resources.mem_gb` (what Slurm holds the job
to) less what the process needs before any model is loaded, divided by footprint.CPU_RESIDENT_FACTOR (glibc
keeps freed blocks resident). Each stage's estimate gives both: its tensors, and what its device must have.
Where a GPU's ceiling is not given, the plan cannot check it and "auto" is chosen in the stage, from the free
memory of the GPU it finds (`resolve_in_stage`).
"""

from __future__ import annotations

import dataclasses
import logging
import math

from hpcnli.config import RunConfig
from hpcnli.data.batching import BatchRule, batch_tokens, global_batches
from hpcnli.errors import UserFacingError
from hpcnli.io import RunFileError, read_json
from hpcnli.model.footprint import (
    CPU_PROCESS_BYTES,
    CPU_RESIDENT_FACTOR,
    GPU_CONTEXT_BYTES,
    GPU_RESERVED_FACTOR,
    GiB,
    describe,
    device_bytes,
    eval_parts,
    largest_budget,
    model_shape,
    total,
    train_parts,
)
from hpcnli.model.loading import model_config

log = logging.getLogger(__name__)

# An "auto" budget stops here. Beyond some thousands of tokens a batch is no faster per token on a GPU; an eval
# batch also holds the caches of PREFIX_CHUNK_BATCHES batches of premises (phi-2: 8,192 tokens -> 29 GB in all).
AUTO_TOKENS_CAP = {"finetune": 16384, "eval": 8192}
GPU_FREE_SHARE = 0.85  # of a GPU's free memory, for "auto" in the stage when resources.gpu_mem_gb is not given


class MemoryPlanError(UserFacingError, ValueError):
    """A stage would not fit its memory; the message names the knob to turn."""


def ceiling(cfg: RunConfig, processes: int = 1) -> tuple[float | None, str]:
    """The bytes one process's tensors may use and the key that sets them (None where the plan cannot know).
    On a CPU `processes` of a node share its resources.mem_gb (the fine-tune's data-parallel processes); on a
    GPU each has its own card."""
    r = cfg.resources
    if r.gpus_per_node > 0:
        if not r.gpu_mem_gb:
            return None, "resources.gpu_mem_gb"
        return (r.gpu_mem_gb * GiB - GPU_CONTEXT_BYTES) / GPU_RESERVED_FACTOR, "resources.gpu_mem_gb"
    return (r.mem_gb * GiB / processes - CPU_PROCESS_BYTES) / CPU_RESIDENT_FACTOR, "resources.mem_gb"


def _resolve_train(cfg: RunConfig, shape, limit: float, worst: int, held: int) -> RunConfig:
    t = cfg.train
    ckpt_options = (False, True) if t.gradient_checkpointing == "auto" else (bool(t.gradient_checkpointing),)
    for ckpt in ckpt_options:
        if t.batch_tokens == "auto":
            budget = largest_budget(
                lambda n, ckpt=ckpt: train_parts(cfg, shape, n, ckpt, held),
                limit,
                cfg.task.max_length,
                AUTO_TOKENS_CAP["finetune"],
            )
            if budget is not None:
                return dataclasses.replace(
                    cfg, train=dataclasses.replace(t, batch_tokens=budget, gradient_checkpointing=ckpt)
                )
        elif total(train_parts(cfg, shape, train_tokens(cfg, worst), ckpt, held)) <= limit or ckpt == ckpt_options[-1]:
            return dataclasses.replace(cfg, train=dataclasses.replace(t, gradient_checkpointing=ckpt))
    return cfg  # nothing fits; check() says so


def _resolve_eval(cfg: RunConfig, shape, limit: float) -> RunConfig:
    if cfg.eval.batch_tokens != "auto":
        return cfg
    budget = largest_budget(lambda n: eval_parts(cfg, shape, n), limit, cfg.task.max_length, AUTO_TOKENS_CAP["eval"])
    return cfg if budget is None else dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_tokens=budget))


MAX_SCANNED_EPOCHS = 50  # beyond this many epochs the plan takes an upper bound instead of cutting every batch


def worst_train_batch(cfg: RunConfig, lengths: list[int] | None) -> int:
    """The most padded tokens one process's micro-batch of batch_size pairs holds over the run's epochs, cut as
    the fine-tune cuts them (lengths: every training prompt's); batch_size x task.max_length when unknown."""
    t, procs = cfg.train, cfg.resources.train_processes
    if not lengths:
        return t.batch_size * cfg.task.max_length
    rule = BatchRule(rows=t.batch_size * procs, ways=procs)
    first = global_batches(lengths, rule, t.seed, 0, t.group_by_length)
    epochs = t.epochs if t.max_steps <= 0 else math.ceil(t.max_steps * t.grad_accum / max(1, len(first))) + 1
    if epochs > MAX_SCANNED_EPOCHS:  # planning stays quick: the bound a batch of the longest prompts would hold
        return t.batch_size * max(lengths)
    return max(
        batch_tokens(b[r::procs], lengths)
        for e in range(epochs)
        for b in (first if e == 0 else global_batches(lengths, rule, t.seed, e, t.group_by_length))
        for r in range(procs)
        if b[r::procs]
    )


def train_tokens(cfg: RunConfig, worst: int) -> int:
    """The most padded tokens one process's micro-batch holds: the budget, or the worst fixed-count batch."""
    t = cfg.train
    return t.batch_tokens if isinstance(t.batch_tokens, int) else worst


def eval_tokens(cfg: RunConfig, longest: int) -> int:
    e = cfg.eval
    return e.batch_tokens if isinstance(e.batch_tokens, int) else e.batch_size * longest


def resolve(cfg: RunConfig, shape, limits: dict[str, float | None], worst_train: int, held: int = 0) -> RunConfig:
    """The config with "auto" batch_tokens and gradient_checkpointing replaced by what fits each stage's limit
    (left "auto" when the limit is unknown: the stage chooses). held: tokens of a held-out scoring batch."""
    train, ev = limits["finetune"], limits["eval"]
    cfg = cfg if train is None else _resolve_train(cfg, shape, train, worst_train, held)
    return cfg if ev is None else _resolve_eval(cfg, shape, ev)


def heldout_tokens(cfg: RunConfig, longest: int) -> int:
    """Tokens of one held-out scoring batch during training (0 without train.eval_every), its pairs being as
    long as the longest training prompt at most (they come from the same source)."""
    return eval_tokens(cfg, longest) if cfg.train.eval_every else 0


def _batch_words(section, tokens: int) -> str:
    if isinstance(section.batch_tokens, int):
        return f"batches of <= {tokens} tokens"
    return f"batches of {section.batch_size} pairs (<= {tokens} tokens)"


def stage_estimates(cfg: RunConfig, shape, worst_train: int, longest_test: int, held: int = 0) -> dict:
    """Each stage's estimated peak, in parts (bytes), for the resolved config; {} for a stage still "auto"."""
    out = {}
    t = cfg.train
    if t.batch_tokens != "auto" and t.gradient_checkpointing != "auto":
        tokens = train_tokens(cfg, worst_train)
        out["finetune"] = {
            "tokens_per_batch": tokens,
            "batch": _batch_words(t, tokens),
            "gradient_checkpointing": bool(t.gradient_checkpointing),
            "parts": train_parts(cfg, shape, tokens, bool(t.gradient_checkpointing), held),
        }
    if cfg.eval.batch_tokens != "auto":
        tokens = eval_tokens(cfg, longest_test)
        out["eval"] = {
            "tokens_per_batch": tokens,
            "batch": _batch_words(cfg.eval, tokens),
            "parts": eval_parts(cfg, shape, tokens),
        }
    gpu = cfg.resources.gpus_per_node > 0
    for est in out.values():
        est["total_bytes"] = total(est["parts"])  # type: ignore[arg-type]
        est["device_bytes"] = device_bytes(est["total_bytes"], gpu)  # type: ignore[arg-type]
    return out


def _allowance(limit: float, key: str, processes: int = 1) -> str:
    if key == "resources.mem_gb":
        mem_gb = (limit * CPU_RESIDENT_FACTOR + CPU_PROCESS_BYTES) * processes / GiB
        shared = f" shared by {processes} processes," if processes > 1 else ""
        return (
            f"{limit / GiB:.1f} GiB its tensors may use ({key} {mem_gb:g}{shared} less "
            f"{CPU_PROCESS_BYTES / GiB:.0f} GiB for the "
            f"process, / {CPU_RESIDENT_FACTOR} for what glibc keeps resident)"
        )
    free = (limit * GPU_RESERVED_FACTOR + GPU_CONTEXT_BYTES) / GiB
    return (
        f"{limit / GiB:.1f} GiB its tensors may use ({key} {free:g} GiB free on the card, less "
        f"{GPU_CONTEXT_BYTES / GiB:g} GiB for the CUDA context, / {GPU_RESERVED_FACTOR} for what the allocator "
        "reserves beyond its tensors)"
    )


def check(cfg: RunConfig, estimates: dict, limits: dict[str, float | None], key: str) -> None:
    """Refuse a plan whose stage would not fit, naming what to change."""
    for stage, est in estimates.items():
        limit = limits[stage]
        if limit is None or est["total_bytes"] <= limit:
            continue
        knobs = (
            "train.batch_tokens (or train.batch_size), train.gradient_checkpointing: true or auto, lora.r"
            if stage == "finetune"
            else "eval.batch_tokens (or eval.batch_size), eval.share_prefix: false"
        )
        raise MemoryPlanError(
            f"{key}: the {stage} stage's tensors need about {est['total_bytes'] / GiB:.1f} GiB "
            f"({describe(est['parts'])}, {est['batch']}), over the "
            f"{_allowance(limit, key, _processes(cfg, stage))}; lower "
            f"{knobs}, or task.max_length, or raise {key}"
        )
    for stage in ("finetune", "eval"):
        limit = limits[stage]
        if stage not in estimates and limit is not None:
            raise MemoryPlanError(
                f"{key}: not even one prompt of task.max_length {cfg.task.max_length} tokens fits "
                f"the {stage} stage in the {_allowance(limit, key, _processes(cfg, stage))}; raise {key} or lower "
                "task.max_length"
            )


def _processes(cfg: RunConfig, stage: str) -> int:
    """Processes of a stage that share a node's memory (on CPUs; each GPU process has its own card)."""
    return cfg.resources.train_processes_per_node if stage == "finetune" and cfg.resources.gpus_per_node == 0 else 1


def plan_memory(
    cfg: RunConfig, model_config, train_lengths: list[int] | None, longest_test: int
) -> tuple[RunConfig, dict]:
    """Resolve "auto", estimate each stage, refuse what does not fit: (resolved config, memory plan).
    train_lengths: every training prompt's tokens (None when too many to tokenize at planning time)."""
    limit, key = ceiling(cfg)
    if limit is None and _left_open(cfg, "finetune"):
        # The batches a run trains on are fixed when it is planned: sized in the job from free memory, each process,
        # and a requeue onto another GPU type, would cut other batches under the same adapter's checkpoint.
        raise MemoryPlanError(
            f"{key}: train.batch_tokens or train.gradient_checkpointing is 'auto' on GPUs "
            f"({cfg.resources.train_processes} training process(es)); set {key} (the memory each GPU may use, "
            "e.g. 75 on an 80 GB card: 79 GiB) so that the plan fixes the batches for every process and every requeue"
        )
    shape = model_shape(cfg, model_config)
    worst = worst_train_batch(cfg, train_lengths)
    limits = {stage: ceiling(cfg, _processes(cfg, stage))[0] for stage in ("finetune", "eval")}
    longest_train = max(train_lengths) if train_lengths else cfg.task.max_length
    resolved = resolve(cfg, shape, limits, worst, heldout_tokens(cfg, longest_train))
    estimates = stage_estimates(resolved, shape, worst, longest_test, heldout_tokens(resolved, longest_train))
    check(resolved, estimates, limits, key)
    return resolved, {
        "ceiling_bytes": limit,
        "stage_ceiling_bytes": limits,
        "ceiling_key": key,
        "longest_test_prompt": longest_test,
        "worst_fixed_train_batch": worst,
        "stages": estimates,
        "shape": dataclasses.asdict(shape),
        "eval_weights_bytes": eval_parts(resolved, shape, cfg.task.max_length)["weights"],
    }


def lines(memory: dict) -> list[str]:
    """The plan, as submit prints it."""
    limit = memory["ceiling_bytes"]
    key = memory["ceiling_key"]
    head = (
        f"memory plan (each stage's estimated peak; no ceiling: {key} is not set):"
        if limit is None
        else f"memory plan (each stage's estimated peak; {_allowance(limit, key)}):"
    )
    out = [head]
    train_limit = memory.get("stage_ceiling_bytes", {}).get("finetune", limit)
    if limit is not None and train_limit != limit:  # CPU processes that share a node's memory
        out.append(f"  (the fine-tune's processes share the node: {train_limit / GiB:.1f} GiB each)")
    for stage in ("finetune", "eval"):
        est = memory["stages"].get(stage)
        if est is None:
            out.append(f"  {stage}: batch chosen in the stage, from {GPU_FREE_SHARE:.0%} of the GPU's free memory")
            continue
        ckpt = (
            f", gradient checkpointing {'on' if est['gradient_checkpointing'] else 'off'}"
            if stage == "finetune"
            else ""
        )
        gpu = key == "resources.gpu_mem_gb"
        needs = est.get("device_bytes") or device_bytes(est["total_bytes"], gpu)  # plans before device_bytes
        out.append(
            f"  {stage}: {est['batch']}{ckpt}: needs {needs / GiB:.2f} GiB {'free on its GPU' if gpu else 'resident'}; "
            f"tensors {describe(est['parts'])}"
        )
    return out


def read_plan(paths) -> dict | None:
    """The run's memory plan, checked for the shape its readers use; None for runs planned before plans."""
    if not paths.memory_plan.is_file():
        return None
    plan = read_json(paths.memory_plan)
    if not (
        isinstance(plan, dict)
        and isinstance(plan.get("stages"), dict)
        and all(isinstance(v, dict) for v in plan["stages"].values())
        and (plan.get("time") is None or isinstance(plan["time"], dict))
    ):
        raise RunFileError(
            f"{paths.memory_plan} is not a memory plan (stages by name, each an estimate); restore it, or start a "
            "new run"
        )
    return plan


def planned_estimate(paths, stage: str) -> dict | None:
    """A stage's estimate from the run's memory plan (for its metrics, beside the measured peak), or None."""
    plan = read_plan(paths)
    return None if plan is None else plan["stages"].get(stage)


def _left_open(cfg: RunConfig, stage: str) -> bool:
    """Whether a stage's batches (or the fine-tune's checkpointing) are still "auto"."""
    if stage == "finetune":
        return "auto" in (cfg.train.batch_tokens, cfg.train.gradient_checkpointing)
    return cfg.eval.batch_tokens == "auto"


def resolve_in_stage(cfg: RunConfig, stage: str) -> RunConfig:
    """A stage's config with what the plan left "auto" (a GPU without resources.gpu_mem_gb) chosen now,
    from the free memory of this process's GPU."""
    if not _left_open(cfg, stage):
        return cfg
    import torch

    if not torch.cuda.is_available():
        raise MemoryPlanError(
            f"{stage}: batch_tokens or gradient_checkpointing is 'auto' but the plan left it "
            "open and there is no GPU to size it from; plan the run again"
        )
    free, _ = torch.cuda.mem_get_info()
    budget = free * GPU_FREE_SHARE
    resolved = resolve(
        cfg,
        model_shape(cfg, model_config(cfg)),
        {"finetune": budget, "eval": budget},
        cfg.train.batch_size * cfg.task.max_length,
    )
    if _left_open(resolved, stage):
        raise MemoryPlanError(
            f"{stage}: not even one prompt of task.max_length {cfg.task.max_length} tokens fits "
            f"{GPU_FREE_SHARE:.0%} of the {free / GiB:.1f} GiB free on this GPU"
        )
    log.info(
        "%s: chose from %.1f GiB free on the GPU: train batch_tokens %s, gradient checkpointing %s, eval "
        "batch_tokens %s",
        stage,
        free / GiB,
        resolved.train.batch_tokens,
        resolved.train.gradient_checkpointing,
        resolved.eval.batch_tokens,
    )
    return resolved
