"""The `full-pipeline` flow: convert -> train (unified) -> lrc -> distill -> export, then one eval table.

    MLflow parent run  "full-pipeline-<model>-<budget>-<commit>-<time>"  (params = PipelineParams' changes,
                                                        eval table + metrics, ppl-by-stage chart)
      convert  -> <out_root>/convert/<key>              each a Prefect task run + nested MLflow run
      train    -> <out_root>/train/<key>                (cached: reused when config and input match)
      lrc      -> <out_root>/lrc/<key>
      distill  -> <out_root>/distill/<key>
      export   -> <out_root>/export/<key>/<model>.gguf  (uploaded; a version of MLflow model wrinklefree-<model>)
    eval: teacher, naive conversion, train, lrc, distill (PyTorch), export (llama.cpp), same rows,
          beside llama.cpp's quantization of the teacher (teacher-f16/-q4_0/-q2_k: size, tok/s, verdict)

Design choices:
- Stages run one after another: each consumes the previous output, and on a small machine a
  second concurrent stage would only slow the first.
- A stage that cannot run (a missing recipe, a failed verification) fails the flow with its own
  error; nothing is skipped. Parameter validation composes every stage's config up front.
- The parent MLflow run is closed FAILED when anything raises, so the MLflow UI shows failed
  pipelines as such. Cached stages keep their original MLflow runs (nested under the pipeline run
  that computed them); the parent records each stage's run id and whether it was a cache hit.
- `<out_root>/pipeline.json` (local roots) records the latest run's stage outputs, so scripts and
  UI reruns of single stages find the upstream URIs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.params import PipelineParams, SmokePipelineParams, describe
from flows.report import describe_model_version, publish, publish_stage_chart
from tasks import mlflow_runs
from tasks.eval_task import call_eval, call_speed, eval_config, make_baselines
from wrinklefree_core.evaluation.compare import add_adapters, add_sizes, attach_speeds, speed_files
from wrinklefree_core.evaluation.ptq import baseline_label
from wrinklefree_core.evaluation.value_table import table_rows, verdict
from wrinklefree_core.evaluation.value_table import text as report_text
from tasks.stage_plan import STAGES, normalize_root
from tasks.stage_task import call_stage
from wrinklefree_core.storage.atomic import atomic_write_text
from wrinklefree_core.tracking.source import short_commit, source_tags
from wrinklefree_core.uri import is_gcs

# Row labels of the eval table; also MLflow metric names (eval/<label>/ppl), hence no spaces or brackets.
EVAL_LABELS = {"convert": "naive-conversion", "train": "train-unified", "lrc": "lrc", "distill": "distill", "export": "export-gguf"}


def teacher_uri(convert_result: dict[str, Any]) -> str | None:
    """The full-precision source model the conversion started from (its stage.json `source_model`)."""
    folder = Path(convert_result["folder"])
    if not (folder / "stage.json").is_file():
        return None
    from wrinklefree_core.artifacts.manifest import read_manifest

    return read_manifest(folder).inputs.get("source_model")


def run_stages(params: PipelineParams, parent_run_id: str | None) -> dict[str, dict[str, Any]]:
    """Every stage in order, each reading the previous one's output; returns stage -> result (with `cached`)."""
    client = mlflow_runs.client(params.tracking_uri) if parent_run_id else None
    results: dict[str, dict[str, Any]] = {}
    upstream: str | None = None
    for stage in STAGES:
        result, cached = call_stage(stage, params.overrides_for(stage), upstream, parent_run_id, params.out_root, params.refresh)
        result["cached"] = cached
        results[stage] = result
        upstream = result["uri"]
        print(f"{stage}: {'cache hit' if cached else 'ran'} -> {upstream}")
        if client is not None:
            client.set_tag(parent_run_id, f"stage.{stage}.mlflow_run_id", result["mlflow_run_id"])
            client.set_tag(parent_run_id, f"stage.{stage}.cached", str(cached).lower())
            client.set_tag(parent_run_id, f"stage.{stage}.uri", result["uri"])
    return results


