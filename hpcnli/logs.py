"""One log format for every stage, so job logs read the same on a laptop and on a cluster."""

import contextlib
import logging
import os
import sys
import warnings

from hpcnli.cluster.env import JobEnvironment


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not the stream that was current at set-up:
    a command called in-process (tests, notebooks) must not keep a handler on a stream that is closed later."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging() -> None:
    """Once per process in effect: a second call replaces the handler instead of adding one."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=JobEnvironment().log_level, handlers=[handler], force=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_notices()


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


_BNB_KERNELS = _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")


def quiet_known_notices() -> None:
    """Third-party notices every run printed that ask nothing of the user (issue 21). Each is matched by its
    own text, so any other warning from the same library still shows."""
    # PEFT asks every model it wraps for `is_gradient_checkpointing`, which transformers 5 deprecates in favour
    # of `is_activation_checkpointing`; hpcnli never reads it, and PEFT's next release will stop asking.
    warnings.filterwarnings(
        "ignore",
        message="`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )
    # bitsandbytes, on import on an AVX512-BF16 CPU, tries to fetch a faster 4-bit matmul from the Hub through the
    # `kernels` package. Offline it cannot; it then uses its own CPU kernels, which every figure here was measured
    # with (bench/RESULTS.md).
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _BNB_KERNELS not in bnb.filters:
        bnb.addFilter(_BNB_KERNELS)
    # matplotlib logs at INFO when it builds its font cache, the first time a report is drawn on a machine.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_loading(*loggers: str):
    """Around one call into transformers: no progress bars of its own (in a job log they are a line of carriage
    returns, and hpcnli logs what the step took), and the named loggers at ERROR, for notices known not to apply.
    Hub downloads keep their bars: they can be long, and how far one has got is news."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as hf_logging

    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    levels = {name: logging.getLogger(name).level for name in loggers}
    hf_logging.disable_progress_bar()  # the Hub's too
    if hub_bars:
        hub.enable_progress_bars()
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()  # the Hub's too
        if not hub_bars:
            hub.disable_progress_bars()
