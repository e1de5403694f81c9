"""Where a stage reads its input artifacts and writes its output: a local path, gs://, or a bucket mount.

Stages compute on local folders only; this module maps the URIs of a RunConfig onto them and back.
- Inputs (`checkpoint=`, a `model=` folder) given as gs:// are downloaded, verified and cached by
  storage.artifacts.resolve_input (the training stage fetches a gs:// teacher only when an objective
  needs one). The RunConfig itself keeps the URIs: stage.json and a resumed run's config comparison
  see what was asked for, never one machine's cache path.
- An output (`out=`) becomes an OutputTarget, the local path the stage writes and how it is published:
    gs://...                     written to a local folder, then uploaded with the completion marker last;
    a folder in a bucket mount   written in place, then sealed: files the mount has not flushed yet are
                                 uploaded and the marker is written last through the API (storage/mounts.py);
    any other local path         written in place; nothing to publish.
- `gcs.enabled=true` without `out=` publishes to gs://<bucket>/<prefix>/<the local default's name>.
- A failed upload never touches the local output; the error says where it is and how to finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wrinklefree_core.config.run import RunConfig
from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.uri import GCSURI, LocalURI, StorageError, is_remote, parse_uri

DEFAULT_ROOT = Path("outputs")


# ------------------------------------------------------------------------------------------ inputs


def local_path(uri: str | None, gcs: GCSConfig) -> str | None:
    """`uri` as a local path: gs:// downloaded (verified, cached), anything else unchanged."""
    if uri is None or not is_remote(uri):
        return uri
    from wrinklefree_core.storage.artifacts import resolve_input

    return str(resolve_input(uri, gcs))


def local_inputs(cfg: RunConfig) -> tuple[RunConfig, dict[str, str]]:
    """A copy of `cfg` whose gs:// inputs are local folders, and {local folder: URI} to name them back."""
    origins: dict[str, str] = {}

    def resolve(uri: str | None) -> str | None:
        local = local_path(uri, cfg.gcs)
        if local != uri:
            origins[str(Path(local).resolve())] = uri
        return local

    update: dict = {"checkpoint": resolve(cfg.checkpoint)}
    if cfg.model.source == "hf" and cfg.model.path:
        update["model"] = cfg.model.model_copy(update={"path": resolve(cfg.model.path)})
    return cfg.model_copy(update=update), origins


def as_uris(inputs: dict[str, str], origins: dict[str, str]) -> dict[str, str]:
    """`inputs` (role -> path) with downloaded folders named by their gs:// URIs again."""
    def name(value: str) -> str:
        return origins.get(str(Path(value).resolve()), value) if value and not is_remote(value) else value

    return {role: name(value) for role, value in inputs.items()}


# ------------------------------------------------------------------------------------------ output


@dataclass(frozen=True)
class OutputTarget:
    """Where a stage's artifact goes (`uri`) and where the stage writes it (`local`)."""

    uri: str  # the artifact as the next stage names it: a folder, or a file inside the published folder
    local: Path  # what the stage writes (folder or file)
    folder: Path  # the local folder that is published (`local`, or its parent for a file)
    remote: GCSURI | None  # where `folder` is published; None for a plain local output
    mounted: bool  # `folder` is inside a bucket mount: written in place, only sealed afterwards

    def publish(self, gcs: GCSConfig) -> str:
        """Upload (or seal) the finished output; returns where it is now (gs:// or the local path).

        Local files are never modified.
        """
        if self.remote is None:
            return str(self.local)
        from wrinklefree_core.storage.gcs import GCSStore

        try:
            GCSStore(gcs).upload_folder(self.folder, self.remote, skip_identical=self.mounted)
        except StorageError as exc:
            raise StorageError(
                f"{exc} The finished output is intact at {self.folder}; once the bucket is reachable, publish it "
                f"with `python -m wrinklefree_core.storage.push {self.folder} {self.remote}` (or re-run the command)."
            ) from exc
        return str(self.local) if self.mounted else self.uri


def chosen_out(cfg: RunConfig, local_default: Path) -> str:
    """`out=`, else gs://bucket/prefix/<local default minus outputs/> with gcs.enabled, else the local default."""
    if cfg.out:
        return cfg.out
    if cfg.gcs.enabled:
        from wrinklefree_core.storage.artifacts import default_output_uri

        relative = local_default.relative_to(DEFAULT_ROOT) if local_default.is_relative_to(DEFAULT_ROOT) else local_default
        return default_output_uri(cfg.gcs, PurePosixPath(*relative.parts).as_posix())
    return str(local_default)


def plan_output(cfg: RunConfig, local_default: Path, *, is_file: bool = False, keep: bool = False) -> OutputTarget:
    """The OutputTarget of `cfg.out` (or its default).

    `is_file`: the artifact is a file and its folder is published (GGUF export). `keep`: a gs://
    output's local folder survives between runs (cache_dir()/runs/..., for resumable state beside it)
    instead of being a scratch folder emptied here.
    """
    from wrinklefree_core.storage.mounts import remote_of

    uri = chosen_out(cfg, local_default)
    parsed = parse_uri(uri)
    if isinstance(parsed, LocalURI):
        local = parsed.path
        folder = local.parent if is_file else local
        remote = remote_of(folder)
        return OutputTarget(uri, local, folder, remote, mounted=remote is not None)
    from wrinklefree_core.storage.artifacts import staging_dir, work_dir

    name = PurePosixPath(parsed.prefix).name
    remote = GCSURI(parsed.bucket, parsed.prefix.rpartition("/")[0]) if is_file else parsed
    if not remote.prefix:
        raise StorageError(f"out={uri}: a gs:// output needs a folder inside the bucket, e.g. gs://{parsed.bucket}/runs/{name}.")
    if keep:
        folder = work_dir(str(remote)) / PurePosixPath(remote.prefix).name
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = staging_dir(str(remote))
    local = folder / name if is_file else folder
    return OutputTarget(str(parsed), local, folder, remote, mounted=False)
