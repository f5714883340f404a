"""The offline model path from scratch: the packaged GGUF converted to safetensors in an empty cache."""

import os
import subprocess
import sys

from conftest import ROOT

CONVERT = """
import torch
from hpcnli.model import loading, memory
from hpcnli.config import load_config
cfg = load_config("jobs/smoke.yaml")
where, _ = loading.resolve_model(cfg.model)
print(where)
model = loading.load_base_model(cfg)
tok = loading.load_tokenizer(cfg)
print(memory.count_parameters(model)["total"], tok.padding_side)
"""


def test_packaged_model_converts_into_an_empty_cache(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CONVERT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HPCNLI_CACHE": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, line = proc.stdout.split("\n")[-3:-1]
    assert where == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    total, side = line.split()
    assert int(total) == 134_515_008 and side == "left"  # SmolLM2-135M, 4-bit weights counted unpacked
