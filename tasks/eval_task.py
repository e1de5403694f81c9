"""`evaluate_artifact`: held-out perplexity of one pipeline artifact as a cached Prefect task.

Design choices:
- Cached like the stages (persisted JSON results under `<cache>/prefect-results`): the key is the
  artifact's digest plus the evaluation settings (data, sequence length, batch size, row cap), not
  its label, so an unchanged teacher or checkpoint is scored once across pipeline runs.
- Evaluation is not a stage: it writes no artifact and gets no MLflow run of its own; the flow puts
  the numbers into one table on the pipeline's MLflow run and a Prefect table artifact.
- Runs in-process on whatever device is here (CPU in tests); SkyPilot stages still evaluate their
  outputs locally, after downloading gs:// artifacts through the storage layer.
- The llama.cpp baselines (`make_baselines`) are cached by evaluation/ptq.py itself, under the cache
  folder, keyed by the teacher's files; the task only makes them visible in the flow run.
- Timings (`time_ggufs`) are cached like perplexity, with the machine (CPU model, CPU count) in the
  key: a cached timing is one this machine measured for exactly these files and settings. All GGUFs
  of the table are timed in one task, so their numbers compare (evaluation/speed.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.digest import artifact_digest, json_key
from wrinklefree_core.evaluation.perplexity import evaluate_local
from wrinklefree_core.evaluation.ptq import ptq_files
from wrinklefree_core.evaluation.speed import machine, measure_speed
from tasks.stage_task import result_storage
from wrinklefree_core.config import compose
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.uri import is_gcs


def eval_config(overrides: list[str]) -> RunConfig:
    """The RunConfig whose data / training.seq_len / training.batch_size define the held-out rows."""
    return compose("eval", list(overrides))


def _local(uri: str, cfg: RunConfig) -> Path:
    if is_gcs(uri):
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
    path = _local(uri, cfg)
    result = evaluate_local(path, cfg, max_sequences)
    result.update(label=label, uri=uri, path=str(path))
    get_run_logger().info("%s: perplexity %.3f (%s, %s)", label, result["perplexity"], result["kind"], uri)
    return result


def call_eval(label: str, uri: str, overrides: list[str], max_sequences: int | None = None, refresh: bool = False) -> dict[str, Any]:
    """Run `evaluate_artifact` from a flow with persisted results; adds `cached` to the result."""
    configured = evaluate_artifact.with_options(result_storage=result_storage(), refresh_cache=refresh)
    state = configured(label, uri, list(overrides), max_sequences, return_state=True)
    result = dict(state.result())
    result.setdefault("path", str(_local(uri, eval_config(overrides))))  # results cached before it was recorded
    result["label"] = label  # a cache hit carries the label of the run that computed it
    result["cached"] = state.name == "Cached"
    return result


@task(name="ptq-baselines", task_run_name="ptq-{types}")
def make_baselines(teacher_uri: str, types: list[str], overrides: list[str]) -> dict[str, str]:
    """{type: GGUF path} of llama.cpp's quantization of the teacher (made once per teacher, evaluation/ptq.py)."""
    cfg = eval_config(overrides)
    files = ptq_files(_local(teacher_uri, cfg), list(types))
    get_run_logger().info("llama.cpp baselines of %s: %s", teacher_uri, ", ".join(f"{t} {p}" for t, p in files.items()))
    return {t: str(p) for t, p in files.items()}


def speed_cache_key(context, parameters: dict[str, Any]) -> str:
    """Prefect cache_key_fn: every file's digest, the speed settings and the machine."""
    files = {label: [artifact_digest(g), artifact_digest(a) if a else None] for label, (g, a) in parameters["files"].items()}
    return "speed-" + json_key(files, parameters["settings"], machine())


@task(name="gguf-speed", cache_key_fn=speed_cache_key, persist_result=True, result_serializer="json")
def time_ggufs(files: dict[str, tuple[str, str | None]], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Prompt and decode tok/s of every (GGUF, adapter) in llama.cpp, timed in one run."""
    from wrinklefree_core.config.eval import SpeedConfig

    speeds = measure_speed({k: (Path(g), Path(a) if a else None) for k, (g, a) in files.items()}, SpeedConfig(**settings))
    for label, s in speeds.items():
        get_run_logger().info("%s: prompt %.1f tok/s, decode %.1f tok/s (%d thread(s))", label, s["prompt_tps"], s["decode_tps"], s["threads"])
    return speeds


def call_speed(files: dict[str, tuple[str, str | None]], overrides: list[str], refresh: bool = False) -> dict[str, dict[str, Any]]:
    """Run `time_ggufs` from a flow with persisted results ({} when eval.speed.enabled is false)."""
    speed = eval_config(overrides).eval.speed
    if not speed.enabled or not files:
        return {}
    configured = time_ggufs.with_options(result_storage=result_storage(), refresh_cache=refresh)
    return dict(configured(files, speed.model_dump(mode="json")))
