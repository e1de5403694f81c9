"""One flow per pipeline stage, generated from its registry entry (`stage_flow`), for re-running a single stage.

Each takes the upstream artifact URI as a parameter (convert: an optional HF model folder instead
of `model`; the others default to the upstream stage's output that the last pipeline run recorded
in `out_root/pipeline.json`), the stage's config sections as typed parameters (flows/stage_params.py:
the UI shows them as a validated form whose defaults are what the pipeline runs by default), raw
`overrides` for what the form cannot say, and the same out root / tracking settings as the full
pipeline. The overrides are built exactly as the pipeline builds them (`PipelineParams.overrides_for`),
so re-running a stage of a default pipeline run with the form untouched is a cache hit, and changing
a field reruns only that stage. (A smoke run's stages ran with the smoke budget's values: give them
as fields, or rerun through `full-pipeline/smoke`.)
`parent_run_id` nests the stage's MLflow run under an existing pipeline run (its id is in
`out_root/pipeline.json`); left empty, the stage run is a top-level MLflow run.

When `model` is empty, the model config is read from the upstream checkpoint's stage.json, so names
(MLflow run, GGUF file) follow the model the checkpoint came from.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from prefect import Flow, flow

from flows.params import PipelineParams
from flows.sections import DEFAULT_MODEL, StageSections
from flows.sections import context_value as default_of
from flows.stage_params import STAGE_PARAMS, section_types
from tasks.stage_plan import DEFAULT_OUT_ROOT, STAGES, normalize_root
from tasks.stage_task import call_stage
from wrinklefree_core.config import group_options
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.uri import is_gcs


def model_from_upstream(upstream_uri: str | None) -> str | None:
    """`model=` value matching a local checkpoint's stage.json (a config option name or an HF folder)."""
    if not upstream_uri or is_gcs(upstream_uri) or not (Path(upstream_uri) / "stage.json").is_file():
        return None
    from wrinklefree_core.artifacts.manifest import read_manifest

    model = read_manifest(upstream_uri).config.get("model", {})
    if model.get("name") in group_options("model"):
        return model["name"]
    return model.get("path") or None


def upstream_from_pipeline(stage: str, out_root: str) -> str:
    """The output of the stage before `stage` that the last pipeline run in `out_root` recorded."""
    before = stage_registry.upstream_of(stage).name
    summary_path = Path(normalize_root(out_root)) / "pipeline.json"
    hint = f"give upstream_uri: the `uri` of a {before} stage output (the {before} entry of a pipeline.json, or a gs:// folder)"
    if is_gcs(out_root):
        raise ValueError(f"stage '{stage}': out_root {out_root} keeps no pipeline.json; {hint}")
    if not summary_path.is_file():
        raise ValueError(f"stage '{stage}': no upstream_uri given and no pipeline run recorded at {summary_path}; {hint}, or run the pipeline with this out_root first")
    try:
        return json.loads(summary_path.read_text())["stages"][before]["uri"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"stage '{stage}': {summary_path} records no {before} output ({exc!r}); {hint}") from exc


def run_single_stage(
    stage: str,
    upstream_uri: str,
    form: StageSections,
    model: str,
    out_root: str,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    refresh: bool,
) -> dict[str, Any]:
    """Run `stage` with the pipeline's override rules; returns the stage result with `cached`.

    Empty strings mean "not given" (a form's text box cannot say null without a type switch).
    """
    tracking_uri, parent_run_id = tracking_uri or None, parent_run_id or None
    if not upstream_uri and stage != "convert":
        upstream_uri = upstream_from_pipeline(stage, out_root)
        print(f"{stage}: upstream from the last pipeline run: {upstream_uri}")
    upstream_uri = upstream_uri or None
    model = model or model_from_upstream(upstream_uri) or DEFAULT_MODEL
    params = PipelineParams(model=model, out_root=out_root, tracking_uri=tracking_uri, experiment=experiment, **{stage: form})
    result, cached = call_stage(stage, params.overrides_for(stage), upstream_uri, parent_run_id, out_root, refresh)
    result["cached"] = cached
    print(f"{stage}: {'cache hit' if cached else 'ran'} -> {result['uri']}")
    return result


# The parameters every stage flow shares after its sections: (name, type, default, what it is).
_SHARED = (
    ("overrides", list[str], [], "extra `wrinklefree` overrides applied after every field, e.g. `training=stage2_pretrain` or `model.dtype=bfloat16`."),
    ("model", str, "", "configs/model option or HF folder; empty = read from the upstream's stage.json."),
    ("out_root", str, DEFAULT_OUT_ROOT, "where outputs go (out_root/stage/key); the pipeline's, for cache hits."),
    ("tracking_uri", str, "", "MLflow tracking URI; empty = the sqlite store in the WrinkleFree cache folder."),
    ("experiment", str, "wrinklefree", "MLflow experiment."),
    ("parent_run_id", str, "", "MLflow run to nest under (the pipeline's mlflow_run_id, in out_root/pipeline.json)."),
    ("refresh", bool, False, "recompute even when a cached result matches."),
)


def _parameters(stage: str) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, description) of `stage`'s flow parameters, in the order its form shows them."""
    spec = stage_registry.get(stage)
    upstream = stage_registry.upstream_of(stage)
    shared = list(_SHARED)
    if spec.reads == "model":
        # The first stage reads a model: `model` leads, and upstream_uri is an HF folder instead of it.
        shared.remove(next(p for p in shared if p[0] == "model"))
        head = [
            ("model", str, DEFAULT_MODEL, "configs/model option (tiny_llama, smollm2_135m, ...)."),
            ("upstream_uri", str, "", "an HF model folder to convert instead of `model`."),
        ]
    else:
        head = [
            ("upstream_uri", str, "", f"the {upstream.name} stage's output: its `uri` in out_root/pipeline.json, or a gs:// folder; "
             "empty = the one the last pipeline run in out_root recorded."),
        ]  # fmt: skip
    types = section_types(stage)
    sections = [(s.name, types[s.name], default_of(stage, s.name), s.description) for s in spec.sections]
    return head + sections + shared


def stage_flow(stage: str) -> Flow:
    """The Prefect flow that runs `stage` alone, its signature and docstring generated from the registry (module docstring)."""
    spec = stage_registry.get(stage)
    params = _parameters(stage)
    section_names = [s.name for s in spec.sections]

    def run(**given: Any) -> dict[str, Any]:
        form = STAGE_PARAMS[stage](**{name: given[name] for name in section_names}, overrides=given["overrides"])
        rest = (given[k] for k in ("model", "out_root", "tracking_uri", "experiment", "parent_run_id", "refresh"))
        return run_single_stage(stage, given["upstream_uri"], form, *rest)

    # Keyword-only, so Prefect binds every parameter by name; the defaults are copied per run.
    run.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind) for name, kind, default, _ in params],
        return_annotation=dict[str, Any],
    )
    run.__annotations__ = {name: kind for name, kind, _, _ in params} | {"return": dict[str, Any]}
    args = "\n".join(f"    {name}: {text}" for name, _, _, text in params)
    run.__doc__ = f"{spec.summary}.\n\nArgs:\n{args}\n"
    run.__name__ = run.__qualname__ = f"{stage}_flow"
    run.__module__ = __name__
    return flow(name=stage, log_prints=True)(run)


FLOWS: dict[str, Flow] = {stage: stage_flow(stage) for stage in STAGES}
# Module-level names, for deploy/prefect.yaml's entrypoints (flows/stage_flows.py:<stage>_flow).
globals().update({f"{stage}_flow": f for stage, f in FLOWS.items()})
