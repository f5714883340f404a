"""Estimated peak memory of the fine-tune and of an eval shard, from the model's configuration alone.

Nothing is loaded. The model is built on the meta device (shapes, no weights); its parameters are
counted by kind (4-bit linear weights, the rest, LoRA); one forward pass on meta tensors, under a hook
that sees every tensor autograd keeps for backward, gives the bytes a training token holds. The
estimate of a stage is then a sum of named parts:

    fine-tune  weights (4-bit + the rest, in float32 as PEFT casts them) + LoRA parameters, gradients and
               AdamW state (16 bytes each) + activations kept for backward (tokens x bytes per token, or
               with gradient checkpointing one hidden state per layer plus one layer recomputed)
               + one dequantized weight (4-bit matmuls dequantize as they go)
    eval shard weights (dequantized to the eval dtype, or 4-bit) + key/value caches (the premise groups
               held at once and the batch's own) + one layer's intermediate tensors + the logits

A token budget then follows from a memory ceiling (`largest_budget`). The estimate is of the memory
the tensors need, which on a GPU is what torch allocates; what the card must have free adds the allocator's
reserve and the CUDA context (`device_bytes`). On a CPU, glibc's allocator keeps freed
blocks resident: the resident peak of a fine-tune here was 1.7x its estimate, of single training steps
1.8-2.0x their tensors, of eval shards 1.3x (CPU_RESIDENT_FACTOR, bench/RESULTS.md); with
MALLOC_MMAP_THRESHOLD_=131072 in the environment glibc returns them and the resident peak is the estimate,
but training ran 2.5x slower, so that is for measuring, not the default.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hpcnli.config import MIN_PAIR_TOKENS, PREFIX_CHUNK_BATCHES
from hpcnli.model.loading import lora_config, stage_dtype

GiB = 2**30
# 4-bit weights: half a byte each, plus one absmax per block of 64: a byte with double quantization
# (and a float32 per 256 blocks), else a float32.
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
ADAMW_STATE_BYTES = 16  # per trainable float32 parameter: the value, its gradient, two moments
CPU_RESIDENT_FACTOR = 2.0  # resident peak / tensor memory on a CPU with glibc's default allocator (measured 1.3-2.0)
CPU_PROCESS_BYTES = 2**30  # the interpreter, torch and its libraries, the data: resident before any model
# On a GPU a stage needs more free memory than its tensors: torch's caching allocator reserves whole blocks
# (reserved / allocated peak, GPU_RESERVED_FACTOR) and the CUDA context with cuBLAS's workspace takes its own
# (GPU_CONTEXT_BYTES). Both are assumptions until bench/gpu_check.sh measures them (gpu_context_mib and
# gpu_peak_reserved_mib against gpu_peak_allocated_mib in a stage's memory).
GPU_RESERVED_FACTOR = 1.1
GPU_CONTEXT_BYTES = 0.75 * 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about a model, all from its configuration."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_elements: int  # key + value elements per token and layer
    vocab: int
    quantizable: int  # parameters of the linear layers 4-bit quantization replaces (all but the output layer)
    largest_linear: int  # parameters of the largest of them
    other: int  # every other parameter (embeddings, norms, biases, the output layer)
    output_layer: int  # parameters of the output layer when it is not tied to the input embedding, else 0
    lora: int  # LoRA parameters
    saved_per_token: float  # bytes autograd keeps per training token, from a meta forward pass

    @property
    def total_parameters(self) -> int:
        return self.quantizable + self.other


def _meta_model(cfg, model_config, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if cfg.task.scoring == "head" else AutoModelForCausalLM
    if cfg.task.scoring == "head":
        model_config = copy.deepcopy(model_config)
        model_config.num_labels = 3
    with torch.device("meta"):
        return auto.from_config(model_config, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)


@contextmanager
def _fused_attention_on_meta():
    """Attention as the fused kernels run it (CUDA flash / memory-efficient, CPU flash): they keep query,
    key, value, output and a log-sum-exp for backward. On the meta device torch would pick the unfused
    path, which keeps the whole attention matrix and so overstates what a real step keeps."""
    plain = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if q.device.type != "meta":
            return plain(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        if k.shape[1] != q.shape[1]:  # grouped-query attention: the kernels see every head's keys
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, True, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = plain


def _saved_bytes_per_token(model, length: int) -> float:
    """Bytes of the tensors autograd keeps for backward in one forward pass of `length` tokens, per token."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in params:
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        return t

    ids = torch.zeros(1, length, dtype=torch.long, device="meta")
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_attention_on_meta():
        model(input_ids=ids, logits_to_keep=1) if hasattr(model, "lm_head") else model(input_ids=ids)
    return sum(saved.values()) / length


