"""Which store a run goes to, where its artifacts land, and the experiment's type."""

from __future__ import annotations

from pathlib import Path

from wrinklefree_core.paths import mlflow_artifact_location, mlflow_store_uri
from wrinklefree_core.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, client, experiment_id


def test_configured_then_environment_then_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WRINKLEFREE_MLFLOW_STORE", raising=False)
    assert mlflow_store_uri(None) == f"sqlite:///{tmp_path / 'cache' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("WRINKLEFREE_MLFLOW_STORE", "http://127.0.0.1:5000")
    assert mlflow_store_uri(None) == "http://127.0.0.1:5000"
    assert mlflow_store_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_artifacts_live_beside_a_sqlite_store_and_a_server_decides_its_own(tmp_path):
    assert mlflow_artifact_location(f"sqlite:///{tmp_path / 'db' / 'm.db'}") == (tmp_path / "db" / "artifacts").as_uri()
    assert mlflow_artifact_location("http://127.0.0.1:5000") is None


def test_experiments_are_typed_for_model_training_unless_a_user_chose(store, tmp_path):
    c = client(store)
    exp = c.get_experiment(experiment_id(c, "fresh"))
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert exp.artifact_location == (Path(store.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    older = c.create_experiment("older", artifact_location=str(tmp_path / "a"))  # made before the tag existed
    assert experiment_id(c, "older") == older and c.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    chosen = c.create_experiment("chosen", artifact_location=str(tmp_path / "b"), tags={EXPERIMENT_KIND_TAG: "genai_development"})
    experiment_id(c, "chosen")
    assert c.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_checkpoint_names_the_model_it_descends_from(tmp_path):
    import json

    from wrinklefree_core.artifacts.manifest import source_model_name

    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert source_model_name(folder, "fallback") == "fallback"  # no stage.json
    (folder / "stage.json").write_text(json.dumps({"stage": "convert", "created_at": "2026-12-07T00:00:00Z", "config": {"model": {"name": "tiny_llama_256"}}}))
    assert source_model_name(folder, "fallback") == "tiny_llama_256"
    (folder / "stage.json").write_text("{not json")
    assert source_model_name(folder, "fallback") == "fallback"
