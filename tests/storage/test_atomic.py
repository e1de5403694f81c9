"""atomic_folder: a folder appears complete or not at all, and a previous one survives every failure.

Crashes are simulated two ways: an os.rename that raises for one chosen call (the in-process
rollback runs), and a child process that dies with os._exit at the second rename (nothing runs,
exactly like a kill), after which a rerun in this process must recover.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wrinklefree_core.storage import atomic
from wrinklefree_core.storage.atomic import atomic_folder, recover_folder


class Boom(RuntimeError):
    pass


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(folder: Path, version: str) -> None:
    (folder / "weights.bin").write_bytes(version.encode() * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "meta.json").write_text(f'{{"version": "{version}"}}')


def publish(final: Path, version: str, **kwargs) -> None:
    with atomic_folder(final, **kwargs) as tmp:
        write(tmp, version)


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def fail_rename_calls(monkeypatch, failing: set[int]) -> list:
    """Make the os.rename calls numbered in `failing` (1-based) raise Boom; return the call log."""
    real = os.rename
    calls: list = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) in failing:
            raise Boom(f"rename #{len(calls)}")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    return calls


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    final = tmp_path / "out" / "ckpt"
    publish(final, "v1")
    return final, snapshot(final)


def test_success_publishes_a_new_folder(tmp_path):
    final = tmp_path / "a" / "b" / "ckpt"  # parents are created
    with atomic_folder(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".ckpt.tmp-") and not final.exists()
        write(tmp, "v1")
    assert snapshot(final)["sub/meta.json"] == b'{"version": "v1"}'
    assert hidden(final.parent) == []


def test_success_replaces_the_previous_folder(previous):
    final, _ = previous
    (final / "stale.txt").write_text("from v1")
    publish(final, "v2")
    assert snapshot(final) == {"weights.bin": b"v2" * 1000, "sub/meta.json": b'{"version": "v2"}'}
    assert hidden(final.parent) == []


def test_exception_inside_keeps_previous_folder_and_removes_temp(previous):
    final, before = previous
    with pytest.raises(Boom):
        with atomic_folder(final) as tmp:
            (tmp / "weights.bin").write_bytes(b"\x00" * 10)  # half-written
            raise Boom("disk full")
    assert snapshot(final) == before
    assert hidden(final.parent) == []


def test_exception_on_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_folder(tmp_path / "ckpt"):
            raise Boom("disk full")
    assert list(tmp_path.iterdir()) == []


def test_failed_second_rename_rolls_back_and_rerun_publishes(previous, monkeypatch):
    final, before = previous
    calls = fail_rename_calls(monkeypatch, failing={2})
    with pytest.raises(Boom, match="#2"):
        publish(final, "v2")
    assert calls[0][0] == "ckpt" and calls[1][1] == "ckpt"  # moved aside, then the new one failed to move in
    monkeypatch.undo()
    assert snapshot(final) == before
    assert hidden(final.parent) == []
    publish(final, "v2")
    assert snapshot(final)["sub/meta.json"] == b'{"version": "v2"}'


def test_crash_between_renames_keeps_a_complete_copy_and_rerun_recovers(previous, monkeypatch):
    final, before = previous
    fail_rename_calls(monkeypatch, failing={2, 3})  # the rollback rename fails too: nothing puts v1 back
    with pytest.raises(Boom):
        publish(final, "v2")
    monkeypatch.undo()
    assert not final.exists()
    assert hidden(final.parent) == [f".ckpt.old-{os.getpid()}"]
    assert snapshot(final.parent / f".ckpt.old-{os.getpid()}") == before

    publish(final, "v3")
    assert snapshot(final)["sub/meta.json"] == b'{"version": "v3"}'
    assert hidden(final.parent) == []


def test_recover_folder_puts_the_previous_copy_back(previous, monkeypatch):
    final, before = previous
    os.rename(final, final.parent / ".ckpt.old-1")  # what a crash of pid 1 between the renames leaves
    recover_folder(final)
    assert snapshot(final) == before
    assert hidden(final.parent) == []


def test_killed_writer_leaves_complete_folders_and_rerun_recovers(previous):
    final, before = previous
    child = textwrap.dedent(
        """
        import os, sys
        from wrinklefree_core.storage.atomic import atomic_folder

        real, calls = os.rename, []

        def rename(src, dst):
            calls.append(src)
            if len(calls) == 2:
                os._exit(17)  # killed between moving the old folder aside and moving the new one in
            real(src, dst)

        os.rename = rename
        with atomic_folder(sys.argv[1]) as tmp:
            (tmp / "weights.bin").write_bytes(b"v2" * 1000)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child, str(final)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    leftovers = hidden(final.parent)
    assert not final.exists() and len(leftovers) == 2
    old = next(final.parent / n for n in leftovers if ".old-" in n)
    new = next(final.parent / n for n in leftovers if ".tmp-" in n)
    assert snapshot(old) == before  # readable under the moved-aside name
    assert snapshot(new) == {"weights.bin": b"v2" * 1000}  # and the complete new copy beside it

    publish(final, "v3")
    assert snapshot(final)["sub/meta.json"] == b'{"version": "v3"}'
    assert hidden(final.parent) == []  # the dead writer's folders are gone


