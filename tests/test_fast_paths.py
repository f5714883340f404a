"""The fast paths give what the simple paths give, on a small real set (speed itself: bench/eval_speed.py,
bench/train_speed.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bench.eval_speed import per_example_loop
from conftest import ROOT, SNLI
from hpcnli.config import load_config
from hpcnli.data import nli
from hpcnli.data.batching import BatchRule
from hpcnli.data.batching import epoch_batches as _batches
from hpcnli.model import loading
from hpcnli.scoring import engine
from hpcnli.scoring.engine import predict
from hpcnli.scoring.prompts import label_token_ids, pad_left, tokenize_prompts

needs_snli = pytest.mark.skipif(not (SNLI / "test.jsonl").is_file(), reason="../shared/snli not present")
CONFIG = str(ROOT / "jobs" / "snli_cpu.yaml")
# Every equivalence test runs in both dtypes, whatever the machine: model.dtype forced, not "auto".
DTYPES = ["float32", "bfloat16"]
# bfloat16 keeps 8 bits of mantissa. Two paths that compute the same scores in exact arithmetic
# (batched or one by one, shared prefix or whole prompt, 4-bit or dequantized) give label-word
# log-likelihoods up to about 0.5 nats apart in bf16 (measured: bench/RESULTS.md, "Choosing the
# dtype"). So in bf16 the scores must agree within BF16_ATOL, and a prediction may differ only where
# the two best label words lie within BF16_ATOL of each other: a near-tie, which the base model (at
# chance) has many of. Agreement on a fine-tuned model is tested in test_pipeline.py.
BF16_ATOL = 1.0


def four_bit_precision(model) -> str:
    """What a 4-bit layer of `model` computes in, measured: on CPUs with AVX512-BF16 or AMX, bitsandbytes'
    4-bit CPU kernel computes in bf16 precision even when asked for float32 (its output is ~0.07 from a
    float32 product with the same dequantized weights), elsewhere exactly in float32."""
    import bitsandbytes as bnb

    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    x = torch.randn(4, 3, layer.in_features, dtype=layer.compute_dtype or torch.float32)
    with torch.no_grad():
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(x.dtype)
        exact = torch.nn.functional.linear(x, w, layer.bias)
        diff = (layer(x) - exact).abs().max().item()
    return "float32" if x.dtype == torch.float32 and diff <= 1e-4 * exact.abs().max().item() else "bfloat16"


def overrides(dtype: str) -> list[str]:
    return [
        f"data.test={SNLI / 'test.jsonl'}",
        "data.max_test_examples=12",  # two batches of 8 and 4: batching, padding and widths all exercised
        "eval.batch_size=8",
        f"model.dtype={dtype}",
        f"quantization.compute_dtype={dtype}",
    ]


def _scores(rows) -> torch.Tensor:
    return torch.tensor([r["scores"] for r in rows])


def margin(scores: list[float]) -> float:
    """How far the best label word is ahead of the second."""
    top = sorted(scores, reverse=True)
    return top[0] - top[1]


def assert_same_answers(a: list[dict], b: list[dict], dtype: str, atol: float) -> None:
    """float32: scores within atol and every prediction equal. bfloat16: scores within BF16_ATOL, and
    predictions equal except near-ties, which are counted in the message rather than hidden."""
    assert [r["id"] for r in a] == [r["id"] for r in b]
    if dtype == "float32":
        torch.testing.assert_close(_scores(a), _scores(b), atol=atol, rtol=0)
        assert [r["pred"] for r in a] == [r["pred"] for r in b]
        return
    torch.testing.assert_close(_scores(a), _scores(b), atol=BF16_ATOL, rtol=0)
    differ = [(x, y) for x, y in zip(a, b) if x["pred"] != y["pred"]]
    not_ties = [x["id"] for x, y in differ if min(margin(x["scores"]), margin(y["scores"])) >= BF16_ATOL]
    assert not not_ties, f"bf16 predictions differ beyond a near-tie for {not_ties}"
    print(f"bf16: {len(differ)} of {len(a)} predictions differ, all near-ties (margin < {BF16_ATOL} nats)")


@pytest.mark.real_model
@needs_snli
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_scoring_matches_one_example_at_a_time(dtype):
    cfg = load_config(CONFIG, overrides(dtype))
    examples = nli.load_split(cfg, "test").examples
    tokenizer = loading.load_tokenizer(cfg)
    model = loading.load_eval_model(cfg, None).eval()
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    batched = predict(model, tokenizer, cfg, examples)
    single = per_example_loop(model, tokenizer, cfg, examples)
    assert [r["id"] for r in batched] == [e["id"] for e in examples]
    if dtype == "float32":
        assert [r["pred"] for r in batched] == single
    else:  # the loop gives predictions only: a difference must be a near-tie of the batched scores
        differ = [r for r, p in zip(batched, single) if r["pred"] != p]
        assert all(margin(r["scores"]) < BF16_ATOL for r in differ), differ


@pytest.mark.real_model
@needs_snli
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantized_weights_score_like_the_4bit_model(dtype):
    cfg = load_config(CONFIG, overrides(dtype))
    examples = nli.load_split(cfg, "test").examples
    tokenizer = loading.load_tokenizer(cfg)
    runs, models = {}, {}
    for weights in ("dequantized", "4bit"):
        cfg = load_config(CONFIG, overrides(dtype) + [f"eval.weights={weights}"])
        models[weights] = loading.load_eval_model(cfg, None).eval()
        runs[weights] = predict(models[weights], tokenizer, cfg, examples)
    assert_same_answers(runs["dequantized"], runs["4bit"], four_bit_precision(models["4bit"]), atol=2e-3)


@pytest.mark.real_model
@needs_snli
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", ["dequantized", "4bit"])
def test_shared_premise_prefix_scores_like_whole_prompts(weights, dtype, tmp_path):
    """The premise runs once per group: same scores as whole prompts, also through an unmerged 4-bit adapter."""
    # batch size 4: several prefix batches of different widths, merged into one chunk
    small = overrides(dtype) + [f"eval.weights={weights}", "eval.batch_size=4"]
    cfg = load_config(CONFIG, small + ["data.max_test_examples=0"])
    examples = nli.load_split(cfg, "test").examples[:12]  # in file order: a premise's pairs are together
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
    assert_same_answers(shared, whole, four_bit_precision(model) if weights == "4bit" else dtype, atol=1e-4)
    if adapter is not None:
        base = predict(loading.load_eval_model(cfg, None).eval(), tokenizer, cfg, examples)
        assert (_scores(base) - _scores(shared)).abs().max() > 1e-2


@pytest.mark.real_model
def test_narrowed_output_layer_gives_the_label_word_logits():
    cfg = load_config(None, ["data.max_train_examples=6"])
    tokenizer = loading.load_tokenizer(cfg)
    label_ids = label_token_ids(tokenizer, cfg.task.label_words)
    model = loading.add_lora(loading.load_base_model(cfg), cfg)
    ids, mask = pad_left(
        tokenize_prompts(tokenizer, cfg, nli.load_split(cfg, "train").examples), tokenizer.pad_token_id
    )
    with torch.no_grad():
        full = engine.answer_logits(model, ids, mask)[:, label_ids]
        loading.narrow_output_layer(model.get_base_model(), label_ids)
        narrow = engine.answer_logits(model, ids, mask)
    assert narrow.shape == (6, 3)
    torch.testing.assert_close(narrow, full)


def test_length_grouped_batches_cover_every_example_once_and_repeat():
    lengths = [(i * 37) % 50 + 5 for i in range(1000)]
    batches = _batches(lengths, BatchRule(rows=16), seed=3, epoch=1, by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == _batches(lengths, BatchRule(rows=16), seed=3, epoch=1, by_length=True)
    assert batches != _batches(lengths, BatchRule(rows=16), seed=3, epoch=2, by_length=True)
    # Grouping cuts padding: the summed batch widths shrink against random batches.
    width = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert width(batches) < 0.8 * width(_batches(lengths, BatchRule(rows=16), seed=3, epoch=1, by_length=False))


@pytest.mark.real_model
def test_top_layers_adapt_only_the_top_layers_and_backward_stops_there():
    cfg = load_config(None, ["lora.top_layers=3", "lora.target_modules=[q_proj, v_proj]"])
    model = loading.add_lora(loading.load_base_model(cfg), cfg)
    n_layers = model.config.num_hidden_layers
    adapted = Counter(
        int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters() if p.requires_grad
    )
    assert set(adapted) == set(range(n_layers - 3, n_layers))
    tokenizer = loading.load_tokenizer(cfg)
    ids, mask = pad_left(
        tokenize_prompts(tokenizer, cfg, nli.load_split(cfg, "train").examples[:4]), tokenizer.pad_token_id
    )
    seen = []
    hooks = [
        layer.register_full_backward_hook(lambda m, gi, go, i=i: seen.append(i))
        for i, layer in enumerate(model.base_model.model.model.layers)
    ]
    engine.answer_logits(model, ids, mask).sum().backward()
    for h in hooks:
        h.remove()
    assert set(seen) == set(range(n_layers - 3, n_layers))
