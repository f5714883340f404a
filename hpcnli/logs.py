"""One log format for every stage, so job logs read the same on a laptop and on a cluster."""

import logging
import os
import warnings


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("HPCNLI_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*GGUF.*")
