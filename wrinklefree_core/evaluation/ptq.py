"""llama.cpp's own quantization of the teacher: the files a user would make instead of training.

    teacher HF folder --write_full_precision_gguf--> F32 GGUF (temporary)
                      --llama_model_quantize-------> teacher-f16.gguf, teacher-q4_0.gguf, teacher-q2_k.gguf, ...

Design choices:
- One source for every row: the teacher the pipeline distils from, written once as an F32 GGUF of
  its own arch by the project's writer (the file convert_hf_to_gguf would give), then quantized by
  llama.cpp's `llama_model_quantize` with its default parameters, F16 included. So the rows are what
  `llama-quantize` makes, and the F32 file (4 bytes a weight) is not kept.
- Cached under `<cache>/ptq/<teacher>-<key>/<type>/`, keyed by the teacher folder's files (names,
  sizes, mtimes), the llama.cpp build and PTQ_VERSION: a baseline is made once per teacher and
  machine setup. Each type's folder is published atomically, with a stage.json whose
  `inputs.checkpoint` is the teacher folder, so the GGUF's held-out rows are tokenized by the
  teacher's tokenizer like every other row, and whose `metrics.weights` is the teacher's weight count.
- Rows narrower than a type's blocks are llama.cpp's business: its quantizer falls back per tensor
  (Q2_K -> Q4_0 -> F16 for a 64-wide toy model), as it would for the user.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import tempfile
from pathlib import Path

from wrinklefree_core.artifacts.manifest import MANIFEST_NAME, build_manifest, manifest_json
from wrinklefree_core.storage.atomic import atomic_folder

PTQ_VERSION = 1  # bump when the files made here change for the same teacher
# Baseline type -> llama.cpp's ftype (llama_cpp.LLAMA_FTYPE_*), as `llama-quantize <type>` names it.
FTYPES = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


class BaselineError(RuntimeError):
    """A baseline could not be made; the message names the teacher, the type and what to do."""


def baseline_label(ptq_type: str) -> str:
    """The eval-table row (and MLflow metric) name of a baseline: `teacher-q4_0`."""
    return f"teacher-{ptq_type}"


def _teacher_key(teacher: Path) -> str:
    import llama_cpp

    h = hashlib.sha256(f"{PTQ_VERSION}:{getattr(llama_cpp, '__version__', '?')}".encode())
    for f in sorted(p for p in teacher.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(teacher)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _file_name(ptq_type: str) -> str:
    return f"teacher-{ptq_type}.gguf"


def _complete(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file() and any(folder.glob("teacher-*.gguf"))


def quantize(src: Path, dst: Path, ptq_type: str) -> None:
    """`llama-quantize src dst <type>` through llama.cpp's C API, or BaselineError."""
    import llama_cpp

    from wrinklefree_core.export import llamacpp_log

    llamacpp_log.install()  # the quantizer's per-tensor lines stay off the terminal
    start = llamacpp_log.mark()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[ptq_type])
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0 or not dst.is_file():
        raise BaselineError(f"llama.cpp could not quantize {src.name} to {ptq_type}; its log ends: {' | '.join(llamacpp_log.lines_since(start)[-3:])}")


def ptq_files(teacher: str | Path, types: list[str]) -> dict[str, Path]:
    """{type: GGUF} of llama.cpp's quantization of the HF teacher folder, made (once) when missing."""
    from wrinklefree_core.export.gguf_writer import write_full_precision_gguf
    from wrinklefree_core.paths import cache_dir

    teacher = Path(teacher).expanduser().resolve()
    if not (teacher / "config.json").is_file():
        raise BaselineError(
            f"the teacher {teacher} is not a Hugging Face model folder (no config.json): llama.cpp baselines are made "
            "from the full-precision teacher; pass teacher=DIR or eval.baselines=[]"
        )
    unknown = [t for t in types if t not in FTYPES]
    if unknown:
        raise BaselineError(f"unknown baseline type(s) {unknown}; choose from {', '.join(FTYPES)}")
    root = cache_dir() / "ptq" / f"{teacher.name}-{_teacher_key(teacher)}"
    folders = {t: root / t for t in types}
    missing = [t for t, folder in folders.items() if not _complete(folder)]
    if missing:
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent) as tmp:  # the F32 source, beside where the files land
            source = Path(tmp) / "teacher-f32.gguf"
            report = write_full_precision_gguf(teacher, source, "f32")
            weights = report.weights or sum(math.prod(t.shape) for t in report.tensors)
            for ptq_type in missing:
                with atomic_folder(folders[ptq_type], mode="first_wins", complete=_complete) as out:
                    quantize(source, out / _file_name(ptq_type), ptq_type)
                    manifest = build_manifest(
                        "ptq",
                        {"ptq_type": ptq_type, "ftype": FTYPES[ptq_type], "source": "f32 GGUF of the teacher"},
                        {"checkpoint": str(teacher), "source_model": str(teacher)},
                        {"weights": weights, "source_f32_bytes": report.file_bytes},
                    )
                    (out / MANIFEST_NAME).write_text(manifest_json(manifest))
    return {t: folders[t] / _file_name(t) for t in types}
