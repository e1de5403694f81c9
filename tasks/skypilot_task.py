"""Build the SkyPilot task that runs one WrinkleFree stage on GPU nodes.

Design choices:
- deploy/sky/stage.yaml is the template (workdir, setup, defaults, the reasoning in comments); this
  module only fills in what depends on the RunConfig. `render_task_config` is a pure function from
  (config, stage, overrides) to a task-YAML dict, so tests check the task without a cloud; sky is
  imported only by `build_sky_task`, which hands that dict to `sky.Task.from_yaml_config`.
- The job runs the very CLI a local run uses, with `compute.backend=local` appended: on its node the
  stage runs in-process. Overrides are shell-quoted into the run line (one copy, visible in the
  dashboard). More than one node runs the same module under torchrun, addressed through SkyPilot's
  SKYPILOT_* variables, with FSDP unless the config names another strategy.
- A cluster is torn down after the job (compute.teardown), so outputs must go to the bucket: an
  `out=` or `checkpoint=` the cluster cannot reach or that dies with it is refused here, before
  anyone pays for a GPU. The bucket is mounted at /checkpoints; `mount_path_for` maps gs:// URIs
  of that bucket onto it, and the job's WRINKLEFREE_BUCKET_MOUNTS declares the mount, so the stage
  seals an output written there with the storage layer's completion marker once it is complete
  (the mount uploads files in no particular order and writes no marker by itself).
- No credentials enter a task: GCS access and an HF token come from the cloud environment, and env
  names that look like secrets are refused.
- `python -m tasks.skypilot_task STAGE key=value ...` prints the rendered task, for `sky launch FILE`.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from wrinklefree_core.config.flatten import flatten_values
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.stages import base as stage_registry
from wrinklefree_core.storage.mounts import MOUNTS_ENV
from wrinklefree_core.uri import is_gcs

if TYPE_CHECKING:
    import sky

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO_ROOT / "deploy" / "sky" / "stage.yaml"
CHECKPOINT_MOUNT = "/checkpoints"
MASTER_PORT = 29500
# rclone-backed mount with a local write cache; the template's comment says why.
MOUNT_MODE = "MOUNT_CACHED"
MOUNT_TYPE = "MODEL_CHECKPOINT_RW"

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)

BASE_ENVS = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def stage_command(stage: str, overrides: Sequence[str]) -> tuple[str, list[str]]:
    """The CLI command and arguments that run `stage` (stages/base.py): its own command, or `train` with its recipe (lrc)."""
    spec = stage_registry.get(stage)
    if spec.is_command:
        return stage, list(overrides)
    # The recipe goes first so an explicit training=... among the overrides still wins.
    return spec.command, [f"training={spec.recipe}", *overrides]


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The task template as a dict (a fresh copy each call)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a SkyPilot task mapping")
    return data


def resources_for(cfg: RunConfig) -> dict[str, Any]:
    """The `resources:` section for the config's compute settings."""
    compute = cfg.compute
    resources: dict[str, Any] = {
        "accelerators": compute.accelerators,
        "disk_size": compute.disk_size_gb,
        "use_spot": compute.use_spot,
    }
    if compute.cloud or compute.region:
        # SkyPilot's `infra` spelling: cloud[/region], '*' for any cloud.
        resources["infra"] = "/".join(p for p in (compute.cloud or "*", compute.region) if p)
    return resources


def run_command_for(cfg: RunConfig, stage: str, overrides: Sequence[str]) -> str:
    """The job's bash script: the stage on one node, or under torchrun across cfg.compute.num_nodes."""
    command, args = stage_command(stage, overrides)
    lines = ["set -euo pipefail", "source .venv/bin/activate"]
    if cfg.compute.num_nodes == 1:
        # One node (any number of GPUs): the CLI runs the stage and Lightning starts its own ranks.
        lines.append(shlex.join(["wrinklefree", command, *args, "compute.backend=local"]))
    else:
        strategy = "fsdp" if cfg.compute.strategy == "auto" else cfg.compute.strategy
        # The first address SkyPilot lists is the head node; every node runs this same line.
        lines.append('MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"')
        launcher = (
            "torchrun --nnodes=$SKYPILOT_NUM_NODES --node_rank=$SKYPILOT_NODE_RANK "
            "--nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE --master_addr=$MASTER_ADDR "
            f"--master_port={MASTER_PORT}"
        )
        stage_args = shlex.join(["-m", "wrinklefree_core.cli", command, *args, "compute.backend=local", f"compute.strategy={strategy}"])
        lines.append(f"{launcher} {stage_args}")
    return "\n".join(lines) + "\n"


def mount_path_for(uri: str, cfg: RunConfig) -> str:
    """Where `gs://<cfg.gcs.bucket>/path` appears on the cluster (/checkpoints/path)."""
    bucket = cfg.gcs.bucket
    prefix = f"gs://{bucket}"
    if bucket is None or not (uri == prefix or uri.startswith(prefix + "/")):
        raise ValueError(f"{uri} is not in the mounted bucket (gcs.bucket={bucket})")
    rest = uri[len(prefix):].strip("/")
    return str(PurePosixPath(CHECKPOINT_MOUNT) / rest) if rest else CHECKPOINT_MOUNT


def _under_mount(path: str) -> bool:
    return PurePosixPath(path).is_relative_to(CHECKPOINT_MOUNT)


def _reachable_from_cluster(uri: str, cfg: RunConfig) -> bool:
    if is_gcs(uri):
        return True
    return _under_mount(uri) and cfg.gcs.bucket is not None


