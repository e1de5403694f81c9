"""What a run prints: its own progress and results, not the libraries' bars and chatter.

`quiet_libraries()` is called by every entry point that runs a stage (the CLI, the pipeline, a Prefect
worker's stage task). It turns off transformers' and huggingface_hub's per-file "Loading weights" bars,
which interleave with a stage's own progress bar and fill a log file with carriage returns, and keeps
their info logs and advisory warnings out (and the tokenizers' fork warning). llama.cpp's log has its own sink (export/llamacpp_log.py). Environment
values a user set are kept: the defaults apply only where nothing is set.
"""

from __future__ import annotations

import os
import sys

_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_libraries() -> None:
    """Silence third-party progress bars (idempotent; effective whether or not transformers is imported yet)."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
