"""The memory plan of jobs/phi2_snli_qlora.yaml on phi-2's config.json (meta device: no weights), before and after
the issue-20 changes, and the eval batches' padding on the SNLI files.

    python -m bench.phi2_plan [--data ../shared/snli/test.jsonl]

Rows of the plan (each a real `hpcnli.run.memory_plan.plan_memory` on phi-2's shape, SNLI prompt lengths from
SmolLM2's tokenizer, which phi-2's shares the order of magnitude of):
- before: phi-2's gelu_new as written (Python element-wise ops), resources.gpu_mem_gb read as the tensors' ceiling;
- gpu_mem_gb as what the card must have free: the ceiling less the CUDA context, / the allocator's reserve;
- and the fused gelu (gelu_pytorch_tanh, what hpcnli.model.loading.model_config now gives every stage).
"needs free" is what the card must have free for the plan's batches (footprint.device_bytes), for every row.
Then one eval shard's batches: real tokens against computed (padded) ones, whole prompts and shared premises.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from hpcnli.config import load_config
from hpcnli.data.batching import BatchRule
from hpcnli.data.nli import load_split, shard_bounds
from hpcnli.model import footprint, loading
from hpcnli.model.footprint import GiB
from hpcnli.run import memory_plan
from hpcnli.scoring.engine import _prefix_chunks, _whole_prompt_batches
from hpcnli.scoring.prompts import tokenize_prompts

PHI2 = dict(  # noqa: C408 (microsoft/phi-2's config.json)
    vocab_size=51200,
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    partial_rotary_factor=0.4,
    max_position_embeddings=2048,
    hidden_act="gelu_new",
    layer_norm_eps=1e-5,
    resid_pdrop=0.1,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


def phi2_dir(where: Path, tokenizer) -> Path:
    """phi-2's config.json with `tokenizer` beside it, and a placeholder weights file (planning reads no weights)."""
    import torch
    from safetensors.torch import save_file
    from transformers import PhiConfig

    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    PhiConfig(**PHI2, **ids).save_pretrained(where)
    tokenizer.save_pretrained(where)
    save_file({"placeholder": torch.zeros(1)}, where / "model.safetensors")
    return where


def plan_row(cfg, lengths, longest, patches) -> dict:
    with ExitStack() as stack:
        for target, value in patches:
            stack.enter_context(mock.patch(target, value))
        resolved, plan = memory_plan.plan_memory(cfg, loading.model_config(cfg), lengths, longest)
    train, ev = plan["stages"]["finetune"], plan["stages"]["eval"]
    return {
        "act": plan["shape"]["saved_per_token"] / 2**20,
        "train_tokens": resolved.train.batch_tokens,
        "train_tensors": train["total_bytes"] / GiB,
        "train_card": footprint.device_bytes(train["total_bytes"], gpu=True) / GiB,
        "eval_tokens": resolved.eval.batch_tokens,
        "eval_card": footprint.device_bytes(ev["total_bytes"], gpu=True) / GiB,
    }


def eval_padding(examples, prompts, rule) -> list[str]:
    """Real against computed tokens of one shard's eval batches, whole prompts and shared premises."""
    real = sum(map(len, prompts))
    whole = sum(len(b) * max(len(prompts[i]) for i in b) for b in _whole_prompt_batches(prompts, rule))
    prefix_real = held = rest_real = rest_padded = cache_width = 0
    for chunk in _prefix_chunks(examples, prompts, rule):
        width = max(n for _, n in chunk)
        held += len(chunk) * width  # each chunk's prefix states are kept at its longest prefix's width
        prefix_real += sum(n for _, n in chunk)
        owner = {i: n for rows, n in chunk for i in rows}
        order = sorted(owner, key=lambda i: len(prompts[i]) - owner[i])
        for batch in rule.cut(order, {i: (owner[i], len(prompts[i]) - owner[i]) for i in owner}):
            rest_real += sum(len(prompts[i]) - owner[i] for i in batch)
            rest_padded += len(batch) * max(len(prompts[i]) - owner[i] for i in batch)
            cache_width += len(batch) * max(owner[i] for i in batch)
    return [
        f"| whole prompts | {real:,} | {whole:,} | {whole / real:.2f} |",
        f"| shared premises: prefixes run | {prefix_real:,} | {prefix_real:,} (sorted batches) | 1.00 |",
        f"| shared premises: prefix states held | {prefix_real:,} | {held:,} | {held / prefix_real:.2f} |",
        f"| shared premises: the rest of each prompt | {rest_real:,} | {rest_padded:,} "
        f"| {rest_padded / rest_real:.2f} |",
        f"| shared premises: cache columns attended | — | {cache_width:,} | — |",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path("..") / "shared" / "snli" / "test.jsonl"))
    parser.add_argument("--train", default=str(Path("..") / "shared" / "snli" / "validation.jsonl"))
    args = parser.parse_args(argv)
    tokenizer = loading.load_tokenizer(load_config("jobs/snli_cpu.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        where = phi2_dir(Path(tmp), tokenizer)
        cfg = load_config(
            "jobs/phi2_snli_qlora.yaml",
            [f"model.name_or_path={where}", f"data.train={args.train}", f"data.test={args.data}"],
        )
        train, test = load_split(cfg, "train"), load_split(cfg, "test")
        lengths = [len(p) for p in tokenize_prompts(tokenizer, cfg, train.examples)]
        test_prompts = tokenize_prompts(tokenizer, cfg, test.examples)
        longest = max(map(len, test_prompts))
        unfused = ("hpcnli.model.loading.FUSED_ACTIVATIONS", {})
        tensors_ceiling = [
            ("hpcnli.run.memory_plan.GPU_CONTEXT_BYTES", 0),
            ("hpcnli.run.memory_plan.GPU_RESERVED_FACTOR", 1.0),
        ]
        rows = {
            "before: gelu_new, gpu_mem_gb the tensors' ceiling": plan_row(
                cfg, lengths, longest, [unfused, *tensors_ceiling]
            ),
            "gpu_mem_gb what the card must have free": plan_row(cfg, lengths, longest, [unfused]),
            "and gelu fused (gelu_pytorch_tanh): now": plan_row(cfg, lengths, longest, []),
        }
    print(
        f"jobs/phi2_snli_qlora.yaml on phi-2's config.json, resources.gpu_mem_gb {cfg.resources.gpu_mem_gb} GiB; "
        f"training prompts of {args.train}"
    )
    print(
        "\n| plan | saved MiB per training token | train batch_tokens | train tensors GiB | train needs free GiB "
        "| eval batch_tokens | eval needs free GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['act']:.2f} | {r['train_tokens']:,} | {r['train_tensors']:.1f} | {r['train_card']:.1f} "
            f"| {r['eval_tokens']:,} | {r['eval_card']:.1f} |"
        )
    lo, hi = shard_bounds(len(test.examples), cfg.eval.num_shards, 0)
    now = rows["and gelu fused (gelu_pytorch_tanh): now"]["eval_tokens"]
    rule = BatchRule.of(load_config(None, [f"eval.batch_tokens={now}"]).eval)
    print(
        f"\neval shard 0 of {cfg.eval.num_shards} ({hi - lo:,} pairs of {args.data}), batches of {now:,} tokens:\n"
        "\n| tokens | real | computed (padded) | ratio |\n|---|---|---|---|"
    )
    print("\n".join(eval_padding(test.examples[lo:hi], test_prompts[lo:hi], rule)))


if __name__ == "__main__":
    main()