def check_artifacts_reachable(cfg: RunConfig, stage: str, overrides: Sequence[str]) -> None:
    """Refuse an input the cluster cannot read, or an output that would vanish with the cluster."""
    command, _ = stage_command(stage, overrides)
    where = f"gs://... or {CHECKPOINT_MOUNT}/... (the gcs.bucket mount)"
    for field in ("out", "checkpoint"):
        uri = getattr(cfg, field)
        if uri is not None and _under_mount(uri) and cfg.gcs.bucket is None:
            raise ValueError(f"{field}={uri} is under {CHECKPOINT_MOUNT}, which exists only with gcs.bucket set")
    if cfg.checkpoint is not None and not _reachable_from_cluster(cfg.checkpoint, cfg):
        raise ValueError(
            f"checkpoint={cfg.checkpoint} is a path on this machine, which the cluster cannot see; use {where}"
        )
    if stage_registry.get(command).writes and cfg.compute.teardown:
        if cfg.out is None or not _reachable_from_cluster(cfg.out, cfg):
            shown = "the default local folder" if cfg.out is None else cfg.out
            raise ValueError(
                f"out={shown} would be deleted with the cluster (compute.teardown=true); "
                f"write to {where}, or keep the cluster with compute.teardown=false"
            )


def check_overrides_match(cfg: RunConfig, stage: str, overrides: Sequence[str]) -> None:
    """The job composes its config from `overrides` alone; refuse a `cfg` that says something else.

    (A caller that edits cfg, e.g. cfg.model_copy(update={"out": ...}), must put the same change in
    the overrides, or the resources would follow one config and the job another.)
    """
    from wrinklefree_core.config import compose

    command, args = stage_command(stage, overrides)
    # The job appends compute.backend=local (and the strategy), and names the stage itself.
    ignored = {"stage", "compute.backend", "compute.strategy"}
    want = flatten_values(compose(command, args).model_dump(mode="json"))
    have = flatten_values(cfg.model_dump(mode="json"))
    differ = sorted(k for k in want.keys() | have.keys() if k not in ignored and want.get(k) != have.get(k))
    if differ:
        shown = ", ".join(f"{k}: {have.get(k)!r} (overrides give {want.get(k)!r})" for k in differ[:5])
        raise ValueError(f"cfg differs from what the overrides compose on the cluster: {shown}; pass the change as key=value")


def _check_envs(envs: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in envs.items():
        if _SECRET_NAME.search(key):
            raise ValueError(
                f"env {key} looks like a credential; credentials come from the cloud environment "
                "(service account, `sky launch --secret`), never from the task"
            )
        checked[str(key)] = str(value)
    return checked


def render_task_config(
    cfg: RunConfig,
    stage: str,
    overrides: Sequence[str],
    *,
    envs: Mapping[str, str] | None = None,
    workdir: Path = REPO_ROOT,
    template: Path = TEMPLATE_PATH,
) -> dict[str, Any]:
    """The SkyPilot task-YAML dict for `stage` with `overrides` under `cfg` (pure: reads only the template).

    `cfg` is the RunConfig composed from the same overrides (checked: the job recomposes it from
    them on the cluster); `envs` are added to the job's environment (e.g.
    WRINKLEFREE_MLFLOW_PARENT_RUN_ID).
    """
    check_overrides_match(cfg, stage, overrides)
    check_artifacts_reachable(cfg, stage, overrides)
    task = load_template(template)
    task["name"] = f"wrinklefree-{stage}"
    task["resources"] = {**task.get("resources", {}), **resources_for(cfg)}
    task["num_nodes"] = cfg.compute.num_nodes
    task["workdir"] = str(Path(workdir).resolve())
    task["envs"] = {**task.get("envs", {}), **BASE_ENVS, "WRINKLEFREE_STAGE": stage, **_check_envs(envs or {})}
    if cfg.gcs.bucket is not None:
        mount = {"source": f"gs://{cfg.gcs.bucket}", "mode": MOUNT_MODE, "type": MOUNT_TYPE}
        task["file_mounts"] = {**task.get("file_mounts", {}), CHECKPOINT_MOUNT: mount}
        task["envs"][MOUNTS_ENV] = f"{CHECKPOINT_MOUNT}=gs://{cfg.gcs.bucket}"
    task["run"] = run_command_for(cfg, stage, overrides)
    return task


def build_sky_task(
    cfg: RunConfig, stage: str, overrides: Sequence[str], *, envs: Mapping[str, str] | None = None
) -> sky.Task:
    """The `sky.Task` for one stage run; built offline, launched by tasks.skypilot_launch.launch_stage."""
    import sky

    return sky.Task.from_yaml_config(render_task_config(cfg, stage, overrides, envs=envs))


def default_cluster_name(stage: str, run_id: str | None = None) -> str:
    """A valid, recognisable cluster name: wf-<stage>-<run id or random>."""
    suffix = run_id or secrets.token_hex(3)
    name = re.sub(r"[^a-z0-9-]+", "-", f"wf-{stage}-{suffix}".lower()).strip("-")
    return name[:40].rstrip("-")


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.skypilot_task STAGE key=value ...`: print the rendered task YAML."""
    from wrinklefree_core.config import compose

    parser = argparse.ArgumentParser(prog="python -m tasks.skypilot_task", description=main.__doc__)
    parser.add_argument("stage")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    command, stage_args = stage_command(args.stage, args.overrides)
    cfg = compose(command, stage_args)
    print(dump_task_yaml(render_task_config(cfg, args.stage, args.overrides)), end="")
    return 0


class _TaskDumper(yaml.SafeDumper):
    """Writes multi-line strings (setup, run) as literal blocks, the way task YAMLs are written by hand."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TaskDumper.add_representer(str, _str_representer)


def dump_task_yaml(task: Mapping[str, Any]) -> str:
    """A rendered task as YAML that `sky launch FILE` accepts."""
    return yaml.dump(dict(task), Dumper=_TaskDumper, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.exit(main())
