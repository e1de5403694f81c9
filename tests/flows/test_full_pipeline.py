"""The full-pipeline flow under the Prefect test harness, on tiny_llama with the smoke budget.

One run does everything (convert -> train -> lrc -> distill -> export + the eval table); the tests
read it back through MLflow and Prefect, then check the caching contract: unchanged inputs reuse
every stage, a changed typed field reruns its stage and the ones after it only, a deleted output
is recomputed. tests/flows/test_params.py checks the parameter forms themselves.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.full_pipeline import full_pipeline
from flows.params import smoke_params
from tasks.mlflow_runs import PARENT_TAG, store_uri
from tasks.stage_plan import STAGES, StageUnavailableError

# A metric each stage's run must carry, and a param of the resolved config.
STAGE_METRIC = {
    "convert": "ternary_params",
    "train": "final/val/ppl",
    "lrc": "final/val/ppl",
    "distill": "final/val/ppl",
    "export": "file_bytes",
}
STAGE_PARAM = {
    "convert": ("model.name", "tiny_llama"),
    "train": ("training.name", "unified"),
    "lrc": ("training.name", "lrc_calibration"),
    "distill": ("training.name", "bitdistill_full"),
    "export": ("export.format", "gguf"),
}


def client() -> MlflowClient:
    return MlflowClient(store_uri(None))


def artifact_names(run_id: str, path: str | None = None) -> set[str]:
    return {Path(a.path).name for a in client().list_artifacts(run_id, path)}


def test_pipeline_runs_end_to_end(smoke_run, out_root):
    stages = smoke_run["stages"]
    assert list(stages) == list(STAGES)
    assert not any(s["cached"] for s in stages.values())
    for stage in ("convert", "train", "lrc", "distill"):
        assert (Path(stages[stage]["uri"]) / "stage.json").is_file(), stage
        assert Path(stages[stage]["uri"]).parent == out_root / stage
    # A finished training stage's resumable state (optimizer, ~3x the model) is not left behind.
    assert not [p.name for p in out_root.glob("*/*.state")]
    gguf = Path(stages["export"]["uri"])
    assert gguf.is_file() and gguf.name == "tiny_llama.gguf"
    assert (gguf.parent / "verification.json").is_file()
    assert (gguf.parent / "tiny_llama.lora.gguf").is_file()  # the LRC adapters ship as a LoRA GGUF
    assert stages["export"]["metrics"]["verify_tokens_compared"] > 0
    # Each stage reads the previous one's output.
    for prev, stage in zip(STAGES, STAGES[1:]):
        manifest = json.loads((Path(stages[stage]["folder"]) / "stage.json").read_text())
        assert manifest["config"]["checkpoint"] == stages[prev]["uri"], stage
    # One eval row per artifact, the GGUF scored in llama.cpp close to its PyTorch checkpoint.
    rows = {r["artifact"]: r for r in smoke_run["eval"]}
    baselines = ["teacher-f16", "teacher-q4_0", "teacher-q2_k"]
    assert list(rows) == ["teacher", *baselines, "naive-conversion", "train-unified", "lrc", "distill", "export-gguf"]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows.values())
    assert rows["export-gguf"]["runtime"] == "llama.cpp"
    # The value columns: size with the adapter counted, bits per weight over the real weights, llama.cpp speed.
    export = stages["export"]["metrics"]
    lora = gguf.parent / "tiny_llama.lora.gguf"
    assert rows["export-gguf"]["MiB"] == round((gguf.stat().st_size + lora.stat().st_size) / 2**20, 2)
    assert export["total_bytes"] == gguf.stat().st_size + lora.stat().st_size
    assert rows["export-gguf"]["bits/weight"] == round(8 * export["total_bytes"] / export["weights"], 2)
    for label in [*baselines, "export-gguf"]:
        assert rows[label]["decode tok/s"] > 0 and rows[label]["prompt tok/s"] > 0, label
    for label in ("teacher", "naive-conversion", "distill"):
        assert rows[label]["MiB"] == "" and rows[label]["decode tok/s"] == "", label
    # LRC adapter parameters beside the perplexity they buy, as a share of the projection parameters.
    lrc_params = stages["lrc"]["metrics"]["trainable_params"]
    projection = stages["convert"]["metrics"]["ternary_params"]
    for label in ("lrc", "distill", "export-gguf"):
        assert rows[label]["adapter %"] == round(100 * lrc_params / projection, 2), label
    assert rows["naive-conversion"]["adapter %"] == 0.0 and rows["train-unified"]["adapter %"] == 0.0
    assert all(rows[label]["adapter %"] == "" for label in ("teacher", *baselines))
    assert rows["teacher-f16"]["ppl"] == pytest.approx(rows["teacher"]["ppl"], rel=2e-3)  # bound: tests/evaluation/test_compare.py
    verdict = smoke_run["verdict"]
    assert verdict.startswith("verdict: export-gguf ") and all(f"vs {b}:" in verdict for b in baselines)
    assert rows["export-gguf"]["ppl"] == pytest.approx(rows["distill"]["ppl"], rel=0.05)
    # Scored on the two held-out domains the pipeline never trains on (it trains on python_docs).
    assert {"ppl shakespeare", "ppl licenses"} <= set(rows["teacher"])
    assert "ppl python_docs" not in rows["teacher"]
    assert rows["teacher"]["x teacher"] == 1.0
    assert rows["distill"]["x teacher"] == pytest.approx(rows["distill"]["ppl"] / rows["teacher"]["ppl"], rel=0.01)
    train_manifest = json.loads((Path(stages["train"]["folder"]) / "stage.json").read_text())
    assert [s["name"] for s in train_manifest["config"]["data"]["sources"]] == ["python_docs"]
    assert json.loads((out_root / "pipeline.json").read_text())["flow_run_id"] == smoke_run["flow_run_id"]
    print(f"smoke pipeline: {smoke_run['seconds']:.1f} s")


def test_stage_runs_nest_under_pipeline_run(smoke_run):
    parent_id = smoke_run["mlflow_run_id"]
    parent = client().get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == smoke_run["flow_run_id"]
    assert {"eval_table.md", "eval.json"} <= artifact_names(parent_id)
    assert math.isfinite(parent.data.metrics["eval/export-gguf/ppl"])
    rows = {r["artifact"]: r for r in smoke_run["eval"]}
    for label in ("teacher-q4_0", "export-gguf"):  # the table's figures, as metrics
        assert parent.data.metrics[f"eval/{label}/mib"] == pytest.approx(rows[label]["MiB"], abs=0.005)
        assert parent.data.metrics[f"eval/{label}/decode_tps"] == pytest.approx(rows[label]["decode tok/s"], abs=0.05)
        assert f"eval/{label}/bits_per_weight" in parent.data.metrics and f"eval/{label}/prompt_tps" in parent.data.metrics
    assert "eval/teacher/mib" not in parent.data.metrics
    assert parent.data.metrics["eval/export-gguf/adapter_share"] == pytest.approx(rows["export-gguf"]["adapter %"] / 100, abs=5e-5)
    assert parent.data.tags["eval.verdict"] == smoke_run["verdict"]
    table = Path(client().download_artifacts(parent_id, "eval_table.md"))
    assert table.read_text().rstrip().endswith(smoke_run["verdict"])
    for stage, result in smoke_run["stages"].items():
        run = client().get_run(result["mlflow_run_id"])
        assert run.data.tags[PARENT_TAG] == parent_id, stage
        assert run.data.tags["prefect.flow_run_id"] == smoke_run["flow_run_id"], stage
        assert run.data.tags["prefect.task_run_id"], stage
        assert run.data.tags["artifact_uri"] == result["uri"], stage
        key, value = STAGE_PARAM[stage]
        assert run.data.params[key] == value, stage
        assert STAGE_METRIC[stage] in run.data.metrics, (stage, sorted(run.data.metrics))
        assert "stage.json" in artifact_names(run.info.run_id), stage
        assert parent.data.tags[f"stage.{stage}.mlflow_run_id"] == run.info.run_id
    for stage in ("train", "lrc", "distill"):
        run_id = smoke_run["stages"][stage]["mlflow_run_id"]
        assert "loss_curve.png" in artifact_names(run_id), stage
        assert client().get_run(run_id).data.params["training.max_steps"] == "3"
    for stage in ("convert", "export"):  # runs opened after the work still span it
        info = client().get_run(smoke_run["stages"][stage]["mlflow_run_id"]).info
        assert (info.end_time - info.start_time) / 1000 >= 0.9 * smoke_run["stages"][stage]["seconds"] - 0.5, stage
    for run_id in [parent_id, *(r["mlflow_run_id"] for r in smoke_run["stages"].values())]:
        params = client().get_run(run_id).data.params
        assert not [k for k, v in params.items() if v in ("", "null", "[]", "{}")], run_id  # nothing empty
        if run_id != parent_id:
            assert params["stage"] == client().get_run(run_id).data.tags["pipeline_stage"]
    export_run = smoke_run["stages"]["export"]["mlflow_run_id"]
    assert "verification.json" in artifact_names(export_run)
    assert {"tiny_llama.gguf", "tiny_llama.lora.gguf"} <= artifact_names(export_run, "gguf")
    assert client().get_run(export_run).data.tags["gguf_uri"] == smoke_run["stages"]["export"]["uri"]


def test_mlflow_shows_what_a_user_looks_for(smoke_run):
    """Named runs, typed experiment, code version, used sections only, changed fields, datasets,
    system metrics, verification as metrics, the registered GGUF and the chart through the stages."""
    from wrinklefree_core.tracking.source import COMMIT_TAG, USER_TAG, code_tags

    parent = client().get_run(smoke_run["mlflow_run_id"])
    experiment = client().get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    assert parent.info.run_name.startswith("full-pipeline-tiny_llama-smoke-")
    stages = {stage: client().get_run(r["mlflow_run_id"]) for stage, r in smoke_run["stages"].items()}
    for number, stage in enumerate(STAGES, 1):
        assert stages[stage].info.run_name.startswith(f"{number}-{stage}-tiny_llama"), stage
    for run in [parent, *stages.values()]:
        assert run.data.tags[USER_TAG] and run.data.tags["mlflow.source.name"]
        assert run.data.tags.get(COMMIT_TAG) == code_tags().get(COMMIT_TAG)
        assert "compute.accelerators" not in run.data.params  # a local run has no cluster spec
    assert "training.optimizer.lr" not in stages["convert"].data.params and "bitnet.subln" in stages["convert"].data.params
    assert not [k for k in stages["export"].data.params if k.startswith(("training.", "data.", "bitnet."))]
    # The smoke budget's changes stand out as tags on the stages they change.
    assert stages["train"].data.tags["changed.training.max_steps"] == "3"
    assert "changed.training.max_steps" not in stages["export"].data.tags
    for stage in ("train", "lrc", "distill"):
        run = stages[stage]
        contexts = {(i.dataset.name, t.value) for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {("python_docs", "training"), ("python_docs", "validation")}, stage
        assert "system/cpu_utilization_percentage" in run.data.metrics, stage
    export = stages["export"]
    assert export.data.metrics["verify_passed"] == 1.0 and export.data.metrics["verify_top1_agreement"] >= 0.95
    # The GGUF is a registered model version that carries the eval table.
    name, _, version = smoke_run["model_version"].rpartition("/")
    assert name == "wrinklefree-tiny_llama"
    mv = client().get_model_version(name, version)
    assert mv.run_id == export.info.run_id and mv.source == f"runs:/{export.info.run_id}/gguf"
    assert smoke_run["verdict"] in mv.description and "export-gguf" in mv.description
    assert mv.tags["eval.verdict"] == smoke_run["verdict"] and float(mv.tags["bits_per_weight"]) > 0
    rows = {r["artifact"]: r for r in smoke_run["eval"]}
    assert float(mv.tags["ppl_x_teacher"]) == pytest.approx(rows["export-gguf"]["x teacher"])
    # Held-out perplexity through the stages: one metric over the stage index, and a chart.
    history = sorted((m.step, m.value) for m in client().get_metric_history(parent.info.run_id, "pipeline/heldout_ppl"))
    labels = ["naive-conversion", "train-unified", "lrc", "distill", "export-gguf"]
    assert [step for step, _ in history] == list(range(5))
    assert [v for _, v in history] == pytest.approx([rows[label]["ppl"] for label in labels], rel=1e-3)
    assert "heldout_ppl_by_stage.png" in artifact_names(parent.info.run_id)
    # The held-out rows the table scores, as the pipeline run's datasets (the same rows for every row).
    scored = {i.dataset.name: i.dataset for i in parent.inputs.dataset_inputs}
    sources = {k.removeprefix("ppl ") for k in rows["export-gguf"] if k.startswith("ppl ")}
    assert set(scored) == sources and all(json.loads(d.profile)["num_rows"] > 0 for d in scored.values())
    evals = json.loads(Path(client().download_artifacts(parent.info.run_id, "eval.json")).read_text())["evals"]
    digests = {e["label"]: {n: d["digest"] for n, d in e["datasets"].items()} for e in evals}
    assert all(d == {n: x.digest for n, x in scored.items()} for d in digests.values()), digests  # torch and llama.cpp rows alike
    assert {t.value for i in parent.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"} == {"eval"}


def test_prefect_artifacts_published(smoke_run):
    from prefect.artifacts import Artifact

    table = Artifact.get("pipeline-eval")
    assert table is not None and table.type == "table"
    assert "export-gguf" in str(table.data)
    link = Artifact.get("mlflow-export")
    assert link is not None and smoke_run["stages"]["export"]["mlflow_run_id"] in str(link.data)


def test_second_run_hits_cache_for_every_stage(smoke_run, out_root):
    again = full_pipeline(smoke_params(out_root=str(out_root)))
    assert {s: r["cached"] for s, r in again["stages"].items()} == {s: True for s in STAGES}
    for stage in STAGES:
        assert again["stages"][stage]["uri"] == smoke_run["stages"][stage]["uri"]
        assert again["stages"][stage]["mlflow_run_id"] == smoke_run["stages"][stage]["mlflow_run_id"]
    assert all(row["cached"] for row in again["eval"])
    assert again["mlflow_run_id"] != smoke_run["mlflow_run_id"]


def test_changed_export_field_reruns_only_export(smoke_run, out_root):
    changed = full_pipeline(smoke_params(out_root=str(out_root), export={"export": {"fallback_type": "q8_0"}}))
    cached = {s: r["cached"] for s, r in changed["stages"].items()}
    assert cached == {"convert": True, "train": True, "lrc": True, "distill": True, "export": False}
    new, old = changed["stages"]["export"], smoke_run["stages"]["export"]
    assert new["uri"] != old["uri"] and Path(new["uri"]).is_file() and Path(old["uri"]).is_file()
    run = client().get_run(new["mlflow_run_id"])
    assert run.data.tags[PARENT_TAG] == changed["mlflow_run_id"]
    assert run.data.params["export.fallback_type"] == "q8_0"
    assert client().get_run(changed["mlflow_run_id"]).data.params["export.changes"] == "export.fallback_type=q8_0"


def test_a_failed_model_upload_resumes_on_the_next_run(smoke_run, out_root, monkeypatch):
    """The server goes away while the adapter uploads: the export is kept (and cached), the flow fails
    saying how to resume, and the next run sends only the missing file, then registers the model."""
    from wrinklefree_core.tracking.model_registry import ModelUploadError, UPLOAD_TAG, VERSION_TAG

    sent: list[str] = []
    real = MlflowClient.log_artifact

    def flaky(self, run_id, local_path, artifact_path=None):
        if artifact_path == "gguf":
            if local_path.endswith(".lora.gguf") and "down" in sent:
                raise ConnectionError("tracking server unreachable")
            sent.append(Path(local_path).name)
        return real(self, run_id, local_path, artifact_path)

    params = smoke_params(out_root=str(out_root), export={"export": {"verify_threads": 1}})
    sent.append("down")
    monkeypatch.setattr(MlflowClient, "log_artifact", flaky)
    with pytest.raises(ModelUploadError, match="re-run the same command to resume the upload"):
        full_pipeline(params)
    sent.remove("down")
    assert sent == ["tiny_llama.gguf"]
    again = full_pipeline(params)
    export = again["stages"]["export"]
    assert export["cached"] and Path(export["uri"]).is_file()  # the export itself was not redone
    assert sent == ["tiny_llama.gguf", "tiny_llama.lora.gguf"]  # only the missing file went the second time
    tags = client().get_run(export["mlflow_run_id"]).data.tags
    assert tags[UPLOAD_TAG] == "complete" and tags[VERSION_TAG] == again["model_version"]


def test_changed_training_field_reruns_that_stage_and_the_ones_after(smoke_run, out_root):
    # Submitted as a form does it: the typed section, validated by Prefect, patched onto the recipe.
    form = {"model": "tiny_llama", "smoke": True, "out_root": str(out_root), "distill": {"training": {"kd": {"temperature": 2.0}}}}
    changed = full_pipeline(form)
    cached = {s: r["cached"] for s, r in changed["stages"].items()}
    assert cached == {"convert": True, "train": True, "lrc": True, "distill": False, "export": False}
    distill = client().get_run(changed["stages"]["distill"]["mlflow_run_id"]).data.params
    assert (distill["training.kd.temperature"], distill["training.max_steps"], distill["training.name"]) == ("2.0", "3", "bitdistill_full")
    assert changed["stages"]["distill"]["uri"] != smoke_run["stages"]["distill"]["uri"]


def test_deleted_output_is_recomputed(smoke_run, out_root):
    export_dir = Path(smoke_run["stages"]["export"]["folder"])
    shutil.rmtree(export_dir)
    again = full_pipeline(smoke_params(out_root=str(out_root)))
    assert again["stages"]["distill"]["cached"] and not again["stages"]["export"]["cached"]
    assert again["stages"]["export"]["uri"] == smoke_run["stages"]["export"]["uri"]
    assert Path(again["stages"]["export"]["uri"]).is_file()


def test_missing_recipe_is_a_clear_error(monkeypatch):
    import tasks.stage_plan as stage_plan

    monkeypatch.setattr(stage_plan, "group_options", lambda group: ["unified"])
    with pytest.raises(StageUnavailableError, match="lrc_calibration"):
        stage_plan.compose_stage("lrc", ["model=tiny_llama"], "upstream")


def test_nightly_smoke_checks_the_pipeline(smoke_run, out_root):
    from flows.nightly_smoke import check_summary, nightly_smoke

    # refresh=False: reuse the session's outputs; the subflow, the checks and the summary are what is tested.
    summary = nightly_smoke(out_root=str(out_root), refresh=False)
    assert check_summary(summary) == [] and set(summary["stages"]) == set(STAGES)
    broken = json.loads(json.dumps(smoke_run))
    broken["stages"]["export"]["metrics"].pop("verify_tokens_compared")
    broken["eval"][0]["ppl"] = float("nan")
    problems = check_summary(broken)
    assert any("verification" in p for p in problems) and any("teacher" in p for p in problems)
