"""The stage registry: each stage is one file in this package that calls `register(Stage(...))`.

A Stage is everything the layers above need to know about one step of the product: the CLI command
it runs as (`wrinklefree <command>`), the training recipe it puts before the user's overrides, what
its config must say (`check`), its place in the pipeline, the config sections its Prefect form
shows, and the function that runs it. The CLI, the pipeline's planning and execution, the SkyPilot
job's command line, the MLflow run names, the Prefect forms and the per-stage flows all read this
table, so adding a stage is one file here plus its test.

Design choices:
- Stage files import only light modules at their top (config, artifacts, storage); torch, models,
  export and training are imported inside `run`. Discovering the registry (importing every file of
  this package) then costs well under a second, which the CLI's `config`/`options`, Prefect's cache
  key function and a flow's parameter validation all pay.
- The pipeline order is each stage's `position` (gaps of 10, so a new stage slots in without editing
  its neighbours); stages without one (eval) are commands, not pipeline steps.
- lrc and distill are pipeline stages that run as `wrinklefree train` with their recipe: their
  `command` is "train" and the CLI has no command of their name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from wrinklefree_core.artifacts.result import StageResult
from wrinklefree_core.config.compose import ConfigError
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.registry import Registry
from wrinklefree_core.tracking.params import Tracked


def _accept(cfg: RunConfig) -> str | None:
    return None


def _folder(cfg: RunConfig) -> str | None:
    return None


def _default_json(result: StageResult) -> dict[str, Any]:
    return {"out": result.location, "metrics": result.metrics}


def _default_report(result: StageResult) -> str:
    return result.summary or f"wrote {result.location}"


@dataclass(frozen=True)
class Section:
    """A config section that a stage's Prefect form shows, and what it holds in that stage."""

    name: str
    description: str


@dataclass(frozen=True)
class Stage:
    """One stage: what the CLI, the pipeline and the Prefect forms know of it (module docstring)."""

    name: str
    summary: str  # one line: CLI help, the flow's docstring, the pipeline form's description
    command: str  # the config stage it composes as, and the `wrinklefree` command it runs as
    run: Callable[[RunConfig], StageResult]
    position: int | None = None  # place in the pipeline (ascending); None = a command only
    reads: Literal["model", "checkpoint"] = "checkpoint"  # what the upstream artifact is passed as
    writes: bool = True  # whether it writes an artifact at `out=`
    artifact_file: Callable[[RunConfig], str | None] = _folder  # the file in its output folder that is the artifact; None: the folder
    recipe: str | None = None  # the `training=` option put before the user's overrides
    check: Callable[[RunConfig], str | None] = _accept  # what is wrong with a composed config, or None
    sections: tuple[Section, ...] = ()  # the config sections its Prefect form shows
    logs: tuple[str, ...] = ()  # the config sections (or dotted fields) its code reads: its MLflow params
    usage: str = ""  # the CLI's help line (command stages)
    announce: Callable[[RunConfig], str] | None = None  # the line the CLI prints before running
    report: Callable[[StageResult], str] = field(default=_default_report)  # what the CLI prints after
    as_json: Callable[[StageResult], dict[str, Any]] = field(default=_default_json)  # `--json` output

    @property
    def is_command(self) -> bool:
        """True when the CLI has a command of this stage's name."""
        return self.command == self.name

    @property
    def tracked(self) -> Tracked:
        """What MLflow records of this stage (run name number, params)."""
        return Tracked(self.name, number(self.name), self.logs)

    def problem(self, cfg: RunConfig) -> str | None:
        """What stops `cfg` from being a run of this stage (its recipe's check, then its input), or None."""
        found = self.check(cfg)
        if found:
            return found
        if self.position is not None and self.reads == "checkpoint" and not cfg.checkpoint:
            return f"stage '{self.name}' needs its input checkpoint: pass upstream_uri (or checkpoint=URI)"
        return None


_STAGES: Registry[Stage] = Registry(__package__, "stage", skip=("base",))


def register(stage: Stage) -> Stage:
    """Add `stage` to the registry (each stage file calls this once, at import)."""
    return _STAGES.add(stage.name, stage)


def unregister(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up with this)."""
    _STAGES.remove(name)


def registry() -> dict[str, Stage]:
    """Every registered stage by name, after importing each file of this package once."""
    return _STAGES.entries()


def get(name: str) -> Stage:
    """The stage called `name`; ConfigError naming the stages there are."""
    stages = registry()
    if name not in stages:
        raise ConfigError(f"unknown stage '{name}'; stages: {', '.join(stages)}")
    return stages[name]


def pipeline() -> tuple[Stage, ...]:
    """The pipeline's stages in order."""
    return tuple(sorted((s for s in registry().values() if s.position is not None), key=lambda s: s.position))


def pipeline_names() -> tuple[str, ...]:
    """The pipeline's stage names in order."""
    return tuple(s.name for s in pipeline())


def commands() -> dict[str, Stage]:
    """The stages the CLI runs as commands of their own name, in pipeline order (commands only last)."""
    ordered = sorted(registry().values(), key=lambda s: (s.position is None, s.position or 0, s.name))
    return {s.name: s for s in ordered if s.is_command}


def upstream_of(name: str) -> Stage | None:
    """The pipeline stage before `name` (None for the first)."""
    names = pipeline_names()
    index = names.index(name)
    return pipeline()[index - 1] if index else None


def number(name: str) -> int:
    """The stage's 1-based place in the pipeline (MLflow run names start with it); 0 when it is not a pipeline stage."""
    names = pipeline_names()
    return names.index(name) + 1 if name in names else 0
