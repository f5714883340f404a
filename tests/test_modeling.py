"""The offline model path from scratch: the packaged GGUF converted to safetensors in an empty cache, and the
smoke config's tiny random model cut from it, the same weights in every cache (seeded); a first run says what it
does and nothing else (issue 21: test_quiet lists the notices)."""

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
from test_quiet import NOISE

pytestmark = [pytest.mark.model, pytest.mark.real_model]

# From an empty cache, what the stages do with the models: resolve both packaged models (converting the GGUF, then
# cutting the tiny one from it), load each; then, as a first smoke run does, load the tiny one in 4-bit and add LoRA
# (finetune), load it again dequantized and save it (evaluate), and draw with matplotlib (reduce).
FIRST_RUN = """
import sys
from hpcnli.config import load_config
from hpcnli.logs import setup_logging
from hpcnli.model import loading, memory
setup_logging()
for config in ("jobs/default.yaml", "jobs/smoke.yaml"):
    cfg = load_config(config)
    loading.import_model_libraries(cfg)
    where, _ = loading.resolve_model(cfg.model)
    model = loading.load_base_model(cfg)
    tok = loading.load_tokenizer(cfg)
    print(where, memory.count_parameters(model)["total"], tok.padding_side, len(tok))
loading.add_lora(loading.load_base_model(cfg, "train"), cfg)
loading.save_eval_model(loading.load_eval_model(cfg, None), sys.argv[1])
import matplotlib.font_manager
print("done")
"""


def test_a_first_run_makes_each_packaged_model_once_and_says_nothing_else(tmp_path):
    """The offline path from scratch, and a first run's output (issue 21): hpcnli's own lines, not third-party
    notices that ask nothing of the user. One process does both: each conversion is the slow part."""
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_RUN, str(tmp_path / "eval_model")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HPCNLI_CACHE": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl")},
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    *_, real, tiny, done = (line.split() for line in proc.stdout.splitlines())
    assert done == ["done"]
    heard = {what: text for what, text in NOISE.items() if text in out}
    assert not heard, f"known notices printed: {sorted(heard)}\n{out[-3000:]}"
    converting = [line for line in proc.stderr.splitlines() if "converting the packaged" in line]
    assert len(converting) == 1, proc.stderr  # once, though the 135M model is resolved again for the tiny one
    assert " INFO hpcnli.model.packaged: " in converting[0]
    assert str(tmp_path / "cache" / "models" / "smollm2-135m-instruct") in converting[0]
    assert proc.stderr.count("making the tiny random") == 1
    models = tmp_path / "cache" / "models"
    # SmolLM2-135M, 4-bit weights counted unpacked; the tiny model has its tokenizer and architecture, 2 layers of 64
    assert real == [str(models / "smollm2-135m-instruct"), "134515008", "left", "49152"]
    assert tiny == [str(models / "smollm2-tiny-random"), "3219776", "left", "49152"]
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
