"""Config composition: groups, dotted overrides, and errors that name the key and the closest choices."""

from __future__ import annotations

import pytest

from wrinklefree_core.config import ConfigError, RunConfig, compose, group_options
from wrinklefree_core.config.run import GROUPS


def test_seed_command_line_composes():
    cfg = compose(
        "train",
        ["model=smollm2_135m", "training=unified", "training.max_steps=100", "training.optimizer.type=adamw"],
    )
    assert isinstance(cfg, RunConfig)
    assert cfg.stage == "train"
    assert cfg.model.name == "smollm2_135m" and cfg.model.source == "package_gguf"
    assert cfg.training.name == "unified" and cfg.training.max_steps == 100
    assert cfg.training.optimizer.type == "adamw"
    # values from the YAML option survive next to the override
    assert cfg.training.objectives.dlm.enabled is True


def test_override_order_and_yaml_values():
    cfg = compose(
        "train",
        ["training=bitdistill_full", "training.auto_batch_size=true", "training.optimizer.lr=1e-4", "bitnet.skip_layers=[0, 1]", "out=runs/x"],
    )
    assert cfg.training.auto_batch_size is True
    assert cfg.training.optimizer.lr == pytest.approx(1e-4)
    assert cfg.training.objectives.logits_kd.enabled and cfg.training.objectives.logits_kd.weight == 10.0
    assert cfg.bitnet.skip_layers == [0, 1]
    assert cfg.out == "runs/x"


def test_every_group_option_validates():
    for group in GROUPS:
        options = group_options(group)
        assert options, group
        for option in options:
            cfg = compose("convert", [f"{group}={option}"])
            assert cfg is not None


def test_data_mixture_option():
    cfg = compose("train", ["data=mixed_pretrain"])
    assert [s.name for s in cfg.data.sources] == ["shakespeare", "python_docs", "python_stdlib"]
    assert cfg.data.config_name == "mixed_pretrain"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.optimzer.type=adamw", ["training.optimzer.type", "training.optimizer"]),
        ("trainng.max_steps=3", ["trainng.max_steps", "training"]),
        ("outt=x", ["'outt'", "out"]),
        ("model=smollm", ["group 'model'", "smollm2_135m"]),
        ("training=unifed", ["group 'training'", "unified"]),
        ("training.max_steps=abc", ["training.max_steps", "integer"]),
        ("training.optimizer.type=sgd", ["training.optimizer.type", "'adamw', 'muon' or 'muonclip'"]),
        ("bitnet.quant_lambda=2", ["bitnet.quant_lambda", "less than or equal to 1"]),
        ("model.random.hidden_size=8", ["model.random only applies to source=random"]),
        ("novalue", ["key=value"]),
    ],
)
def test_bad_input_names_key_and_choices(override, expected):
    with pytest.raises(ConfigError) as info:
        compose("train", [override])
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message


def test_model_accepts_local_hf_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = compose("convert", [f"model={tmp_path}"])
    assert cfg.model.source == "hf" and cfg.model.path == str(tmp_path.resolve())
    assert cfg.model.name == tmp_path.name


def test_yaml_file_with_unknown_key_is_rejected(tmp_path, monkeypatch):
    import shutil

    from wrinklefree_core.config import config_root

    root = tmp_path / "configs"
    shutil.copytree(config_root(), root)
    (root / "training" / "broken.yaml").write_text("name: broken\nmax_stpes: 3\n")
    monkeypatch.setenv("WRINKLEFREE_CONFIG_DIR", str(root))
    with pytest.raises(ConfigError, match=r"unknown config key 'training.max_stpes'; did you mean: max_steps"):
        compose("train", ["training=broken"])


def test_data_accepts_a_local_text_file_or_folder(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("some text\n")
    cfg = compose("train", [f"data={notes}"])
    assert [(s.name, s.path, s.weight) for s in cfg.data.sources] == [("notes", str(notes), 1.0)]
    cfg = compose("train", [f"data={tmp_path}", "data.val_fraction=0.2"])
    assert cfg.data.sources[0].path == str(tmp_path) and cfg.data.val_fraction == 0.2
    with pytest.raises(ConfigError, match="no such file or folder.*it should be a local text file or folder"):
        compose("train", [f"data={tmp_path / 'missing.txt'}"])


@pytest.mark.parametrize("item", ["training.optimizer.lr=inf", "training.grad_clip=nan", "training.optimizer.weight_decay=-inf", "export.verify_max_rel_error=.inf"])
def test_inf_and_nan_settings_are_refused_where_typed(item: str):
    with pytest.raises(ConfigError, match="finite number"):
        compose("train" if item.startswith("training") else "export", ["model=tiny_llama", item])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ""])
def test_a_model_name_that_is_a_path_is_refused(name: str):
    with pytest.raises(ConfigError, match="must be a plain name"):
        compose("convert", ["model=tiny_llama", f"model.name={name}"])


@pytest.mark.parametrize(("group", "value"), [("model", "/no/such/model"), ("model", "./missing"), ("data", "~/no-such-corpus.txt")])
def test_a_missing_path_is_reported_as_a_missing_path(group: str, value: str):
    with pytest.raises(ConfigError, match=rf"{group}=.*no such file or folder"):
        compose("convert" if group == "model" else "train", ["model=tiny_llama", f"{group}={value}"])
