"""No silent replacement of finished work: what a stage may write at its `out=`.

A stage output is a folder (convert, training, an HF export) or a GGUF file whose folder also holds
the export's stage.json, verification.json and reports. Before any work starts (so a refusal
costs nothing), `check_output` refuses:

- an output that is the run's own input (`train checkpoint=X out=X`): the stage would replace what
  it is still reading;
- a GGUF export into a folder that holds another stage's artifact (a checkpoint): the export's
  stage.json would replace that checkpoint's record;
- a finished output (its stage.json) that another stage or a different config wrote, unless
  `overwrite=true` says to replace it.

An identical rerun (same stage, same config up to IGNORED: where it runs and how it is tracked)
goes ahead, so a retried task or a repeated command still recomputes or resumes. Only local
folders are checked (a bucket mount included); a gs:// output is staged locally and uploaded with
its completion marker last, and is not listed here (a round trip per stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wrinklefree_core.config.flatten import flatten_values
from wrinklefree_core.config.redact import redact
from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint
from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, read_manifest
from wrinklefree_core.uri import is_remote

# Keys that never make two runs' outputs different: where it runs, how it is tracked and resumed.
IGNORED = (
    "stage",
    "out",
    "overwrite",
    "tracking",
    "compute",
    "gcs",
    "training.resume",
    "training.checkpoint_every",
    "training.val_every",
    "training.keep_state",
    "training.auto_batch_size",
)


class OutputExistsError(FileExistsError):
    """`out=` holds something this run must not replace (the message says how to go on)."""


def differing_keys(saved: dict[str, Any], current: dict[str, Any], ignored: tuple[str, ...] = IGNORED) -> list[str]:
    """Dotted keys whose values differ between two config dicts, leaving out `ignored` (and what is below them)."""
    a, b = flatten_values(saved), flatten_values(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [k for k in keys if not any(k == p or k.startswith(p + ".") for p in ignored)]


def _same_place(a: str | Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == b.expanduser().resolve()


def _not_beside(artifact: Path, holder: str) -> OutputExistsError:
    folder = artifact.parent
    return OutputExistsError(
        f"out={artifact}: {folder} holds {holder}; an export writes its stage.json, verification.json and reports "
        f"beside the GGUF, which would replace that record. Give the GGUF a folder of its own, e.g. out={folder}-gguf/{artifact.name}"
    )


def check_output(
    stage: str, cfg: RunConfig, artifact: Path, inputs: dict[str, str | None], *, is_file: bool = False, compare: bool = True
) -> None:
    """Refuse to write `stage`'s artifact at `artifact` (a local folder, or a file when `is_file`); see the module docstring.

    `compare=False` skips the config comparison with a finished output (a resumable training run
    compares against its checkpoint instead); the input and export-folder checks always apply.
    """
    folder = artifact.parent if is_file else artifact
    for parent in (artifact, *artifact.parents):
        if parent.is_file() and (parent != artifact or not is_file):
            raise OutputExistsError(f"out={artifact}: {parent} is a file, so the {stage} output cannot be written there. Choose another out=")
        if parent.is_dir():
            break
    for role, uri in inputs.items():
        # A GGUF beside its own input checkpoint is refused below, with the folder to use instead.
        if uri and not is_remote(uri) and _same_place(uri, artifact):
            raise OutputExistsError(
                f"out={artifact} is this run's {role}; the {stage} output would replace what the run reads. Choose another out="
            )
    manifest_path = folder / MANIFEST_NAME
    if is_file and not manifest_path.is_file() and is_bitnet_checkpoint(folder):
        raise _not_beside(artifact, "a BitNet checkpoint")
    if not manifest_path.is_file():
        return
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as exc:  # a damaged record of unknown origin: never replace it unasked
        if cfg.overwrite:
            return
        raise OutputExistsError(
            f"out={artifact}: {manifest_path} is unreadable ({exc}); it may be another run's record. Choose another out=, "
            "or pass overwrite=true to replace it."
        ) from exc
    if is_file and manifest.stage != stage:
        raise _not_beside(artifact, f"a {manifest.stage} output")
    if not compare:
        return
    ignored = IGNORED if stage == "export" else (*IGNORED, "export")
    differences = differing_keys(manifest.config, redact(cfg.model_dump(mode="json")), ignored)
    if manifest.stage == stage and not differences:
        return  # an identical rerun: recompute or resume in place
    if cfg.overwrite:
        print(f"overwrite=true: replacing the {manifest.stage} output at {artifact} ({manifest.created_at})", flush=True)
        return
    why = f"a {manifest.stage} stage" if manifest.stage != stage else "a different config (" + ", ".join(differences[:6]) + (", ..." if len(differences) > 6 else "") + ")"
    raise OutputExistsError(
        f"out={artifact} already holds a finished {manifest.stage} output, written {manifest.created_at} by {why}. "
        "Choose another out=, or pass overwrite=true to replace it."
    )