def model_shape(cfg, model_config) -> ModelShape:
    """Count a model's parameters by kind and measure its activations per token, on the meta device."""
    from peft import get_peft_model

    q4 = cfg.quantization.load_in_4bit
    # Under 4-bit, PEFT casts every parameter that is not 4-bit to float32, so activations are float32
    # whatever the compute dtype; without 4-bit the model runs in the training dtype.
    model = _meta_model(cfg, model_config, torch.float32 if q4 else stage_dtype(cfg.model.dtype, "train"))
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is model.get_input_embeddings().weight
    linears = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not out and m is not getattr(model, "score", None)
    ]
    quantizable = sum(m.weight.numel() for m in linears)
    total = sum(p.numel() for p in model.parameters())
    output_layer = 0 if out is None or tied else out.weight.numel() + (out.bias.numel() if out.bias is not None else 0)
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.task.scoring != "head" and cfg.train.loss == "labels":  # finetune narrows the output layer to 3 rows
        model.set_output_embeddings(
            torch.nn.Linear(
                model_config.hidden_size, 3, bias=False, device="meta", dtype=next(model.parameters()).dtype
            )
        )
    n_layers = model_config.num_hidden_layers
    lora = get_peft_model(model, lora_config(cfg, n_layers))
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    saved = _saved_bytes_per_token(lora, min(cfg.task.max_length, 128))
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    return ModelShape(
        layers=n_layers,
        hidden=model_config.hidden_size,
        intermediate=getattr(model_config, "intermediate_size", 4 * model_config.hidden_size),
        heads=heads,
        kv_elements=2 * kv_heads * head_dim,
        vocab=model_config.vocab_size,
        quantizable=quantizable,
        largest_linear=max((m.weight.numel() for m in linears), default=0),
        other=total - quantizable,
        output_layer=output_layer,
        lora=n_lora,
        saved_per_token=saved,
    )


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def train_parts(cfg, shape: ModelShape, tokens: int, checkpointing: bool, heldout_tokens: int = 0) -> dict[str, float]:
    """Bytes of each part of the fine-tune's peak, for batches of `tokens` padded tokens per process; with
    held-out scoring (train.eval_every), its batches of `heldout_tokens` held between steps."""
    q = cfg.quantization
    e = _bytes(stage_dtype(cfg.model.dtype, "train"))
    narrowed = cfg.task.scoring != "head" and cfg.train.loss == "labels"
    other = shape.other - (shape.output_layer if narrowed else 0)
    if q.load_in_4bit:
        compute = _bytes(stage_dtype(cfg.model.dtype if q.compute_dtype == "auto" else q.compute_dtype, "train"))
        weights = shape.quantizable * NF4_BYTES[q.double_quant] + other * 4
        dequantized = 2 * shape.largest_linear * compute
    else:
        weights, dequantized = (shape.quantizable + other) * e, 0
    per_layer = shape.saved_per_token / shape.layers
    # with checkpointing each layer keeps its input; backward recomputes one layer at a time
    act = tokens * (shape.layers * shape.hidden * 4 + per_layer) if checkpointing else tokens * shape.saved_per_token
    logits = 0 if narrowed else 2 * (tokens // MIN_PAIR_TOKENS + 1) * shape.vocab * 4  # float32, answer position only
    parts = {
        "weights": weights,
        "lora_and_optimizer": shape.lora * ADAMW_STATE_BYTES,
        "activations": act,
        "backward": 2 * tokens * per_layer + dequantized,
        "logits": logits,
    }
    if heldout_tokens:  # held-out scoring between steps holds eval batches where the step's work was
        work = eval_parts(cfg, shape, heldout_tokens)
        step_work = act + parts["backward"] + logits
        parts["held_out_scoring"] = max(0.0, work["kv_cache"] + work["layer"] + work["logits"] - step_work)
    return parts


def eval_parts(cfg, shape: ModelShape, tokens: int) -> dict[str, float]:
    """Bytes of each part of an eval shard's peak, for batches of `tokens` padded tokens."""
    e = _bytes(stage_dtype(cfg.model.dtype, "eval"))
    if cfg.quantization.load_in_4bit and cfg.eval.weights == "4bit":
        weights = shape.quantizable * NF4_BYTES[cfg.quantization.double_quant] + shape.other * e
    else:
        weights = shape.total_parameters * e
    kv_token = shape.layers * shape.kv_elements * e
    # shared prefixes: the premise groups of PREFIX_CHUNK_BATCHES batches held at once, plus the batch's own cache
    held = PREFIX_CHUNK_BATCHES * tokens if cfg.eval.share_prefix else 0
    layer = (
        tokens * (3 * shape.intermediate + 4 * shape.hidden + shape.kv_elements) * e
        + tokens * shape.heads * cfg.task.max_length * 4
    )  # attention weights, where they are materialized
    rows = tokens // MIN_PAIR_TOKENS + 1  # a prompt holds at least MIN_PAIR_TOKENS tokens
    return {
        "weights": weights,
        "kv_cache": (held + tokens) * kv_token,
        "layer": layer,
        "logits": 2 * rows * shape.vocab * 4,
    }


def total(parts: dict[str, float]) -> float:
    return sum(parts.values())


def largest_budget(parts_for, ceiling: float, floor: int, cap: int, step: int = 256) -> int | None:
    """The largest token budget in [floor, cap] (a multiple of `step` above the floor) whose estimate
    parts_for(tokens) fits `ceiling` bytes; None when not even `floor` fits."""
    if total(parts_for(floor)) > ceiling:
        return None
    lo, hi = floor, max(floor, cap)
    while hi - lo > step:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(parts_for(mid)) <= ceiling else (lo, mid)
    return max(floor, lo // step * step) if total(parts_for(hi)) > ceiling else hi


def describe(parts: dict[str, float]) -> str:
    return (
        ", ".join(f"{k.replace('_', ' ')} {v / GiB:.2f}" for k, v in parts.items() if v)
        + f" = {total(parts) / GiB:.2f} GiB"
    )


def device_bytes(tensor_bytes: float, gpu: bool) -> float:
    """The memory a stage whose tensors peak at tensor_bytes needs from its device: free on the card on a GPU
    (allocator reserve and CUDA context added), resident in the process on a CPU."""
    if gpu:
        return tensor_bytes * GPU_RESERVED_FACTOR + GPU_CONTEXT_BYTES
    return tensor_bytes * CPU_RESIDENT_FACTOR + CPU_PROCESS_BYTES
