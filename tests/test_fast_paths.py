"""The fast paths give what the simple paths give, on a small real set (speed itself: bench/eval_speed.py, bench/train_speed.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import ROOT, SNLI
from bench.eval_speed import per_example_loop
from hpcnli.config import load_config
from hpcnli.data import nli
from hpcnli.finetune import _batches
from hpcnli.model import loading
from hpcnli.scoring import engine
from hpcnli.scoring.prompts import label_token_ids, pad_left, tokenize_prompts
from hpcnli.scoring.engine import predict

needs_snli = pytest.mark.skipif(not (SNLI / "test.jsonl").is_file(), reason="../shared/snli not present")
OVERRIDES = [f"data.test={SNLI / 'test.jsonl'}", "data.max_test_examples=40", "eval.batch_size=16"]
CONFIG = str(ROOT / "jobs" / "snli_cpu.yaml")


@pytest.fixture(scope="module")
def snli_cfg():
    return load_config(CONFIG, OVERRIDES)


def _scores(rows) -> torch.Tensor:
    return torch.tensor([r["scores"] for r in rows])


@needs_snli
def test_batched_scoring_matches_one_example_at_a_time(snli_cfg):
    examples = nli.load_split(snli_cfg, "test").examples
    tokenizer = loading.load_tokenizer(snli_cfg)
    model = loading.load_eval_model(snli_cfg, None).eval()
    batched = predict(model, tokenizer, snli_cfg, examples)
    single = per_example_loop(model, tokenizer, snli_cfg, examples)
    assert [r["pred"] for r in batched] == single
    assert [r["id"] for r in batched] == [e["id"] for e in examples]


@needs_snli
def test_dequantized_weights_score_like_the_4bit_model(snli_cfg):
    examples = nli.load_split(snli_cfg, "test").examples
    tokenizer = loading.load_tokenizer(snli_cfg)
    runs = {}
    for weights in ("dequantized", "4bit"):
        cfg = load_config(CONFIG, OVERRIDES + [f"eval.weights={weights}"])
        runs[weights] = predict(loading.load_eval_model(cfg, None).eval(), tokenizer, cfg, examples)
    torch.testing.assert_close(_scores(runs["dequantized"]), _scores(runs["4bit"]), atol=2e-3, rtol=0)


@needs_snli
@pytest.mark.parametrize("weights", ["dequantized", "4bit"])
def test_shared_premise_prefix_scores_like_whole_prompts(weights, tmp_path):
    """The premise runs once per group: same scores as whole prompts, also through an unmerged 4-bit adapter."""
    # batch size 4: several prefix batches of different widths, merged into one chunk
    small = OVERRIDES + [f"eval.weights={weights}", "eval.batch_size=4"]
    cfg = load_config(CONFIG, small + ["data.max_test_examples=0"])
    examples = nli.load_split(cfg, "test").examples[:45]  # in file order: a premise's pairs are together
    tokenizer = loading.load_tokenizer(cfg)
    prompts = tokenize_prompts(tokenizer, cfg, examples)
    groups = engine.shared_prefixes([e["premise"] for e in examples], prompts)
    assert sorted(i for rows, _ in groups for i in rows) == list(range(len(examples)))
    assert len(groups) <= len(examples) // 2  # SNLI has about 3 hypotheses per premise
    for rows, n in groups:
        assert all(prompts[i][:n] == prompts[rows[0]][:n] and n < len(prompts[i]) for i in rows)
    adapter = None
    if weights == "4bit":  # a LoRA adapter that changes the scores (a fresh one is a no-op: B = 0)
        peft_model = loading.add_lora(loading.load_base_model(cfg), cfg)
        torch.manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        adapter = tmp_path / "adapter"
        peft_model.save_pretrained(adapter)
    model = loading.load_eval_model(cfg, adapter).eval()
    shared = predict(model, tokenizer, cfg, examples)
    whole = predict(model, tokenizer, load_config(CONFIG, small + ["eval.share_prefix=false"]), examples)
    torch.testing.assert_close(_scores(shared), _scores(whole), atol=1e-4, rtol=0)
    assert [r["pred"] for r in shared] == [r["pred"] for r in whole]
    if adapter is not None:
        base = predict(loading.load_eval_model(cfg, None).eval(), tokenizer, cfg, examples)
        assert (_scores(base) - _scores(shared)).abs().max() > 1e-2


def test_narrowed_output_layer_gives_the_label_word_logits():
    cfg = load_config(None, ["data.max_train_examples=6"])
    tokenizer = loading.load_tokenizer(cfg)
    label_ids = label_token_ids(tokenizer, cfg.task.label_words)
    model = loading.add_lora(loading.load_base_model(cfg), cfg)
    ids, mask = pad_left(tokenize_prompts(tokenizer, cfg, nli.load_split(cfg, "train").examples),
                                  tokenizer.pad_token_id)
    with torch.no_grad():
        full = engine.answer_logits(model, ids, mask)[:, label_ids]
        loading.narrow_output_layer(model.get_base_model(), label_ids)
        narrow = engine.answer_logits(model, ids, mask)
    assert narrow.shape == (6, 3)
    torch.testing.assert_close(narrow, full)


def test_length_grouped_batches_cover_every_example_once_and_repeat():
    lengths = [(i * 37) % 50 + 5 for i in range(1000)]
    batches = _batches(lengths, 16, seed=3, epoch=1, by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == _batches(lengths, 16, seed=3, epoch=1, by_length=True)
    assert batches != _batches(lengths, 16, seed=3, epoch=2, by_length=True)
    # Grouping cuts padding: the summed batch widths shrink against random batches.
    width = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert width(batches) < 0.8 * width(_batches(lengths, 16, seed=3, epoch=1, by_length=False))


def test_top_layers_adapt_only_the_top_layers_and_backward_stops_there():
    cfg = load_config(None, ["lora.top_layers=3", "lora.target_modules=[q_proj, v_proj]"])
    model = loading.add_lora(loading.load_base_model(cfg), cfg)
    n_layers = model.config.num_hidden_layers
    adapted = Counter(int(name.split(".layers.")[1].split(".")[0])
                      for name, p in model.named_parameters() if p.requires_grad)
    assert set(adapted) == set(range(n_layers - 3, n_layers))
    tokenizer = loading.load_tokenizer(cfg)
    ids, mask = pad_left(tokenize_prompts(tokenizer, cfg, nli.load_split(cfg, "train").examples[:4]),
                                  tokenizer.pad_token_id)
    seen = []
    hooks = [layer.register_full_backward_hook(lambda m, gi, go, i=i: seen.append(i))
             for i, layer in enumerate(model.base_model.model.model.layers)]
    engine.answer_logits(model, ids, mask).sum().backward()
    for h in hooks:
        h.remove()
    assert set(seen) == set(range(n_layers - 3, n_layers))
