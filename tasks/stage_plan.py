"""What a stage run will do, decided before it runs: its config, cache key and output URI.

Design choices:
- The stages, their order, commands and recipes come from the registry (wrinklefree_core/stages/):
  convert, train (training=unified), lrc (lrc_calibration), distill (bitdistill_full), export. The
  recipe is put before the user's overrides, so `training=...` can replace it, but each stage's
  check still holds (lrc keeps the lrc objective, distill a KD objective). A recipe this checkout
  lacks is a StageUnavailableError naming the file, never a silently skipped stage.
- Outputs are content-addressed: without an explicit `out=`, a stage writes to
  `<out_root>/<stage>/<key[:12]>` (GGUF export: `<that>/<model>.gguf`). A changed config or input
  therefore never overwrites, or resumes from, another run's artifact (the training stage resumes
  from `OUT.state` when it exists), and a cached result always points at the artifact its key
  describes.
- Planning reads only metadata (configs, stage.json, file sizes): it runs in Prefect's cache-key
  function on every call, and in the flow before a task is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.digest import artifact_digest, remote_digest, stage_key
from wrinklefree_core.config import ConfigError, compose, group_options
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.uri import is_gcs

STAGES = stage_registry.pipeline_names()
DEFAULT_OUT_ROOT = "outputs/pipeline"


class StageUnavailableError(RuntimeError):
    """A stage that this checkout cannot run (a recipe or a backend module is missing)."""


@dataclass
class StagePlan:
    """Everything decided before a stage runs."""

    stage: str
    items: list[str]  # the overrides `cfg` was composed from (what a remote job is given)
    cfg: RunConfig
    key: str
    folder_uri: str  # output folder (local path or gs://)
    out_uri: str  # the artifact the next step reads: the folder, or the .gguf inside it

    @property
    def writes_file(self) -> bool:
        """True when the artifact is a file inside the output folder (GGUF export)."""
        return self.out_uri != self.folder_uri


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_gcs(root) else str(Path(root, *parts))


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if is_gcs(uri) else str(Path(uri).parent)


def normalize_root(out_root: str | None) -> str:
    """The out root as an absolute local path (relative roots resolve against the working directory) or gs:// URI."""
    root = out_root or DEFAULT_OUT_ROOT
    return root if is_gcs(root) else str(Path(root).expanduser().resolve())


def stage_items(stage: str, overrides: list[str] | tuple[str, ...], upstream_uri: str | None = None) -> list[str]:
    """The override list a pipeline stage composes from: recipe, the user's overrides, the input."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
    spec = stage_registry.get(stage)
    items: list[str] = []
    if spec.recipe:
        recipe = spec.recipe
        chosen = any(o.startswith("training=") for o in overrides)
        if not chosen and recipe not in group_options("training"):
            raise StageUnavailableError(
                f"stage '{stage}' runs the training recipe '{recipe}' (configs/training/{recipe}.yaml), which this "
                f"checkout does not have; available recipes: {', '.join(group_options('training'))}"
            )
        items.append(f"training={recipe}")
    items.extend(overrides)
    if upstream_uri:
        items.append(f"{spec.reads}={upstream_uri}")
    return items


def check_recipe(stage: str, cfg: RunConfig) -> None:
    """Refuse a config whose recipe does not do what the stage is for, or that lacks its input."""
    problem = stage_registry.get(stage).problem(cfg)
    if problem:
        raise ConfigError(problem)


def compose_stage(stage: str, overrides: list[str] | tuple[str, ...], upstream_uri: str | None = None) -> RunConfig:
    """The validated RunConfig of a pipeline stage; raises ConfigError / StageUnavailableError with the fix."""
    items = stage_items(stage, overrides, upstream_uri)
    cfg = compose(stage_registry.get(stage).command, items)
    check_recipe(stage, cfg)
    return cfg


def _input_digest(uri: str, cfg: RunConfig) -> str:
    return remote_digest(uri, cfg.gcs) if is_gcs(uri) else artifact_digest(uri)


def plan_stage(
    stage: str, overrides: list[str] | tuple[str, ...], upstream_uri: str | None = None, out_root: str | None = None
) -> StagePlan:
    """Compose, fingerprint and place one stage run (reads the input's metadata, writes nothing)."""
    items = stage_items(stage, overrides, upstream_uri)
    cfg = compose_stage(stage, overrides, upstream_uri)
    root = normalize_root(out_root)
    reads_checkpoint = stage_registry.get(stage).reads == "checkpoint"
    input_digest = _input_digest(cfg.checkpoint, cfg) if cfg.checkpoint and reads_checkpoint else None
    source_digest = None
    if cfg.model.source == "hf" and cfg.model.path and Path(cfg.model.path).expanduser().exists():
        source_digest = artifact_digest(cfg.model.path)
    key = stage_key(stage, cfg, input_digest, source_digest, root)
    file_name = stage_registry.get(stage).artifact_file(cfg)
    if cfg.out:
        out_uri = cfg.out
        folder_uri = _parent(out_uri) if file_name else out_uri
    else:
        folder_uri = _join(root, stage, key[:12])
        out_uri = _join(folder_uri, file_name) if file_name else folder_uri
    return StagePlan(stage, items, cfg, key, folder_uri, out_uri)


def output_present(uri: str) -> bool:
    """Whether a stage output is still there (gs:// outputs are assumed present: listing them costs a round trip)."""
    if is_gcs(uri):
        return True
    path = Path(uri)
    return path.is_file() or (path.is_dir() and (path / "stage.json").is_file())
