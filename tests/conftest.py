"""Run the Triton kernels in the interpreter on machines without CUDA.

Triton decides between compiling and interpreting when `@triton.jit` decorates a kernel, i.e. when
`wrinklefree_core.quant.kernels` is first imported, so the variable is set here, at collection time,
before any test module can import it (this is the suite's root conftest, loaded before test modules
import transformers/torch._dynamo, which import triton). Should triton still have been imported
first, test_triton_interpret.py reruns itself in a fresh process. With CUDA present the kernels are
compiled and tested on the GPU. An explicit TRITON_INTERPRET in the environment is left alone.

`private_cache_env` (session) is what the stage-test folders build their autouse env fixture from
(tests/training: `training_env`, tests/flows: `flow_env`); see its docstring.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def private_cache_env(tmp_path_factory):
    """Factory: `private_cache_env(name, **extra_env)` -> a fresh cache folder the session now uses.

    It points WRINKLEFREE_CACHE at the folder, sets OMP_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false
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
        torch.set_num_threads(1)
        return root

    yield make
    for patch in reversed(patches):
        patch.undo()
    torch.set_num_threads(threads)
