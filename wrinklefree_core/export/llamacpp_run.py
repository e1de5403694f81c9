"""Run a GGUF in llama.cpp on one token sequence and read back its logits *and* its hidden states.

Verification needs more than the final logits. llama.cpp picks its CPU kernels per machine and per
load (weights repacked into CPU_REPACK buffers or not, AVX2 / AVX-512 / AMX builds, 1 or many
threads), and each path sums in its own fp32 order. A last-bit difference that lands an activation
on the other side of an int8 rounding boundary is a whole quantization step, which thirty layers can
amplify to ~1% of the logits: an end-to-end logits comparison cannot separate that from a small
export bug, and its tolerance ends up tuned to one CPU's sample. Reading each layer's output through
llama.cpp's eval callback lets the verifier compare one layer at a time, fed llama.cpp's own input,
where no amplification across layers exists (see verify.py).

Design choices:
- The low-level API (llama_model_load_from_file / llama_init_from_model / llama_decode) instead of
  llama_cpp.Llama: only a context created by us can carry `cb_eval`, and only model params set by us
  can turn weight repacking (`use_extra_bufts`) on or off.
- `ggml_tensor` is mirrored as a ctypes Structure from the pinned llama.cpp's ggml.h (checked against
  its size, 336 bytes); only F32 tensors with contiguous rows are read, which every captured name is.
- Captured: every `l_out-<layer>`, the name every llama.cpp graph (llama, qwen2, qwen3, bitnet) gives
  each layer's residual output, and the embedding lookup (kept as `inp_embd`, found by what it reads:
  see `_captured_name`). Each captured tensor splits llama.cpp's graph there; nothing else is asked for.
- One ubatch for the whole sequence (n_batch = n_ubatch = n_ctx), F32 KV cache, no flash attention,
  logits for every position: the only deliberate differences from PyTorch are the modelled ones.
- `KernelPath` says what ran: the build's CPU features, this CPU, threads, repacking asked and whether
  llama.cpp really used a repacked buffer (from its own log), so a report can name the path it checked.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wrinklefree_core.export import llamacpp_log

_GGML_TYPE_F32 = 0
CAPTURE_PATTERN = re.compile(r"^l_out-\d+$")


class _GGMLTensor(ctypes.Structure):
    """struct ggml_tensor of the pinned llama.cpp (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


assert ctypes.sizeof(_GGMLTensor) == 336, "ggml_tensor layout changed: update _GGMLTensor from ggml.h"


@dataclass(frozen=True)
class KernelPath:
    """Which llama.cpp CPU path produced a run's numbers."""

    threads: int
    repack_requested: bool
    repacked: bool  # llama.cpp put weights into a CPU_REPACK buffer (its log says so)
    build_features: str  # llama_print_system_info: what the library was compiled for
    cpu: str  # this machine's CPU model name
    cpu_flags: list[str] = field(default_factory=list)  # the SIMD features that select ggml kernels

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LlamaRun:
    """One evaluation in llama.cpp: its tokenization of the prompt, every position's logits, and the
    captured hidden states (name -> (tokens, width) float32)."""

    prompt_ids: list[int]
    logits: np.ndarray
    hidden: dict[str, np.ndarray]
    path: KernelPath


_SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")


def _cpu_identity() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU", []
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown CPU")
    flags_line = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(flags_line.split())
    return name, [f for f in _SIMD_FLAGS if f in present]


def build_features() -> str:
    """The compiled CPU features of the loaded llama.cpp build (its system info, CPU part only)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    text = info.decode() if isinstance(info, bytes) else str(info)
    on = [kv.split("=")[0].strip() for kv in text.split("|") if kv.strip().endswith("= 1")]
    return " ".join(on) or text.strip()


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def run_llamacpp(
    gguf_path: str | Path,
    ids: list[int],
    *,
    prompt: str | None = None,
    lora_path: str | Path | None = None,
    threads: int | None = None,
    repack: bool = True,
) -> LlamaRun:
    """Evaluate `ids` from an empty context; return logits, llama.cpp's ids for `prompt`, hidden states.

    Raises RuntimeError when llama.cpp refuses the file(s) (its log says why: see llamacpp_log).
    """
    import llama_cpp

    llamacpp_log.install()
    threads = threads or default_threads()
    start = llamacpp_log.mark()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = repack
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf_path}")
    adapter = ctx = batch = None
    hidden: dict[str, list[np.ndarray]] = {}
    callback = llama_cpp.ggml_backend_sched_eval_callback(_capture(hidden))  # kept alive until the context is freed
    try:
        if lora_path is not None:
            adapter = llama_cpp.llama_adapter_lora_init(model, str(lora_path).encode())
            if not adapter:
                raise RuntimeError(f"llama.cpp could not load the LoRA adapter {lora_path}")
        ctx = _context(llama_cpp, model, max(256, len(ids) + 16), threads, callback)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {gguf_path}")
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
                raise RuntimeError(f"llama.cpp could not apply the LoRA adapter {lora_path}")
        batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
        logits = _decode(llama_cpp, model, ctx, batch, ids, gguf_path)
        prompt_ids = _tokenize(llama_cpp, model, prompt) if prompt is not None else []
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx:
            llama_cpp.llama_free(ctx)
        if adapter:
            llama_cpp.llama_adapter_lora_free(adapter)
        llama_cpp.llama_model_free(model)
    path = _kernel_path(threads, repack, "".join(llamacpp_log.lines_since(start)))
    return LlamaRun(prompt_ids, logits, {k: np.concatenate(v) for k, v in hidden.items()}, path)


def _kernel_path(threads: int, repack: bool, log: str) -> KernelPath:
    """Which kernels ran: threads, whether llama.cpp repacked the weights (its log says so), the build and the CPU."""
    cpu, flags = _cpu_identity()
    return KernelPath(
        threads=threads,
        repack_requested=repack,
        repacked="CPU_REPACK model buffer" in log,
        build_features=build_features(),
        cpu=cpu,
        cpu_flags=flags,
    )


def _capture(hidden: dict[str, list[np.ndarray]]):
    """The eval callback: copies every captured F32 tensor (inp_embd, l_out-<i>) into `hidden`."""

    def on_tensor(tensor_p, ask, user_data):
        t = _GGMLTensor.from_address(tensor_p)
        name = _captured_name(t)
        if name is None:
            return False if ask else True
        if ask:
            return True
        width, rows = int(t.ne[0]), int(t.ne[1])
        if t.type != _GGML_TYPE_F32 or t.nb[0] != 4 or t.nb[1] != 4 * width or t.ne[2] != 1 or not t.data:
            return True  # a layout this reader does not know: left out, and the verifier says it is missing
        values = np.ctypeslib.as_array((ctypes.c_float * (width * rows)).from_address(t.data))
        hidden.setdefault(name, []).append(values.reshape(rows, width).copy())
        return True

    return on_tensor


def _context(llama_cpp, model, n_ctx: int, threads: int, callback):
    """A context with an F32 KV cache, no flash attention, one batch for the whole prompt, and the eval callback."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.type_k = cparams.type_v = _GGML_TYPE_F32
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.no_perf = True
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    return llama_cpp.llama_init_from_model(model, cparams)


def _decode(llama_cpp, model, ctx, batch, ids: list[int], gguf_path) -> np.ndarray:
    """Every position's logits of `ids` decoded in one batch, (len(ids), vocab)."""
    batch.n_tokens = len(ids)
    for i, tok in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, True
        batch.seq_id[i][0] = 0
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc} for {gguf_path}")
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(len(ids), n_vocab)).copy()


def _captured_name(t: _GGMLTensor) -> str | None:
    """The name a captured tensor is kept under, or None. The embedding lookup has no name of its own
    in llama.cpp's graph (its `inp_embd` is the unused vector-input branch): it is the F32 node whose
    first source is token_embd.weight and whose rows are n_embd wide (the tied head's matmul, which
    reads the same tensor, is n_vocab wide)."""
    name = t.name.decode(errors="replace")
    if CAPTURE_PATTERN.match(name):
        return name
    src = t.src[0]
    if src and t.type == _GGML_TYPE_F32:
        s = _GGMLTensor.from_address(src)
        if s.name == b"token_embd.weight" and t.ne[0] == s.ne[0]:
            return "inp_embd"
    return None


def _tokenize(llama_cpp, model, text: str) -> list[int]:
    vocab = llama_cpp.llama_model_get_vocab(model)
    raw = text.encode("utf-8")
    n_max = len(raw) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, True)
    if n < 0:
        raise RuntimeError(f"llama.cpp needs {-n} tokens for the prompt, more than {n_max}")
    return list(buf[:n])
