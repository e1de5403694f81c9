"""Who ran what: the git commit, source and user tags every MLflow run carries.

MLflow's fluent API guesses these from the main script, which under a Prefect worker or a pytest
run is not this project's. Here they come from the checkout that holds this package (commit,
branch, whether the tree had uncommitted changes), else from the installed package's version, and
the entry point is named by the caller (`wrinklefree export`, `flows.full_pipeline`). Git is asked
once per process, with a timeout, and a missing git binary or a non-git install is not an error.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import os
import subprocess
from pathlib import Path

COMMIT_TAG = "mlflow.source.git.commit"
BRANCH_TAG = "mlflow.source.git.branch"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
USER_TAG = "mlflow.user"
DIRTY_TAG = "wrinklefree.git.dirty"
VERSION_TAG = "wrinklefree.version"

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_tags() -> dict[str, str]:
    """Commit, branch and dirtiness of the checkout this code runs from (empty when it is not one), and the package version."""
    tags: dict[str, str] = {}
    try:
        tags[VERSION_TAG] = importlib.metadata.version("wrinklefree")
    except importlib.metadata.PackageNotFoundError:
        pass
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags[COMMIT_TAG] = commit
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags[BRANCH_TAG] = branch
        status = _git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags[DIRTY_TAG] = str(bool(status)).lower()
    return tags


def short_commit() -> str | None:
    """The first 7 characters of the commit, for run names."""
    commit = code_tags().get(COMMIT_TAG)
    return commit[:7] if commit else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return os.environ.get("USER", "unknown")


def source_tags(entry: str, source_type: str = "LOCAL") -> dict[str, str]:
    """The tags of a run started by `entry`: code version, source name and type, user."""
    return {**code_tags(), SOURCE_NAME_TAG: entry, SOURCE_TYPE_TAG: source_type, USER_TAG: _user()}
