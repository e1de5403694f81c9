"""Which llama.cpp architecture a converted checkpoint becomes, and where every tensor goes.

Design choices:
- The plan is made from the loaded model and its BitNetSettings *before* a byte is written, and it
  refuses (ExportError) anything llama.cpp would run differently from PyTorch, naming the reason and
  the setting to change. A GGUF that loads but computes something else is the failure this avoids.
- SubLN 'bitdistill' -> arch `bitnet` (llama.cpp src/models/bitnet.cpp): attn_sub_norm [n_embd] before
  wo, ffn_sub_norm [n_ff] before down, the token embedding doubles as the output head, NEOX RoPE
  (= HF rotate_half, so q/k rows are written unpermuted), one RMS epsilon for every norm. Its loader
  creates no bias tensors, wq is [n_embd, n_embd] (so n_head*head_dim must equal n_embd), there is no
  QK-norm, and every layer must carry both sub-norms (a layer left full precision has none).
- SubLN 'none' -> the model's own arch (llama / qwen2 / qwen3). llama.cpp's `llama` graph uses the
  interleaved (NORM) RoPE, so q/k rows (and their biases) get the usual per-head permutation;
  qwen2/qwen3 use NEOX RoPE and are written as is. Layers in skip_layers, and projections not in
  target_modules, are plain matmul weights there and are written as float_type (ggml multiplies F16/F32
  weights like any other type).
- SubLN 'all' has no llama.cpp graph at all and is refused.
- LRC adapters (lrc_U/lrc_V) belong in a LoRA adapter GGUF beside the base file (gguf_lora.py). A plan
  for the base of such a checkpoint is made only when the caller says the adapter is written too
  (`with_lora=True`): the base file alone computes the model *without* its corrections, which is not
  the checkpoint, so a base-only export of an LRC checkpoint is refused like any other mismatch.
- The HF -> GGUF name table is explicit; a state-dict entry it does not know is an error, never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from wrinklefree_core.models.architectures import GraphSpec, architecture_of, gguf_arch_of, graph
from wrinklefree_core.models.rope import rope_parameters, rope_problem, rope_problem_for_arch
from wrinklefree_core.export.gguf_rope import RopeScaling, rope_scaling
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.lrc import LRC_PARAM_NAMES
from wrinklefree_core.config.bitnet import BitNetSettings

Role = Literal["ternary", "matrix", "embedding", "output", "norm", "bias"]

_LAYER_NAMES = {
    "input_layernorm.weight": ("attn_norm.weight", "norm"),
    "post_attention_layernorm.weight": ("ffn_norm.weight", "norm"),
    "self_attn.q_norm.weight": ("attn_q_norm.weight", "norm"),
    "self_attn.k_norm.weight": ("attn_k_norm.weight", "norm"),
    "self_attn.o_proj.sub_norm.weight": ("attn_sub_norm.weight", "norm"),
    "mlp.down_proj.sub_norm.weight": ("ffn_sub_norm.weight", "norm"),
}
_PROJ_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message says why and what to change."""


@dataclass(frozen=True)
class ModelDims:
    """The hyperparameters every llama.cpp graph reads."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    rope: RopeScaling = RopeScaling("default")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its HF and GGUF names, what it is, and the RoPE permutation if any.

    `permute_heads` is the head count of the llama q/k row permutation (None: rows kept as they are).
    """

    hf_name: str
    gguf_name: str
    role: Role
    permute_heads: int | None = None


@dataclass(frozen=True)
class GGUFLayout:
    """The export plan: llama.cpp arch, hyperparameters, and every tensor in state-dict order."""

    arch: str
    dims: ModelDims
    tied_embeddings: bool
    tensors: list[TensorSpec] = field(default_factory=list)

    def by_gguf_name(self) -> dict[str, TensorSpec]:
        """Map GGUF tensor name -> spec (for reading a written file back)."""
        return {t.gguf_name: t for t in self.tensors}


