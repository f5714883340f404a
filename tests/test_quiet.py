"""A first run prints hpcnli's own lines, not third-party notices that ask nothing of the user (issue 21): the
notices and their filters. test_modeling runs a first run in an empty cache and checks that none of NOISE shows."""

import logging
import warnings

from hpcnli.logs import quiet_known_notices

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
