"""One log format for every stage, so job logs read the same on a laptop and on a cluster."""

import logging
import os
import sys
import warnings


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
    logging.basicConfig(level=os.environ.get("HPCNLI_LOG_LEVEL", "INFO"), handlers=[handler], force=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*GGUF.*")
