"""Run the Triton kernels in the interpreter on machines without CUDA.

Triton decides between compiling and interpreting when `@triton.jit` decorates a kernel, i.e. when
`wrinklefree_core.quant.kernels` is first imported, so the variable is set here, at collection time,
before any test module can import it (this is the suite's root conftest, loaded before test modules
import transformers/torch._dynamo, which import triton). Should triton still have been imported
first, test_triton_interpret.py reruns itself in a fresh process. With CUDA present the kernels are
compiled and tested on the GPU. An explicit TRITON_INTERPRET in the environment is left alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
