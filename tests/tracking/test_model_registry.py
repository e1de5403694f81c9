"""The exported GGUF in MLflow: uploaded file by file (a resumed upload sends only what is missing), registered once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wrinklefree_core.tracking import model_registry
from wrinklefree_core.tracking.model_registry import ModelUploadError, UPLOAD_TAG, VERSION_TAG, publish_model


def _files(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 40)
    (folder / "m.lora.gguf").write_bytes(b"GGUF-lora" + bytes(1000))
    return folder / "m.gguf"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_uploads_both_files_and_registers_a_version(mlflow_client, run_id, tmp_path):
    import mlflow

    gguf = _files(tmp_path)
    metrics = {"total_bytes": 11287.0, "bits_per_weight": 1.9, "verify_passed": 1.0}
    name, version = publish_model(mlflow_client, run_id, gguf, "tiny", metrics)
    assert (name, version) == ("wrinklefree-tiny", "1")
    tags = mlflow_client.get_run(run_id).data.tags
    assert tags[UPLOAD_TAG] == "complete" and tags[VERSION_TAG] == "wrinklefree-tiny/1" and tags["gguf_uri"] == str(gguf)
    mv = mlflow_client.get_model_version(name, version)
    assert mv.run_id == run_id and mv.tags["bits_per_weight"] == "1.9" and mv.tags["verify_passed"] == "1"
    assert mv.tags["files"] == "m.gguf, m.lora.gguf"
    source = mlflow_client.get_model_version_download_uri(name, version)  # where the registry says the files are
    got = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path / "down"), tracking_uri=mlflow_client.tracking_uri))
    assert _sha(got / "m.gguf") == _sha(gguf) and _sha(got / "m.lora.gguf") == _sha(gguf.with_name("m.lora.gguf"))
    # Publishing again (a pipeline re-run, a cache hit) neither re-sends nor registers a second version.
    assert publish_model(mlflow_client, run_id, gguf, "tiny", metrics) == (name, "1")
    assert [str(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")] == ["1"]


def test_an_interrupted_upload_resumes_with_the_missing_file_only(mlflow_client, run_id, tmp_path, monkeypatch):
    gguf = _files(tmp_path)
    sent: list[str] = []
    real = mlflow_client.log_artifact

    def flaky(run, path, artifact_path=None):
        if Path(path).name == "m.lora.gguf" and not sent.count("fail"):
            sent.append("fail")
            raise ConnectionError("server went away")
        sent.append(Path(path).name)
        return real(run, path, artifact_path=artifact_path)

    monkeypatch.setattr(mlflow_client, "log_artifact", flaky)
    with pytest.raises(ModelUploadError, match=r"m\.lora\.gguf .*server went away.*export itself is complete at .*re-run the same command"):
        publish_model(mlflow_client, run_id, gguf, "tiny", {})
    assert mlflow_client.get_run(run_id).data.tags[UPLOAD_TAG] == "incomplete: 1 of 2 files"
    assert gguf.is_file() and gguf.with_name("m.lora.gguf").is_file()  # nothing local was touched
    assert not mlflow_client.search_registered_models()  # nothing registered from half an upload
    publish_model(mlflow_client, run_id, gguf, "tiny", {})
    assert sent == ["m.gguf", "fail", "m.lora.gguf"]  # the base model was not sent twice
    assert mlflow_client.get_run(run_id).data.tags[UPLOAD_TAG] == "complete"


def test_upload_off_records_the_path_only(mlflow_client, run_id, tmp_path):
    gguf = _files(tmp_path)
    assert publish_model(mlflow_client, run_id, gguf, "tiny", {}, upload=False) is None
    tags = mlflow_client.get_run(run_id).data.tags
    assert tags[UPLOAD_TAG].startswith("off") and tags["gguf_uri"] == str(gguf)
    assert mlflow_client.list_artifacts(run_id) == [] and not mlflow_client.search_registered_models()


def test_a_changed_file_is_sent_again(mlflow_client, run_id, tmp_path):
    gguf = _files(tmp_path)
    model_registry.upload_model(mlflow_client, run_id, [gguf])
    gguf.write_bytes(gguf.read_bytes() + b"more")
    assert model_registry.upload_model(mlflow_client, run_id, [gguf]) == ["m.gguf"]
