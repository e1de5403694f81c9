"""Every run names the code it ran: the checkout's commit and dirtiness, the entry point, the user."""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

from wrinklefree_core.tracking import source

REPO = Path(__file__).resolve().parents[2]


def test_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    tags = source.source_tags("wrinklefree export")
    if head.returncode != 0:  # an installed copy, not a checkout
        assert source.COMMIT_TAG not in tags
        return
    assert tags[source.COMMIT_TAG] == head.stdout.strip()
    assert tags[source.DIRTY_TAG] in ("true", "false")
    assert source.short_commit() == head.stdout.strip()[:7]
    assert tags[source.SOURCE_NAME_TAG] == "wrinklefree export" and tags[source.SOURCE_TYPE_TAG] == "LOCAL"
    assert tags[source.USER_TAG] == getpass.getuser()


def test_outside_a_checkout_there_is_no_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "_PACKAGE_ROOT", tmp_path)
    source.code_tags.cache_clear()
    try:
        tags = source.source_tags("flows.full_pipeline")
        assert source.COMMIT_TAG not in tags and source.short_commit() is None
        assert tags[source.SOURCE_NAME_TAG] == "flows.full_pipeline"
    finally:
        source.code_tags.cache_clear()
