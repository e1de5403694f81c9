"""Run the Triton kernels in the interpreter on machines without CUDA.

Triton decides between compiling and interpreting when `@triton.jit` decorates a kernel, i.e. when
`wrinklefree_core.quant.kernels` is first imported, so the variable is set here, at collection time,
before any test module can import it (this is the suite's root conftest, loaded before test modules
import transformers/torch._dynamo, which import triton). Should triton still have been imported
first, test_triton_interpret.py reruns itself in a fresh process. With CUDA present the kernels are
compiled and tested on the GPU. An explicit TRITON_INTERPRET in the environment is left alone.

`mlflow_store` (session, autouse): WRINKLEFREE_MLFLOW_STORE points at a sqlite file of the session, so
stages run from tests that keep the user's cache folder (CLI tests in tests/stages, tests/export)
log there, never into the user's own store; `private_cache_env` removes it again, so the sessions
with a private cache exercise the default store under that cache.

`mlflow_server` (session, started on first use): a real `mlflow server` on loopback with a fresh
sqlite store and proxied artifacts, for the tests that log over HTTP.

`private_cache_env` (session) is what the stage-test folders build their autouse env fixture from
(tests/training: `training_env`, tests/flows: `flow_env`); see its docstring.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow-store') / 'mlflow.db'}"
    patch.setenv("WRINKLEFREE_MLFLOW_STORE", store)
    yield store
    patch.undo()


@pytest.fixture(scope="session")
def private_cache_env(tmp_path_factory, mlflow_store):
    """Factory: `private_cache_env(name, **extra_env)` -> a fresh cache folder the session now uses.

    It points WRINKLEFREE_CACHE at the folder (and the MLflow default store with it), sets OMP_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false
    and `extra_env` in os.environ (so CLI and worker subprocesses inherit them) and torch to one
    thread: on a shared 2-core machine two OpenMP threads per process slow tiny-model steps down
    badly. Each caller gets its own folder; everything is undone when the session ends.
    """
    threads = torch.get_num_threads()
    patches: list[pytest.MonkeyPatch] = []

    def make(name: str, **extra_env: str):
        root = tmp_path_factory.mktemp(name)
        patch = pytest.MonkeyPatch()
        patches.append(patch)
        env = {"WRINKLEFREE_CACHE": str(root), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("WRINKLEFREE_MLFLOW_STORE", raising=False)  # the default store, under this cache
        torch.set_num_threads(1)
        return root

    yield make
    for patch in reversed(patches):
        patch.undo()
    torch.set_num_threads(threads)


MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> tuple[str, Path]:
    """(URI, artifact folder) of a running `mlflow server`; stopped (its whole process group) at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri, root / "artifacts"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
