"""Prompts as token ids: the label words, the filled-in template, left padding."""

from __future__ import annotations

import torch

from hpcnli.model.errors import ModelError


def label_token_ids(tokenizer, label_words) -> list[int]:
    ids = []
    for word in label_words:
        toks = tokenizer(word, add_special_tokens=False).input_ids
        if len(toks) != 1:
            raise ModelError(
                f"task.label_words: {word!r} is {len(toks)} tokens for this tokenizer; "
                "each label word must be one token (a leading space often helps)"
            )
        ids.append(toks[0])
    return ids


def format_prompt(template: str, example: dict) -> str:
    return template.replace("{premise}", example["premise"].strip()).replace(
        "{hypothesis}", example["hypothesis"].strip()
    )


def tokenize_prompts(tokenizer, cfg, examples: list[dict]) -> list[list[int]]:
    texts = [format_prompt(cfg.task.prompt, e) for e in examples]
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=cfg.task.max_length).input_ids


def pad_left(batch_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, ids in enumerate(batch_ids):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        mask[i, width - len(ids) :] = 1
    return input_ids, mask
