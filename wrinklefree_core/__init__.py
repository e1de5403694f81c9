"""WrinkleFree core: ternary (1.58-bit) BitNet quantization, models, objectives and export.

This package is plain torch (+ optional Triton on CUDA). It never imports Prefect or SkyPilot:
orchestration lives in the top-level `flows/` and `tasks/` packages and calls in through `cli.py`.
"""

__version__ = "0.1.0"