def model_dims(config: Any) -> ModelDims:
    """Read the llama.cpp hyperparameters from an HF config; refuse RoPE variants llama.cpp is not told about."""
    rope = rope_parameters(config)
    problem = rope_problem(config)
    if problem is not None:
        raise ExportError(f"Cannot export this checkpoint to GGUF: {problem}.")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ExportError(
            f"hidden_act '{config.hidden_act}': the llama.cpp graphs used here run a SiLU-gated MLP only."
        )
    heads = config.num_attention_heads
    return ModelDims(
        n_layer=config.num_hidden_layers,
        n_embd=config.hidden_size,
        n_ff=config.intermediate_size,
        n_head=heads,
        n_head_kv=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        n_vocab=config.vocab_size,
        n_ctx_train=config.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        rms_eps=float(config.rms_norm_eps),
        rope=rope_scaling(config),
    )


def _refuse(why: str, fix: str) -> ExportError:
    return ExportError(f"Cannot export this checkpoint to GGUF: {why}. {fix}.")


def _check_graph(g: GraphSpec, model: nn.Module, settings: BitNetSettings, spec, dims: ModelDims, tied: bool) -> None:
    """Refuse what llama.cpp graph `g` (models/architectures/) would compute differently from the model."""
    own = f"Convert with subln=none to export it as llama.cpp arch '{spec.gguf_arch}'" if g.sub_norms else f"Use a model that {g.name} runs"
    if spec.qk_norm and not g.qk_norm:
        raise _refuse(f"llama.cpp's {g.name} graph has no QK-norm, and this model ({spec.hf_class}) needs it", own)
    biased = sorted(spec.biased - g.biases)
    if biased:
        raise _refuse(f"the model has {', '.join(biased)} biases and llama.cpp's {g.name} graph loads none of them", own)
    if g.tied_head and not tied:
        raise _refuse(
            f"llama.cpp's {g.name} graph reuses the token embedding as the output head, but this model has its own "
            "lm_head (tie_word_embeddings is false)",
            own + ", or start from a model with tied embeddings",
        )
    if g.width_is_heads and dims.n_head * dims.head_dim != dims.n_embd:
        raise _refuse(
            f"n_head*head_dim = {dims.n_head}*{dims.head_dim} != hidden_size {dims.n_embd}, and llama.cpp's {g.name} "
            "graph shapes wq/wo as [n_embd, n_embd]",
            own if g.sub_norms else "Use a model whose head_dim is hidden_size/num_attention_heads",
        )
    if g.rows_permuted and dims.head_dim % 2:
        raise _refuse(f"head_dim {dims.head_dim} is odd; RoPE needs pairs", "Use an even head_dim")
    if g.sub_norms:
        _check_sub_norms(g, settings, spec, dims)


def _check_sub_norms(g: GraphSpec, settings: BitNetSettings, spec, dims: ModelDims) -> None:
    if settings.skip_layers:
        raise _refuse(
            f"skip_layers {settings.skip_layers} leaves layers without SubLN, but llama.cpp's {g.name} graph applies "
            "attn_sub_norm/ffn_sub_norm in every layer",
            f"Convert with skip_layers=[] (or with subln=none, exporting as '{spec.gguf_arch}')",
        )
    missing = sorted({"o_proj", "down_proj"} - set(settings.target_modules))
    if missing:
        raise _refuse(
            f"target_modules lacks {missing}, so those projections have no SubLN, which llama.cpp's {g.name} graph applies",
            "Convert with o_proj and down_proj in target_modules",
        )
    if settings.subln_eps is not None and settings.subln_eps != dims.rms_eps:
        raise _refuse(
            f"subln_eps {settings.subln_eps} differs from rms_norm_eps {dims.rms_eps}, and llama.cpp uses one "
            "epsilon for every RMS norm",
            "Convert with subln_eps=null",
        )


def _is_lrc_tensor(hf_name: str) -> bool:
    return hf_name.rsplit(".", 1)[-1] in LRC_PARAM_NAMES