def test_recover_keeps_a_running_writers_temp_folder(previous):
    final, _ = previous
    live = final.parent / f".ckpt.tmp-{os.getppid()}"  # the parent process is certainly running
    live.mkdir()
    (live / "partial.bin").write_bytes(b"1")
    publish(final, "v2")
    assert hidden(final.parent) == [live.name]


def test_first_wins_keeps_an_existing_complete_folder(previous):
    final, before = previous
    with atomic_folder(final, mode="first_wins", complete=lambda p: (p / "sub" / "meta.json").is_file()) as tmp:
        write(tmp, "v2")
    assert snapshot(final) == before
    assert hidden(final.parent) == []


def test_first_wins_fails_over_an_incomplete_folder_and_fills_an_empty_one(tmp_path):
    final = tmp_path / "cache"
    final.mkdir()
    (final / "junk.txt").write_text("not a build")
    with pytest.raises(OSError):
        publish(final, "v1", mode="first_wins", complete=lambda p: (p / "sub" / "meta.json").is_file())
    assert snapshot(final) == {"junk.txt": b"not a build"}
    assert hidden(tmp_path) == []

    (final / "junk.txt").unlink()  # an empty folder is simply replaced
    publish(final, "v1", mode="first_wins")
    assert snapshot(final)["sub/meta.json"] == b'{"version": "v1"}'


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="first_wins"):
        with atomic_folder(tmp_path / "x", mode="overwrite"):
            pass


def test_dead_writers_temp_files_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys
    import time

    from wrinklefree_core.storage.atomic import STALE_AFTER_S, remove_dead_leftovers

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = time.time() - 2 * STALE_AFTER_S
        files = {
            "dead_gguf": tmp_path / f"m.gguf.tmp-{dead}",
            "dead_staging": tmp_path / f".m.gguf.unverified-{dead}",
            "live_staging": tmp_path / f".m.gguf.unverified-{live.pid}",
            "fresh_dead": tmp_path / f".stage.json.tmp-{dead}",
            "published": tmp_path / "m.gguf",
        }
        for name, path in files.items():
            path.write_text(name)
            if name != "fresh_dead":
                os.utime(path, (old, old))
        removed = remove_dead_leftovers(tmp_path)
        assert sorted(p.name for p in removed) == sorted([files["dead_gguf"].name, files["dead_staging"].name])
        assert all(files[k].exists() for k in ("live_staging", "fresh_dead", "published"))
    finally:
        live.kill()


def test_a_small_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from wrinklefree_core.storage.atomic import atomic_write_text

    path = tmp_path / "stage.json"
    atomic_write_text(path, '{"a": 1}\n')
    atomic_write_text(path, '{"a": 2}\n')
    assert path.read_text() == '{"a": 2}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["stage.json"]

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, '{"a": 3}\n')
    assert path.read_text() == '{"a": 2}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["stage.json"]
