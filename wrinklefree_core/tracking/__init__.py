"""MLflow records of every run: the store, run tags, params, datasets, system metrics, the model registry.

Nothing here imports Lightning or Prefect: the training logger (training/tracking.py), the
convert/export stages and the orchestration layer (tasks/, flows/) all record through these
modules, so a run looks the same whichever of them made it.
"""
