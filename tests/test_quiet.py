"""A first run prints hpcnli's own lines, not third-party notices that ask nothing of the user (issue 21)."""

import logging
import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT
from hpcnli.logs import quiet_known_notices

# What a stage does with the model, from an empty cache: convert the packaged GGUF, load it in 4-bit and add
# LoRA (finetune), load it again dequantized and save it (evaluate), and draw with matplotlib (reduce).
STAGES = """
import sys
from hpcnli.config import load_config
from hpcnli.logs import setup_logging
from hpcnli.model import loading
setup_logging()
cfg = load_config("jobs/smoke.yaml")
loading.import_model_libraries(cfg)
loading.add_lora(loading.load_base_model(cfg, "train"), cfg)
loading.save_eval_model(loading.load_eval_model(cfg, None), sys.argv[1])
import matplotlib.font_manager
print("done")
"""

# Each notice a first run printed before issue 21, by the text that gives it away.
NOISE = {
    "transformers' GGUF dtype advice": "Loading a GGUF checkpoint",
    "the GGUF reader's progress bar": "Converting and de-quantizing",
    "transformers' load progress bar": "Loading weights",
    "transformers' save progress bar": "Writing model shards",
    "any other progress bar": "it/s]",
    "bitsandbytes' Hub kernel": "kernels-community",
    "PEFT's deprecated is_gradient_checkpointing": "is_gradient_checkpointing",
    "any FutureWarning": "FutureWarning",
    "transformers' dequantize dtype note": "The modules are dequantized",
    "matplotlib's font cache": "generated new fontManager",
}


@pytest.mark.model
def test_a_first_run_says_what_it_does_and_nothing_else(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", STAGES, str(tmp_path / "eval_model")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HPCNLI_CACHE": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl")},
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert proc.stdout.strip() == "done"
    heard = {what: text for what, text in NOISE.items() if text in out}
    assert not heard, f"known notices printed: {sorted(heard)}\n{out[-3000:]}"
    converting = [line for line in proc.stderr.splitlines() if "converting the packaged" in line]
    assert len(converting) == 1, proc.stderr  # once, though the model is resolved three times
    assert " INFO hpcnli.model.packaged: " in converting[0]
    assert str(tmp_path / "cache" / "models" / "smollm2-135m-instruct") in converting[0]


def test_the_filters_are_narrow(caplog):
    """Other warnings from the same places still show."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_notices()
        for text in ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", "something else"):
            warnings.warn_explicit(text, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
    assert [str(w.message) for w in caught] == ["something else"]
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
        bnb.warning("something else")
    assert [r.getMessage() for r in caplog.records if r.name == bnb.name] == ["something else"]
