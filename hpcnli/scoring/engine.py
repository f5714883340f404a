"""The scoring engine: label-word log-likelihoods at the answer position, in length-sorted batches.

Pairs that share a premise run the tokens their prompts have in common once, and every hypothesis
reuses that key/value cache (`eval.share_prefix`); same scores as whole prompts up to float rounding.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import torch

from hpcnli.config import PREFIX_CHUNK_BATCHES
from hpcnli.data.batching import BatchRule
from hpcnli.scoring.prompts import format_prompt, label_token_ids, pad_left, tokenize_prompts

log = logging.getLogger(__name__)


def shared_prefixes(keys: list[str], prompts: list[list[int]]) -> list[tuple[list[int], int]]:
    """Rows grouped by key (the premise): (row indices, n), n the tokens all their prompts start with.

    n is the longest common token prefix, so a group's tokens are exactly its prompts' own; it stops
    one token short of the shortest prompt so that every row keeps its answer position to compute.
    """
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    groups = []
    for rows in by_key.values():
        first = prompts[rows[0]]
        n = min(len(prompts[i]) for i in rows) - 1
        for i in rows[1:]:
            n = next((j for j in range(n) if prompts[i][j] != first[j]), n)
        if n > 0:
            groups.append((rows, n))
        else:  # nothing in common: each row on its own, all but its last token as the prefix
            groups.extend(([i], len(prompts[i]) - 1) for i in rows)
    return groups


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def shared_prefix_logits(
    model, prompts: list[list[int]], groups: list[tuple[list[int], int]], pad_id: int, rule: BatchRule
):
    """Answer-position logits of every row of `groups`, each group's prefix run once: yields (rows, logits).

    The groups' prefixes run in batches of `rule` (groups sorted by prefix length, so little padding);
    their key/value states are kept, left-padded to one width. Then all the rows, sorted by the length
    of what is left of their prompts, run in batches of `rule`, each on a cache gathered from its rows'
    groups (a row's width is its group's prefix plus its rest). Left padding sits before each prefix and
    before each rest, so explicit position ids keep every real token at the position it has in its whole prompt.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    groups_kv, pre_mask = _prefix_states(model, [prompts[rows[0]][:n] for rows, n in groups], pad_id, rule)
    pre_len = pre_mask.sum(-1)
    owner_of = {i: g for g, (rs, n) in enumerate(groups) for i in rs}
    widths = {i: (groups[g][1], len(prompts[i]) - groups[g][1]) for i, g in owner_of.items()}
    order = sorted(owner_of, key=lambda i: widths[i][1])
    for batch in rule.cut(order, widths):
        owner = torch.tensor([owner_of[i] for i in batch], device=device)
        width = int(pre_len[owner].max())  # prefixes are right-aligned: their last `width` columns hold them all
        cache = DynamicCache(
            ddp_cache_data=[(k[owner, :, -width:], v[owner, :, -width:]) for k, v in groups_kv], config=model.config
        )
        rest_ids, rest_mask = pad_left([prompts[i][widths[i][0] :] for i in batch], pad_id)
        rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
        out = model(
            input_ids=rest_ids,
            attention_mask=torch.cat([pre_mask[owner, -width:], rest_mask], dim=1),
            position_ids=pre_len[owner, None] + _positions(rest_mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        yield batch, out.logits[:, -1, :]


def _prefix_states(model, prefixes: list[list[int]], pad_id: int, rule: BatchRule):
    """Key/value states of `prefixes` (in batches of `rule`, in the given order, which is sorted by length),
    per layer [prefix, head, width, dim], left-padded; and their mask. Each batch's states are copied into
    tensors allocated once, so the chunk's caches are held once (not twice, as concatenating them would)."""
    device = next(model.parameters()).device
    width = max(map(len, prefixes))
    layers, mask_all, start = None, torch.zeros(len(prefixes), width, dtype=torch.long, device=device), 0
    for rows in rule.cut(list(range(len(prefixes))), [len(p) for p in prefixes]):
        ids, mask = pad_left([prefixes[i] for i in rows], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache = model(
            input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1
        ).cache
        if layers is None:
            layers = [
                tuple(x.new_zeros((len(prefixes), x.shape[1], width, x.shape[3])) for x in (k, v)) for k, v, *_ in cache
            ]
        end, w = start + len(rows), mask.shape[1]
        for (k_all, v_all), (k, v, *_) in zip(layers, cache):
            k_all[start:end, :, width - w :] = k
            v_all[start:end, :, width - w :] = v
        mask_all[start:end, width - w :] = mask
        start = end
    return layers, mask_all


def training_logits(model, cfg, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """What the loss reads: the 3 head logits ("head"), or the next-token logits at the answer position."""
    if cfg.task.scoring == "head":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return answer_logits(model, input_ids, attention_mask)


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the answer position only (the last one, with left padding)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
    return out.logits[:, -1, :]


def predict_with_pipeline(model, tokenizer, cfg, examples: list[dict]) -> list[dict]:
    """task.scoring "head": the classification head read through pipeline("text-classification")."""
    import math

    from peft import PeftModel
    from transformers import pipeline

    if isinstance(model, PeftModel):  # unmerged 4-bit model: the adapters stay active inside
        model = model.get_base_model()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    texts = [format_prompt(cfg.task.prompt, e) for e in examples]
    # with top_k=None, one list of {label, score} per text (transformers annotates a flat list of dicts)
    outputs = cast(
        "list[list[dict]]",
        classify(texts, batch_size=cfg.eval.batch_size, top_k=None, truncation=True, max_length=cfg.task.max_length),
    )
    rows = []
    for e, out in zip(examples, outputs):
        by_label = {d["label"]: d["score"] for d in out}
        s = [math.log(max(by_label[f"LABEL_{k}"], 1e-30)) for k in range(3)]
        rows.append({"id": e["id"], "gold": e["label"], "pred": max(range(3), key=s.__getitem__), "scores": s})
    return rows


# Groups whose prefix states are held at once, in batches: more sorts rows better (less padding), costs memory
# (hpcnli.model.footprint counts these caches).


def _prefix_chunks(
    examples: list[dict], prompts: list[list[int]], rule: BatchRule
) -> list[list[tuple[list[int], int]]]:
    """Premise groups sorted by shared length, PREFIX_CHUNK_BATCHES batches' worth of groups to a chunk
    (whose prefix states are kept together)."""
    groups = sorted(shared_prefixes([e["premise"].strip() for e in examples], prompts), key=lambda g: g[1])
    chunks = rule.times(PREFIX_CHUNK_BATCHES).cut(list(range(len(groups))), [n for _, n in groups])
    return [[groups[g] for g in chunk] for chunk in chunks]


def _whole_prompt_batches(prompts: list[list[int]], rule: BatchRule) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return rule.cut(order, [len(p) for p in prompts])


@torch.inference_mode()
def predict(
    model, tokenizer, cfg, examples: list[dict], timing: dict | None = None, columns: list[int] | None = None
) -> list[dict]:
    """Label-word scoring in length-sorted batches (eval.batch_size pairs, or eval.batch_tokens tokens);
    rows come back in the examples' order.

    With eval.share_prefix, pairs that share a premise run the common start of their prompts once.
    `timing`, when given, receives the first batch's seconds and pairs (kernel warm-up and caches filling
    show there, apart from the steady throughput of the rest). `columns`: the label words' columns of the
    model's logits; left out, their token ids (a full output layer; a fine-tune's narrowed one holds only them).
    """
    if cfg.task.scoring == "head":
        return predict_with_pipeline(model, tokenizer, cfg, examples)
    label_ids = torch.tensor(columns if columns is not None else label_token_ids(tokenizer, cfg.task.label_words))
    prompts = tokenize_prompts(tokenizer, cfg, examples)
    rule, pad_id = BatchRule.of(cfg.eval), tokenizer.pad_token_id
    device = next(model.parameters()).device
    shared = cfg.eval.share_prefix and all(len(p) > 1 for p in prompts)

    def batches():  # (rows, answer-position logits), batch after batch
        if shared:
            for chunk in _prefix_chunks(examples, prompts, rule):
                yield from shared_prefix_logits(model, prompts, chunk, pad_id, rule)
        else:
            for rows in _whole_prompt_batches(prompts, rule):
                input_ids, mask = pad_left([prompts[i] for i in rows], pad_id)
                yield rows, answer_logits(model, input_ids.to(device), mask.to(device))

    scores: list = [None] * len(prompts)
    done, t0 = 0, time.perf_counter()
    for b, (rows, logits) in enumerate(batches()):
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, label_ids.to(device)].cpu()  # waits for the device
        if b == 0 and timing is not None:
            timing.update(first_batch_s=time.perf_counter() - t0, first_batch_pairs=len(rows))
        for row, i in enumerate(rows):
            scores[i] = logprobs[row].tolist()
        done += len(rows)
        if b % 10 == 0 or done == len(prompts):
            log.info("scored %d/%d pairs", done, len(prompts))
    return [
        {"id": e["id"], "gold": e["label"], "pred": max(range(3), key=s.__getitem__), "scores": s}
        for e, s in zip(examples, scores)
    ]
