"""The offline model path from scratch: the packaged GGUF converted to safetensors in an empty cache, and the
smoke config's tiny random model cut from it, the same weights in every cache (seeded)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from hpcnli.config import load_config
from hpcnli.model import loading

pytestmark = [pytest.mark.model, pytest.mark.real_model]

CONVERT = """
from hpcnli.config import load_config
from hpcnli.logs import setup_logging
from hpcnli.model import loading, memory
setup_logging()
for config in ("jobs/default.yaml", "jobs/smoke.yaml"):
    cfg = load_config(config)
    where, _ = loading.resolve_model(cfg.model)
    model = loading.load_base_model(cfg)
    tok = loading.load_tokenizer(cfg)
    print(where, memory.count_parameters(model)["total"], tok.padding_side, len(tok))
"""


def test_packaged_models_are_made_once_into_an_empty_cache(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CONVERT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HPCNLI_CACHE": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    real, tiny = (line.split() for line in proc.stdout.splitlines()[-2:])
    models = tmp_path / "models"
    # SmolLM2-135M, 4-bit weights counted unpacked; the tiny model has its tokenizer and architecture, 2 layers of 64
    assert real == [str(models / "smollm2-135m-instruct"), "134515008", "left", "49152"]
    assert tiny == [str(models / "smollm2-tiny-random"), "3219776", "left", "49152"]
    assert proc.stderr.count("converting the packaged") == 1 and proc.stderr.count("making the tiny random") == 1
    smoke = load_config(ROOT / "jobs" / "smoke.yaml")
    config = loading.model_config(smoke)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (
        "llama",
        2,
        64,
        2,
    )
    # seeded: the tiny model made in this empty cache has the weights of the one every other test uses
    here = load_file(models / "smollm2-tiny-random" / "model.safetensors")
    used = load_file(Path(loading.resolve_model(smoke.model)[0]) / "model.safetensors")
    assert here.keys() == used.keys() and all(torch.equal(here[k], used[k]) for k in here)
