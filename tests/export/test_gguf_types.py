"""The GGUF type table: the config offers exactly its rows, and every row does what it claims."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from gguf import quants

from wrinklefree_core.config.export import ExportConfig
from wrinklefree_core.export import gguf_types
from wrinklefree_core.export.gguf_quant import TERNARY_PACKERS, encode_float, encode_ternary, quantize_roundtrip
from wrinklefree_core.export.llamacpp_reference import activation_roundtrip

FIELDS = {"ternary_type": "ternary", "fallback_type": "fallback", "float_type": "float", "lora_type": "adapter"}


@pytest.mark.parametrize("field, role", FIELDS.items())
def test_the_config_offers_exactly_the_tables_types(field, role):
    offered = set(typing.get_args(ExportConfig.model_fields[field].annotation))
    assert offered == set(gguf_types.of_role(role)), f"export.{field}'s Literal and the {role} rows of gguf_types.py differ"


def test_every_file_type_and_name_is_used_once():
    assert len({t.file_type for t in gguf_types.TYPES}) == len({t.name for t in gguf_types.TYPES}) == len(gguf_types.TYPES)


@pytest.mark.parametrize("row", [t for t in gguf_types.TYPES if t.roles & {"ternary", "fallback"}], ids=lambda t: t.name)
def test_every_ternary_type_holds_s_times_w_q_exactly(row):
    assert "ternary" in row.roles or row.ggml in TERNARY_PACKERS, f"{row.name} is a fallback type without a packer"
    weight = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    encoded = encode_ternary(weight, row.ggml, "w")  # raises if the blocks do not read back as fp16(s) * W_q
    back = quants.dequantize(encoded.data, row.ggml)
    assert set(np.unique(back / np.float32(encoded.scale)).tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("row", [t for t in gguf_types.TYPES if t.roles & {"float", "adapter"}], ids=lambda t: t.name)
def test_every_float_type_encodes_what_the_reference_reads(row):
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    encoded = encode_float(x, row.ggml, "t")
    assert encoded.ggml_type == row.ggml
    back = np.asarray(quants.dequantize(encoded.data, row.ggml) if row.quantized else encoded.data, dtype=np.float32)
    assert torch.equal(torch.from_numpy(back.reshape(3, 256)), quantize_roundtrip(x, row.ggml))
    assert activation_roundtrip(x, row.ggml).shape == x.shape  # llama.cpp's activation rounding is modelled


def test_an_unknown_type_names_the_known_ones():
    from gguf import GGMLQuantizationType

    with pytest.raises(KeyError, match="IQ2_XS is not a GGUF type this exporter writes.*tq2_0"):
        gguf_types.tensor_type(GGMLQuantizationType.IQ2_XS)
