"""Run the Triton kernels in the interpreter on machines without CUDA.

Triton decides between compiling and interpreting when `@triton.jit` decorates a kernel, i.e. when
`wrinklefree_core.quant.kernels` is first imported, so the variable is set here, at collection time,
before any test can import it. With CUDA present the kernels are compiled and tested on the GPU.
An explicit TRITON_INTERPRET in the environment is left alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