def run_evals(params: PipelineParams, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The value table's rows: the teacher, llama.cpp's quantization of it (eval.baselines) and every stage
    output, scored on the same rows; the GGUFs also sized and timed in llama.cpp together."""
    overrides = params.overrides_for("eval")
    targets: list[tuple[str, str, str | None]] = []
    teacher = teacher_uri(results["convert"])
    if teacher:
        targets.append(("teacher", teacher, None))
        baselines = list(eval_config(overrides).eval.baselines)
        if baselines:
            for ptq_type, path in make_baselines(teacher, baselines, overrides).items():
                targets.append((baseline_label(ptq_type), path, ptq_type))
    targets += [(EVAL_LABELS[stage], results[stage]["uri"], None) for stage in STAGES]
    evals = []
    for label, uri, ptq_type in targets:
        result = call_eval(label, uri, overrides, params.eval_rows, params.refresh)
        if ptq_type:
            result["baseline"] = ptq_type
        evals.append(result)
    add_sizes(evals)
    add_adapters(evals)
    files = {k: (str(g), None if a is None else str(a)) for k, (g, a) in speed_files(evals).items()}
    attach_speeds(evals, call_speed(files, overrides, params.refresh))
    return evals


def _write_summary(out_root: str, summary: dict[str, Any]) -> None:
    if is_gcs(out_root):
        return
    path = Path(out_root) / "pipeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def pipeline_run_name(params: PipelineParams, now: float | None = None) -> str:
    """`full-pipeline-<model>-<smoke|full>-<commit>-<MMDD-HHMM>`: two runs of one model differ by budget, code or time."""
    stamp = time.strftime("%m%d-%H%M", time.localtime(now))
    parts = ["full-pipeline", Path(params.model).name, "smoke" if params.smoke else "full", short_commit(), stamp]
    return "-".join(p for p in parts if p)


def run_pipeline(params: PipelineParams) -> dict[str, Any]:
    """The flow body (also what nightly-smoke runs as a subflow); returns the summary written to pipeline.json."""
    root = normalize_root(params.out_root)
    params = params.model_copy(update={"out_root": root})
    tags = {"pipeline": "full-pipeline", "model": params.model, "smoke": str(params.smoke).lower()}
    tags.update({"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or "")})
    tags.update(source_tags("flows.full_pipeline"))
    parent, exp_id = mlflow_runs.start_run(params.tracking_uri, params.experiment, pipeline_run_name(params), tags)
    client = mlflow_runs.client(params.tracking_uri)
    mlflow_runs.log_params(client, parent, params.mlflow_params())
    status = "FAILED"
    try:
        results = run_stages(params, parent)
        evals = run_evals(params, results)
        rows = table_rows(evals)
        line = verdict(evals, EVAL_LABELS["export"])
        publish(rows, evals, line, params.tracking_uri, parent)
        publish_stage_chart(evals, [EVAL_LABELS[s] for s in STAGES], params.tracking_uri, parent)
        version = describe_model_version(rows, line, EVAL_LABELS["export"], params.tracking_uri, results["export"]["mlflow_run_id"])
        summary = {
            "flow_run_id": str(flow_run.id or ""),
            "mlflow_run_id": parent,
            "mlflow_experiment_id": exp_id,
            "params": describe(params),
            "stages": results,
            "eval": rows,
            "verdict": line,
            "model_version": version,
        }
        _write_summary(root, summary)
        status = "FINISHED"
        return summary
    finally:
        mlflow_runs.end_run(params.tracking_uri, parent, status)


@flow(name="full-pipeline", log_prints=True)
def full_pipeline(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """HF model -> ternary BitNet GGUF through every stage, with a held-out perplexity table at the end."""
    return run_pipeline(params)


# The same flow with the smoke preset as its form (deploy/prefect.yaml's full-pipeline/smoke): a
# deployment's form is its entrypoint's signature, so the preset needs its own to show its values.
@flow(name="full-pipeline", log_prints=True)
def smoke_pipeline(params: SmokePipelineParams = SmokePipelineParams()) -> dict[str, Any]:
    """The full pipeline with the smoke budget (configs/pipeline/smoke.yaml): tiny_llama, 3 steps per training stage."""
    return run_pipeline(params)


def parse_fields(items: list[str]) -> dict[str, Any]:
    """`field=value` / `section.field.sub=value` items as the nested dict PipelineParams validates.

    Values are parsed as YAML; a dotted key patches one field of a stage's typed sections, e.g.
    `train.training.max_steps=10` (the rest of the section keeps the recipe's values).
    """
    import yaml

    fields: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"'{item}' is not field=value (fields: {', '.join(PipelineParams.model_fields)})")
        *parents, leaf = key.split(".")
        node = fields
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"'{item}': '{part}' is set as a value and as a section")
        node[leaf] = yaml.safe_load(raw)
    return fields


def _stop_temporary_server() -> None:
    """Stop the temporary Prefect server a local run started now, not at interpreter exit, so the run's
    last lines are its summary (Prefect keeps one instance per port; none when PREFECT_API_URL is set)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    servers = list(getattr(SubprocessASGIServer, "_instances", {}).values())
    if not servers:
        return
    # What Prefect still has queued for its API goes out first, or it fails against a stopped server.
    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)
    for server in servers:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.full_pipeline [field=value ...]`: run the pipeline in this process.

    Fields are PipelineParams' (values parsed as YAML), e.g. `model=smollm2_135m smoke=true`, or
    dotted into a stage's sections: `export.export.ternary_type=tq1_0`, `common.data.seed=1`.
    Prints where the GGUF, the MLflow runs and the eval table are.
    """
    import os
    import sys

    from pydantic import ValidationError

    from wrinklefree_core.console import quiet_libraries
    from wrinklefree_core.export.verify import LLAMA_LOG_NAME, VERIFICATION_NAME
    from wrinklefree_core.stages.export import REPORT_NAME

    # The temporary Prefect server this run starts inherits the environment: no telemetry heartbeat
    # (it would post to prefect.io, and on a busy sqlite file it logs a "database is locked" traceback).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    quiet_libraries()
    # Into a log file (`> run.log 2>&1`) stdout is block-buffered: its lines would land after stderr's.
    sys.stdout.reconfigure(line_buffering=True)

    try:
        params = PipelineParams.model_validate(parse_fields(sys.argv[1:] if argv is None else argv))
    except (ValueError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    summary = full_pipeline(params)
    _stop_temporary_server()
    export = summary["stages"].get("export", {})
    gguf = Path(str(export.get("uri", "")))
    lora = gguf.with_name(f"{gguf.stem}.lora.gguf")
    print("\nheld-out perplexity (x teacher: overall perplexity over the full-precision teacher's), size on disk with the")
    print("adapter counted, and llama.cpp speed (all GGUFs timed together; teacher-*: llama.cpp's quantization of the teacher)")
    print(report_text(summary["eval"]))
    print(summary["verdict"])
    print(f"\nGGUF: {gguf}" + (f" (+ LoRA adapter {lora.name})" if lora.is_file() else ""))
    print(f"verification: {gguf.parent / VERIFICATION_NAME} (llama.cpp's own log: {gguf.parent / LLAMA_LOG_NAME})")
    print(f"per-tensor export table: {gguf.parent / REPORT_NAME}")
    print(f"MLflow: run {summary['mlflow_run_id']} in {mlflow_runs.store_uri(params.tracking_uri)} (experiment {params.experiment})")
    if summary.get("model_version"):
        name, _, number = summary["model_version"].rpartition("/")
        store = mlflow_runs.store_uri(params.tracking_uri)
        print(f"MLflow model: {name} version {number} (download: MLFLOW_TRACKING_URI={store} mlflow artifacts download -u models:/{name}/{number})")
    print(f"eval table and stage outputs: {Path(params.out_root) / 'pipeline.json'}")
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"total time: {minutes} min {seconds:02d} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
