"""Datasets as MLflow run inputs: name, source, digest and size of every text source a stage reads.

One input per data source and split: the training rows a stage samples from (context `training`)
and the held-out rows it is scored on (context `validation`; the pipeline's table: `eval`). The
digest is sha256 of the packed token rows, so two runs show the same digest exactly when they saw
the same tokens (same text, tokenizer, split seed and sequence length), which the source path
alone cannot tell.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

CONTEXT_TAG = "mlflow.data.context"
_DIGEST_CHARS = 16  # MLflow keeps at most 36


def _source_type(spec: str) -> str:
    if spec.startswith("package:"):
        return "package"
    if spec.startswith(("/", ".", "~")) or "\\" in spec:
        return "local"
    return "hugging_face"


def rows_digest(rows) -> str:
    """sha256 (cut) of a token-row array or tensor: its shape, dtype and bytes."""
    array = np.ascontiguousarray(rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows))
    h = hashlib.sha256(f"{array.shape}/{array.dtype}".encode())
    h.update(array.tobytes())
    return h.hexdigest()[:_DIGEST_CHARS]


def describe_rows(spec: str, rows) -> dict[str, object]:
    """What a run records of token rows: their source, digest, row count and tokens (JSON-able, cacheable)."""
    shape = tuple(rows.shape)
    return {"source": spec, "digest": rows_digest(rows), "rows": int(shape[0]), "tokens": int(np.prod(shape))}


def described_input(name: str, description: dict[str, object], context: str):
    """One MLflow DatasetInput from describe_rows()' record."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    spec = str(description["source"])
    rows, tokens = int(description["rows"]), int(description["tokens"])
    dataset = Dataset(
        name=name,
        digest=str(description["digest"]),
        source_type=_source_type(spec),
        source=json.dumps({"uri": spec}),
        schema=json.dumps({"token_rows": {"dtype": "int64", "shape": [-1, tokens // max(rows, 1)]}}),
        profile=json.dumps({"num_rows": rows, "num_elements": tokens}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])


def dataset_input(name: str, spec: str, rows, context: str):
    """One MLflow DatasetInput for the token rows `rows` of source `spec`."""
    return described_input(name, describe_rows(spec, rows), context)


def log_datasets(mlflow_client, run_id: str, splits: Mapping[str, Mapping[str, tuple[str, object]]]) -> int:
    """Log every `splits[context][name] = (source spec, token rows)`; returns how many inputs were logged."""
    inputs = [dataset_input(name, spec, rows, context) for context, by_name in splits.items() for name, (spec, rows) in by_name.items()]
    if inputs:
        mlflow_client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def log_described(mlflow_client, run_id: str, context: str, described: Mapping[str, dict[str, object]]) -> int:
    """Log describe_rows() records {name: record} under `context`; returns how many."""
    inputs = [described_input(name, record, context) for name, record in described.items()]
    if inputs:
        mlflow_client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def data_splits(data_cfg, train: Mapping[str, object], validation: Mapping[str, object]) -> dict[str, dict[str, tuple[str, object]]]:
    """The `splits` of a training run: each source's training rows and held-out rows, with its path as the source."""
    specs = {src.name: src.path for src in data_cfg.sources}
    return {
        "training": {name: (specs.get(name, name), rows) for name, rows in train.items()},
        "validation": {name: (specs.get(name, name), rows) for name, rows in validation.items()},
    }
