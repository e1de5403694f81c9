"""Export a BitNet checkpoint for llama.cpp (GGUF) and verify it there.

Modules, in the order an export runs them:
- gguf_layout: which llama.cpp arch (bitnet / llama / qwen2 / qwen3), where each tensor goes, refusals;
- gguf_quant: ternary matrices as TQ2_0/TQ1_0 (or the lossless Q4_0/Q8_0 fallback), floats as F16/F32;
- gguf_tokenizer: the byte-level BPE vocabulary, merges, special ids and pre-tokenizer name;
- gguf_writer: `write_gguf` (atomic);
- gguf_lora: `write_lora_gguf`: an LRC checkpoint as base GGUF + LoRA adapter GGUF (`<name>.lora.gguf`);
- gguf_report: what both wrote (records) and `format_report` / `format_summary` / `format_lora_report`;
- llamacpp_reference: a PyTorch forward with llama.cpp's weights and activation rounding (LoRA included);
- verify: `verify_gguf` (llama.cpp vs PyTorch, writes verification.json) and `export_gguf`
  (write, verify, publish only if verified; both files for an LRC checkpoint).
"""

from wrinklefree_core.export.gguf_layout import ExportError, GGUFLayout, plan_layout
from wrinklefree_core.export.gguf_tokenizer import detect_pre_tokenizer, read_vocab
from wrinklefree_core.export.gguf_lora import LoraLayout, lora_path_for, plan_lora, write_lora_gguf
from wrinklefree_core.export.gguf_report import GGUFExportReport, LoraExportReport, TensorRecord, format_lora_report, format_report
from wrinklefree_core.export.gguf_writer import write_gguf
from wrinklefree_core.export.llamacpp_reference import (
    llamacpp_numerics,
    read_gguf_tensors,
    read_lora_tensors,
    reference_logits,
)
from wrinklefree_core.export.verify import LLAMA_LOG_NAME, VERIFICATION_NAME, VerificationError, export_gguf, verify_gguf

__all__ = [
    "ExportError",
    "GGUFExportReport",
    "GGUFLayout",
    "LoraExportReport",
    "LoraLayout",
    "TensorRecord",
    "LLAMA_LOG_NAME",
    "VERIFICATION_NAME",
    "VerificationError",
    "detect_pre_tokenizer",
    "export_gguf",
    "format_lora_report",
    "format_report",
    "llamacpp_numerics",
    "lora_path_for",
    "plan_layout",
    "plan_lora",
    "read_gguf_tensors",
    "read_lora_tensors",
    "read_vocab",
    "reference_logits",
    "verify_gguf",
    "write_gguf",
    "write_lora_gguf",
]
