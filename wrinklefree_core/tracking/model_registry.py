"""The exported GGUF in MLflow: uploaded into its export run, registered as a version of `wrinklefree-<model>`.

    upload     the GGUF and its LoRA adapter into the run's `gguf/` artifacts, file by file; a file
               already there with the same size is skipped, so re-running an interrupted upload sends
               only what is missing. The run's `wrinklefree.model_upload` tag says how far it got.
    register   one model version per export run (source `runs:/<run>/gguf`), its tags the sizes,
               bits per weight and verification of the export; a run already registered keeps its
               version. The pipeline adds the eval table (description) and verdict when it has them.

`tracking.model_upload=false` records only where the files are (the run's `gguf_uri` tag): nothing
is copied and nothing registered, for stores where a copy of every export costs too much.
A failed upload never touches the exported files; its error names them and how to resume.
"""

from __future__ import annotations

from pathlib import Path

from wrinklefree_core.tracking.store import set_tags

ARTIFACT_DIR = "gguf"
UPLOAD_TAG = "wrinklefree.model_upload"
VERSION_TAG = "wrinklefree.model_version"
# Export metrics that go on the model version, as tags (what a user compares versions by).
VERSION_METRICS = ("file_bytes", "lora_bytes", "total_bytes", "bits_per_weight", "verify_passed", "verify_top1_agreement", "verify_worst_layer_rel_error")


class ModelUploadError(RuntimeError):
    """The GGUF could not be copied into MLflow (the exported files are untouched)."""


def registered_name(model_name: str) -> str:
    """The registered model of a source model: `wrinklefree-<model>`."""
    return f"wrinklefree-{model_name}"


def model_files(gguf: Path) -> list[Path]:
    """The GGUF and, when the export wrote one, its LoRA adapter beside it."""
    lora = gguf.with_name(f"{gguf.stem}.lora.gguf")
    return [gguf, lora] if lora.is_file() else [gguf]


def upload_model(mlflow_client, run_id: str, files: list[Path]) -> list[str]:
    """Copy `files` into the run's gguf/ artifacts, skipping those already there whole; returns the names sent."""
    present = {Path(f.path).name: f.file_size for f in mlflow_client.list_artifacts(run_id, ARTIFACT_DIR)}
    sent = []
    for number, path in enumerate(files, 1):
        if present.get(path.name) == path.stat().st_size:
            continue
        mlflow_client.set_tag(run_id, UPLOAD_TAG, f"incomplete: {number - 1} of {len(files)} files")
        try:
            mlflow_client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
        except Exception as exc:
            raise ModelUploadError(
                f"uploading {path.name} ({path.stat().st_size / 2**20:.1f} MiB) to MLflow run {run_id} failed: {exc}. "
                f"The export itself is complete at {path.parent}; re-run the same command to resume the upload "
                "(files already uploaded are skipped), or set tracking.model_upload=false to keep the model local"
            ) from exc
        sent.append(path.name)
    mlflow_client.set_tag(run_id, UPLOAD_TAG, "complete")
    return sent


def register_model(mlflow_client, run_id: str, model_name: str, metrics: dict[str, float]) -> tuple[str, str]:
    """Register the run's gguf/ artifacts as a version of wrinklefree-<model>; returns (name, version)."""
    from mlflow.exceptions import MlflowException

    run = mlflow_client.get_run(run_id)
    known = run.data.tags.get(VERSION_TAG)
    if known:
        name, _, version = known.rpartition("/")
        return name, version
    name = registered_name(model_name)
    try:
        mlflow_client.create_registered_model(
            name, description=f"Ternary (1.58-bit) GGUF exports of {model_name} by the WrinkleFree pipeline, for llama.cpp."
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    tags = {key: f"{metrics[key]:.6g}" for key in VERSION_METRICS if key in metrics}
    tags["files"] = ", ".join(Path(f.path).name for f in mlflow_client.list_artifacts(run_id, ARTIFACT_DIR))
    version = mlflow_client.create_model_version(name, f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id, tags=tags)
    mlflow_client.set_tag(run_id, VERSION_TAG, f"{name}/{version.version}")
    return name, str(version.version)


def publish_model(
    mlflow_client, run_id: str, gguf: Path, model_name: str, metrics: dict[str, float], upload: bool = True, register: bool = True
) -> tuple[str, str] | None:
    """Upload the export's files into run `run_id` and register them (module docstring); (name, version) or None."""
    set_tags(mlflow_client, run_id, {"gguf_uri": str(gguf)})
    if not upload:
        mlflow_client.set_tag(run_id, UPLOAD_TAG, "off (tracking.model_upload=false)")
        return None
    upload_model(mlflow_client, run_id, model_files(gguf))
    return register_model(mlflow_client, run_id, model_name, metrics) if register else None


def describe_version(mlflow_client, name: str, version: str, description: str, tags: dict[str, str]) -> None:
    """Set a model version's description (the eval table) and add tags (the verdict, perplexity x teacher)."""
    mlflow_client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
