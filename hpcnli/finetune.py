"""Stage 1: QLoRA fine-tuning (4-bit NF4 base + LoRA) through Accelerate.

The loss is the causal-LM loss of the label word at the answer position, the same position
the evaluation reads, so fine-tuning trains exactly the answer that is scored.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time

import torch

from hpcnli import data as nli_data
from hpcnli import modeling
from hpcnli.io import write_json
from hpcnli.paths import RunPaths
from hpcnli.config import load_config
from hpcnli.logs import setup_logging

log = logging.getLogger("hpcnli.finetune")


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def main(cfg, paths: RunPaths) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    t = cfg.train
    set_seed(t.seed)
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum)
    train = nli_data.load_split(cfg, "train")
    log.info("train set: %d examples from %s (%d without gold label dropped)",
             len(train.examples), train.source, train.dropped)

    t_load = time.perf_counter()
    tokenizer = modeling.load_tokenizer(cfg)
    label_ids = modeling.label_token_ids(tokenizer, cfg.task.label_words)
    model = modeling.add_lora(modeling.load_base_model(cfg), cfg)
    load_s = time.perf_counter() - t_load
    params = modeling.count_parameters(model)
    log.info("parameters: %s", params)

    prompts = modeling.tokenize_prompts(tokenizer, cfg, train.examples)
    answers = torch.tensor([label_ids[e["label"]] for e in train.examples])
    steps_per_epoch = math.ceil(math.ceil(len(prompts) / t.batch_size) / t.grad_accum)
    total_steps = t.max_steps if t.max_steps > 0 else steps_per_epoch * t.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    modeling.reset_peak_memory()

    step, seen, tokens, losses, window = 0, 0, 0, [], []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for idx in _batches(len(prompts), t.batch_size, t.seed, epoch):
            with accelerator.accumulate(model):
                input_ids, mask = modeling.pad_left([prompts[i] for i in idx], tokenizer.pad_token_id)
                logits = modeling.answer_logits(model, input_ids.to(accelerator.device), mask.to(accelerator.device))
                loss = torch.nn.functional.cross_entropy(logits.float(), answers[idx].to(accelerator.device))
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            seen += len(idx)
            tokens += int(mask.sum())
            window.append(loss.item())
            if accelerator.sync_gradients:
                step += 1
                if step % t.log_every == 0 or step == total_steps:
                    mean = sum(window) / len(window)
                    losses.append({"step": step, "examples_seen": seen, "loss": mean,
                                   "lr": scheduler.get_last_lr()[0], "elapsed_s": time.perf_counter() - t0})
                    log.info("step %d/%d loss %.4f (%.1f examples/s)", step, total_steps, mean,
                             seen / (time.perf_counter() - t0))
                    window = []
                if step >= total_steps:
                    break
        if step >= total_steps:
            break
    runtime = time.perf_counter() - t0

    accelerator.wait_for_everyone()
    metrics = {
        "train_examples": len(train.examples), "train_source": train.source, "dropped": train.dropped,
        "steps": step, "examples_seen": seen, "epochs": epochs,
        "runtime_s": runtime, "model_load_s": load_s,
        "examples_per_s": seen / runtime, "tokens_per_s": tokens / runtime,
        "final_loss": losses[-1]["loss"] if losses else None,
        "best_loss": min(r["loss"] for r in losses) if losses else None,
        "loss_curve": losses, "parameters": params, "memory": modeling.peak_memory(),
        "device": modeling.device_name(), "num_processes": accelerator.num_processes,
        "effective_batch_size": t.batch_size * t.grad_accum * accelerator.num_processes,
    }
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(paths.adapter, safe_serialization=True)
        metrics["adapter_bytes"] = sum(f.stat().st_size for f in paths.adapter.rglob("*") if f.is_file())
        write_json(paths.train_metrics, metrics)
        log.info("trained %d steps in %.1f s; adapter in %s", step, runtime, paths.adapter)
    return metrics


def cli(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="run directory made by hpcnli.submit (holds config.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    paths = RunPaths(args.run_dir)
    main(load_config(paths.config), paths)


if __name__ == "__main__":
    cli()