def _gguf_name(hf_name: str, tied: bool) -> tuple[str, Role]:
    """Map one state-dict name to (GGUF name, role); role 'matrix' is refined by the caller."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight", "embedding"
    if hf_name == "model.norm.weight":
        return "output_norm.weight", "norm"
    if hf_name == "lm_head.weight" and not tied:
        return "output.weight", "output"
    m = _LAYER_RE.match(hf_name)
    if m:
        layer, rest = m.groups()
        if rest in _LAYER_NAMES:
            name, role = _LAYER_NAMES[rest]
            return f"blk.{layer}.{name}", role
        module, _, kind = rest.rpartition(".")
        if module in _PROJ_NAMES and kind in ("weight", "bias"):
            return f"blk.{layer}.{_PROJ_NAMES[module]}.{kind}", "matrix" if kind == "weight" else "bias"
    raise ExportError(
        f"Cannot export tensor '{hf_name}': it has no place in llama.cpp's graph. The exporter knows embeddings, "
        "norms, attention/MLP projections and SubLN; add a mapping in wrinklefree_core/export/gguf_layout.py."
    )


def target_arch(model: nn.Module, settings: BitNetSettings) -> str:
    """The llama.cpp architecture a checkpoint exports as: `bitnet` with SubLN, else the model's own."""
    return gguf_arch_of(model, settings.subln)


def plan_layout(model: nn.Module, settings: BitNetSettings, *, with_lora: bool = False) -> GGUFLayout:
    """Decide the GGUF arch and the per-tensor plan for a loaded BitNet model, or raise ExportError.

    Nothing is written; every refusal (SubLN 'all', bitnet with QK-norm / biases / untied head /
    n_head*head_dim != hidden / skipped layers, unknown tensors) happens here. LRC adapter tensors
    are refused unless `with_lora` (the caller writes them as a LoRA adapter GGUF), in which case the
    plan covers the base tensors only.
    """
    if settings.subln == "all":
        raise _refuse(
            "SubLN 'all' (an RMSNorm before every BitLinear) has no llama.cpp graph",
            "Convert with subln=bitdistill (exports as arch bitnet) or subln=none (exports as the model's own arch)",
        )
    lrc = {n for n in model.state_dict() if _is_lrc_tensor(n)}
    if lrc and not with_lora:
        raise _refuse(
            f"it carries {len(lrc) // 2} low-rank correction (LRC) adapters, which the base GGUF cannot hold "
            "(llama.cpp runs them as a LoRA adapter GGUF loaded beside the base model, and the base file alone "
            "computes the model without its corrections)",
            "Export base + adapter together: export_gguf / `wrinklefree export` writes <name>.gguf and "
            "<name>.lora.gguf for an LRC checkpoint, write_lora_gguf writes both without verifying",
        )
    spec = architecture_of(model)
    config = model.config
    dims = model_dims(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    arch = target_arch(model, settings)
    rope_refusal = rope_problem_for_arch(config, arch)
    if rope_refusal is not None:
        raise _refuse(rope_refusal, "Convert the model again with the setting named")
    g = graph(arch)
    _check_graph(g, model, settings, spec, dims, tied)

    ternary = {name for name, m in model.named_modules() if isinstance(m, BitLinear)}
    permute = g.rows_permuted
    seen: set[str] = set()
    tensors: list[TensorSpec] = []
    for hf_name in model.state_dict():
        if hf_name in lrc:
            continue  # written to the LoRA adapter GGUF (gguf_lora.py)
        if hf_name == "lm_head.weight" and tied:
            continue  # the same tensor as the embedding; llama.cpp reuses token_embd
        gguf_name, role = _gguf_name(hf_name, tied)
        module = hf_name.rpartition(".")[0]
        proj = module.rpartition(".")[2]
        if role == "matrix" and module in ternary:
            role = "ternary"
        if role == "bias" and proj not in g.biases:
            raise _refuse(f"llama.cpp's {arch} graph loads no bias for {proj} ('{hf_name}')", "Use a model without it")
        heads = None
        if permute and proj in ("q_proj", "k_proj"):
            heads = dims.n_head if proj == "q_proj" else dims.n_head_kv
        if gguf_name in seen:
            raise ExportError(f"Two tensors map to GGUF name '{gguf_name}' (last: '{hf_name}'): a bug in the name table.")
        seen.add(gguf_name)
        tensors.append(TensorSpec(hf_name, gguf_name, role, heads))
    return GGUFLayout(arch=arch, dims=dims, tied_embeddings=tied, tensors=tensors)


def permute_rows(w, n_heads: int):
    """HF rotate_half order -> llama.cpp interleaved RoPE order, per head, on dim 0 (weights or biases)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rows(w, n_heads: int):
    """Inverse of permute_rows: llama.cpp interleaved order back to HF rotate_half order."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
