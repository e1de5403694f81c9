"""Every GGUF tensor type the exporter writes, one row each; the writer, the encoders, the LoRA
adapter writer and the llama.cpp reference all read their facts here.

    name   block  file type      roles                     llama.cpp's activation  encoder
    tq2_0  256    MOSTLY_TQ2_0   ternary                   Q8_K                    gguf-py
    tq1_0  256    MOSTLY_TQ1_0   ternary                   Q8_K                    gguf-py
    q4_0   32     MOSTLY_Q4_0    fallback, adapter         Q8_0                    gguf-py (ternary: own)
    q8_0   32     MOSTLY_Q8_0    fallback, float, adapter  Q8_0                    gguf-py (ternary: own)
    q5_0   32     MOSTLY_Q5_0    adapter                   Q8_0                    gguf-py
    q4_k   256    MOSTLY_Q4_K_M  float                     Q8_K                    ggml
    q5_k   256    MOSTLY_Q5_K_M  float                     Q8_K                    ggml
    q6_k   256    MOSTLY_Q6_K    float                     Q8_K                    ggml
    f16    1      MOSTLY_F16     float, adapter            F16                     numpy
    f32    1      ALL_F32        float, adapter            F32                     numpy

Roles: `ternary` (export.ternary_type: a ternary matrix whose width fills its blocks), `fallback`
(export.fallback_type: a ternary matrix of any width that is a multiple of 32, held exactly), `float`
(export.float_type: embeddings, head, full-precision matrices), `adapter` (export.lora_type).

Adding a type is one row here, plus its name in the matching Literal of config/export.py (config sits
below export, so it cannot read this table; tests/export/test_gguf_types.py checks the two agree). The
row says how the type is encoded, how llama.cpp rounds the activation it is multiplied with (its
vec_dot_type, which llamacpp_reference.py models) and, for 32-blocks, the code of a block's absmax (the
fp16 scale is absmax / code, so values beyond fp16_max * code overflow it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gguf import GGMLQuantizationType, LlamaFileType

T = GGMLQuantizationType
F = LlamaFileType
Role = Literal["ternary", "fallback", "float", "adapter"]


@dataclass(frozen=True)
class TensorType:
    """One GGUF tensor type and what the exporter needs to know about it."""

    name: str  # the config spelling (export.*_type)
    ggml: GGMLQuantizationType
    file_type: LlamaFileType  # general.file_type of a file whose main type this is
    block: int  # values per block along a row (1: a plain float type)
    roles: frozenset[str]
    activation: Literal["q8_k", "q8_0", "f16", "f32"]  # how llama.cpp rounds the other operand of a matmul
    encoder: Literal["gguf", "ggml", "numpy"]  # gguf-py's quantizer, llama.cpp's ggml (ggml_quants.py), or a cast
    largest_code: int | None = None  # 32-block types: the code a block's absmax maps to

    @property
    def quantized(self) -> bool:
        return self.block > 1


TYPES: tuple[TensorType, ...] = (
    TensorType("tq2_0", T.TQ2_0, F.MOSTLY_TQ2_0, 256, frozenset({"ternary"}), "q8_k", "gguf"),
    TensorType("tq1_0", T.TQ1_0, F.MOSTLY_TQ1_0, 256, frozenset({"ternary"}), "q8_k", "gguf"),
    TensorType("q4_0", T.Q4_0, F.MOSTLY_Q4_0, 32, frozenset({"fallback", "adapter"}), "q8_0", "gguf", 8),
    TensorType("q8_0", T.Q8_0, F.MOSTLY_Q8_0, 32, frozenset({"fallback", "float", "adapter"}), "q8_0", "gguf", 127),
    TensorType("q5_0", T.Q5_0, F.MOSTLY_Q5_0, 32, frozenset({"adapter"}), "q8_0", "gguf", 16),
    TensorType("q4_k", T.Q4_K, F.MOSTLY_Q4_K_M, 256, frozenset({"float"}), "q8_k", "ggml"),
    TensorType("q5_k", T.Q5_K, F.MOSTLY_Q5_K_M, 256, frozenset({"float"}), "q8_k", "ggml"),
    TensorType("q6_k", T.Q6_K, F.MOSTLY_Q6_K, 256, frozenset({"float"}), "q8_k", "ggml"),
    TensorType("f16", T.F16, F.MOSTLY_F16, 1, frozenset({"float", "adapter"}), "f16", "numpy"),
    TensorType("f32", T.F32, F.ALL_F32, 1, frozenset({"float", "adapter"}), "f32", "numpy"),
)
_BY_GGML = {t.ggml: t for t in TYPES}


def of_role(role: Role) -> dict[str, GGMLQuantizationType]:
    """{config name: ggml type} of the types that may fill `role`, in table order."""
    return {t.name: t.ggml for t in TYPES if role in t.roles}


def tensor_type(qtype: GGMLQuantizationType) -> TensorType:
    """The row of a ggml type; KeyError names the types the exporter knows."""
    try:
        return _BY_GGML[qtype]
    except KeyError:
        raise KeyError(f"{qtype.name} is not a GGUF type this exporter writes ({', '.join(t.name for t in TYPES)})") from None


def encoded_by(encoder: str) -> frozenset[GGMLQuantizationType]:
    """The ggml types whose blocks `encoder` writes."""
    return frozenset(t.ggml for t in TYPES if t.encoder == encoder)
