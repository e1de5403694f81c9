"""A stage run's params are the sections its stage reads; `changed.*` tags name what the user changed."""

from __future__ import annotations

import pytest

from wrinklefree_core.config import compose
from wrinklefree_core.stages.base import get, registry
from wrinklefree_core.tracking.params import changed_tags, stage_params


def _params(command: str, stage: str, *items: str) -> dict[str, str]:
    extra = [] if command == "convert" else ["checkpoint=/data/ckpt"]
    cfg = compose(command, ["model=tiny_llama", *extra, *items])
    return stage_params(cfg.model_dump(mode="json"), get(stage).tracked)


def test_convert_logs_conversion_sections_and_no_optimizer():
    params = _params("convert", "convert")
    assert params["bitnet.subln"] and params["model.name"] == "tiny_llama"
    assert params["training.seq_len"]  # the one training field conversion reads (calibration rows)
    assert not [k for k in params if k.startswith(("training.optimizer", "export.", "eval.", "tracking."))]
    assert "training.max_steps" not in params


def test_export_logs_export_sections_only():
    params = _params("export", "export")
    assert params["export.ternary_type"] and params["checkpoint"] == "/data/ckpt"
    assert params["model.name"] == "tiny_llama" and "model.random.hidden_size" not in params
    assert not [k for k in params if k.startswith(("training.", "data.", "bitnet.", "eval."))]


def test_training_stage_is_named_by_the_pipeline_and_logs_its_recipe():
    params = _params("train", "distill", "training=bitdistill_full")
    assert params["stage"] == "distill"
    assert params["training.name"] == "bitdistill_full" and "training.optimizer.lr" in params
    assert "bitnet.subln" not in params and "export.ternary_type" not in params


def test_local_compute_has_no_cluster_fields_and_skypilot_has_them():
    local = _params("train", "train")
    assert local["compute.backend"] == "local"
    assert not [k for k in local if k in ("compute.accelerators", "compute.num_nodes", "compute.use_spot")]
    remote = _params("train", "train", "compute.backend=skypilot", "compute.accelerators=H100:8")
    assert remote["compute.accelerators"] == "H100:8" and "compute.num_nodes" in remote


def test_no_empty_values():
    for command, stage in (("convert", "convert"), ("train", "lrc"), ("export", "export")):
        params = _params(command, stage)
        assert not [k for k, v in params.items() if v in ("", "null", "[]", "{}")], stage


def test_changed_tags_are_exactly_the_overrides():
    base = compose("train", ["model=tiny_llama", "checkpoint=/a"]).model_dump(mode="json")
    now = compose("train", ["model=tiny_llama", "checkpoint=/b", "training.max_steps=7", "data.seed=3"]).model_dump(mode="json")
    assert changed_tags(now, base, get("train").tracked) == {"changed.training.max_steps": "7", "changed.data.seed": "3"}
    # A field the stage does not read is not a change of that stage.
    other = compose("export", ["model=tiny_llama", "checkpoint=/a", "training.max_steps=7"]).model_dump(mode="json")
    assert changed_tags(other, compose("export", ["model=tiny_llama", "checkpoint=/a"]).model_dump(mode="json"), get("export").tracked) == {}


def test_unknown_stage_is_refused_and_every_stage_names_what_it_logs():
    with pytest.raises(ValueError, match="unknown stage 'quantize'"):
        get("quantize")
    assert all(stage.logs for stage in registry().values())
