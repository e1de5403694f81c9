"""`evaluate_artifact`: held-out perplexity of one pipeline artifact as a cached Prefect task.

Design choices:
- Cached like the stages (persisted JSON results under `<cache>/prefect-results`): the key is the
  artifact's digest plus the evaluation settings (data, sequence length, batch size, row cap), not
  its label, so an unchanged teacher or checkpoint is scored once across pipeline runs.
- Evaluation is not a stage: it writes no artifact and gets no MLflow run of its own; the flow puts
  the numbers into one table on the pipeline's MLflow run and a Prefect table artifact.
- Runs in-process on whatever device is here (CPU in tests); SkyPilot stages still evaluate their
  outputs locally, after downloading gs:// artifacts through the storage layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.digest import artifact_digest, json_key
from tasks.evaluation import evaluate_local
from tasks.stage_task import result_storage
from wrinklefree_core.config import compose
from wrinklefree_core.config.run import RunConfig


def eval_config(overrides: list[str]) -> RunConfig:
    """The RunConfig whose data / training.seq_len / training.batch_size define the held-out rows."""
    return compose("eval", list(overrides))


def _local(uri: str, cfg: RunConfig) -> Path:
    if uri.startswith("gs://"):
        from wrinklefree_core.storage.artifacts import resolve_input

        if uri.endswith(".gguf"):
            folder, name = uri.rsplit("/", 1)
            return resolve_input(folder, cfg.gcs) / name
        return resolve_input(uri, cfg.gcs)
    return Path(uri).expanduser()


def eval_cache_key(context, parameters: dict[str, Any]) -> str:
    """Prefect cache_key_fn: artifact digest + the settings that choose and score the rows."""
    cfg = eval_config(parameters["overrides"])
    digest = artifact_digest(_local(parameters["uri"], cfg))
    settings = {"data": cfg.data.model_dump(mode="json"), "seq_len": cfg.training.seq_len, "batch_size": cfg.training.batch_size}
    return "eval-" + json_key(digest, settings, parameters.get("max_sequences"), cfg.compute.device)


@task(
    name="evaluate",
    task_run_name="eval-{label}",
    cache_key_fn=eval_cache_key,
    persist_result=True,
    result_serializer="json",
)
def evaluate_artifact(label: str, uri: str, overrides: list[str], max_sequences: int | None = None) -> dict[str, Any]:
    """Perplexity per held-out source of the artifact at `uri` (HF folder, BitNet checkpoint or .gguf).

    Returns {"label", "uri", "kind", "seq_len", "sources": {name: {loss, perplexity, tokens}}, "loss", "perplexity"}.
    """
    cfg = eval_config(overrides)
    result = evaluate_local(_local(uri, cfg), cfg, max_sequences)
    result.update(label=label, uri=uri)
    get_run_logger().info("%s: perplexity %.3f (%s, %s)", label, result["perplexity"], result["kind"], uri)
    return result


def call_eval(label: str, uri: str, overrides: list[str], max_sequences: int | None = None, refresh: bool = False) -> dict[str, Any]:
    """Run `evaluate_artifact` from a flow with persisted results; adds `cached` to the result."""
    configured = evaluate_artifact.with_options(result_storage=result_storage(), refresh_cache=refresh)
    state = configured(label, uri, list(overrides), max_sequences, return_state=True)
    result = dict(state.result())
    result["label"] = label  # a cache hit carries the label of the run that computed it
    result["cached"] = state.name == "Cached"
    return result
