"""Zero-pad a BitNet model's widths to multiples of 256, so that every ternary matrix can be TQ2_0/TQ1_0.

llama.cpp's TQ types pack 256 weights per block along each row's input, so a matrix whose input width is
576 (SmolLM2's hidden size) or 896 (Qwen2-0.5B's) cannot be TQ and falls back to Q4_0 (4.5 bits per
weight instead of 2.06). Padding makes a wider model that computes the same function; the exporter then
writes the wider model, and verification checks llama.cpp against it and against the original.

What is padded, and why it is exact:
- Hidden size E -> E' (zero columns in every matrix that reads the residual stream, zero rows in every
  matrix that writes it, zero columns in the token embedding). The padded coordinates of the residual
  stream stay exactly zero through every layer.
- FFN width F -> F' (zero rows in gate/up, zero columns in down).
- Attention: query heads H -> H', KV heads K -> K'. A query head must keep its own KV head, and a padded
  query head must output exactly zero (the attention SubLN normalizes over all heads, so a padded head
  that averaged a real V would change the result). So padded query heads sit only in KV groups whose K
  and V are zero: a zero query gives uniform attention over a zero V. When whole zero groups alone cannot
  reach a width that is a multiple of 256 at a reasonable size (Qwen2-0.5B: 14 heads in groups of 7 would
  need 28 heads), each real KV head is written `kv_copies` times and its query heads split over the
  copies (groups of 7 -> 7 groups of 1): llama.cpp maps query head h to KV head h // (H'/K'), so the
  copies keep every query with its own K and V. The cheapest arrangement (fewest weights, the embedding
  counted) is chosen.
- RMS norms over a padded width N' (real width N, r = N/N') see a mean square r times the real one:
  g' x / sqrt(r mean(x^2) + eps') with g' = g sqrt(r) and eps' = eps r is exactly g x / sqrt(mean(x^2) + eps).
  llama.cpp has one epsilon for every norm, eps' = eps r_E (the residual stream's ratio). A norm over
  another ratio r (the FFN SubLN when F is padded less than E, Qwen3's per-head q/k norms, r = 1) gets
  its input scaled by c = sqrt(r_E / r): sqrt(c^2 r m + eps r_E) = sqrt(r_E) sqrt(m + eps), so with
  g' = g sqrt(r) the norm's output is again exactly g x / sqrt(m + eps). The matrix that writes that
  input carries c (up_proj for the FFN SubLN, v_proj for the attention SubLN, q/k_proj for q/k norms):
  its ternary scale, bias and LRC factor U are multiplied by c, which a TQ block's fp16 scale holds
  like any other.
- Ternary weights keep their exact values: each padded BitLinear gets a latent weight W_q * v whose
  ternarization (the training rule, `quant.reference.ternarize_weight`) gives back exactly the original
  W_q, padded with zeros, and exactly the original scale (times c). Zero rows/columns do not move a
  per-token int8 activation scale (absmax), so activations quantize to the same values.
- LRC adapters: V gets zero rows for padded inputs, U zero rows for padded outputs; the rank is kept.

The padded model is built from a copy of the loaded one, module by module; nothing here writes a file.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wrinklefree_core.export.gguf_layout import ExportError
from wrinklefree_core.models.architectures import graph
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.models.subln import SubLN
from wrinklefree_core.quant.reference import ternarize_weight, weight_scale

BLOCK = 256  # llama.cpp's TQ1_0/TQ2_0 block along a row's input (QK_K)
# A padded ternary scale may differ from the original's by a few fp32 ulps where no latent hits it.
MAX_SCALE_ERROR = 5e-7
# Weights of the embedding (and an untied head) cost about 4x a ternary weight at the default types.
_EMBEDDING_WEIGHT = 4


def _up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass(frozen=True)
class PaddingPlan:
    """The widths before and after padding. `kv_copies`: how many times each real KV head is written."""

    n_embd: int
    n_embd_to: int
    n_ff: int
    n_ff_to: int
    n_head: int
    n_head_to: int
    n_head_kv: int
    n_head_kv_to: int
    kv_copies: int
    head_dim: int

    @property
    def active(self) -> bool:
        return (self.n_embd, self.n_ff, self.n_head, self.n_head_kv) != (
            self.n_embd_to, self.n_ff_to, self.n_head_to, self.n_head_kv_to
        )

    @property
    def ratio_embd(self) -> float:
        return self.n_embd / self.n_embd_to

    @property
    def ratio_ff(self) -> float:
        return self.n_ff / self.n_ff_to

    @property
    def ratio_attn(self) -> float:
        return self.n_head / self.n_head_to

    def describe(self) -> str:
        """One line for reports and logs."""
        kv = f"{self.n_head_kv} -> {self.n_head_kv_to}"
        if self.kv_copies > 1:
            kv += f" (each written {self.kv_copies}x)"
        return (
            f"hidden {self.n_embd} -> {self.n_embd_to}, ffn {self.n_ff} -> {self.n_ff_to}, "
            f"heads {self.n_head} -> {self.n_head_to}, kv heads {kv}, head_dim {self.head_dim}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def _weights(plan: PaddingPlan, vocab: int, tied: bool) -> int:
    e, a, kv, f = plan.n_embd_to, plan.n_head_to * plan.head_dim, plan.n_head_kv_to * plan.head_dim, plan.n_ff_to
    per_layer = 2 * e * a + 2 * e * kv + 3 * e * f
    return per_layer + _EMBEDDING_WEIGHT * vocab * e * (1 if tied else 2)


def plan_padding(
    n_embd: int, n_ff: int, n_head: int, n_head_kv: int, head_dim: int, *, same_width: bool, vocab: int, tied: bool
) -> PaddingPlan:
    """The cheapest padding that makes every projection's input width a multiple of 256.

    `same_width`: the llama.cpp graph needs n_head * head_dim == n_embd (bitnet, qwen2). Returns a plan
    with `active` False when the model needs none.
    """
    if n_head % n_head_kv:
        raise ExportError(f"{n_head} query heads do not split into {n_head_kv} KV groups; export with export.pad=false.")
    group = n_head // n_head_kv
    f_to = _up(n_ff)
    best: PaddingPlan | None = None
    for copies in (c for c in range(1, group + 1) if group % c == 0):
        sub = group // copies  # query heads per KV head after the split
        kv_to = n_head_kv * copies
        while True:
            h_to = kv_to * sub
            a_to = h_to * head_dim
            e_to = a_to if same_width else _up(n_embd)
            if a_to % BLOCK == 0 and a_to >= n_head * head_dim and (not same_width or a_to >= n_embd):
                break
            kv_to += 1
        plan = PaddingPlan(n_embd, e_to, n_ff, f_to, n_head, h_to, n_head_kv, kv_to, copies, head_dim)
        if best is None or _weights(plan, vocab, tied) < _weights(best, vocab, tied):
            best = plan
    assert best is not None
    return best


def plan_for_model(model: nn.Module, arch: str) -> PaddingPlan:
    """plan_padding for a loaded HF model exported as llama.cpp `arch`."""
    c = model.config
    heads = c.num_attention_heads
    return plan_padding(
        c.hidden_size,
        c.intermediate_size,
        heads,
        getattr(c, "num_key_value_heads", None) or heads,
        getattr(c, "head_dim", None) or c.hidden_size // heads,
        same_width=graph(arch).width_is_heads,  # wq/wo shaped [n_embd, n_embd] in that llama.cpp graph
        vocab=c.vocab_size,
        tied=bool(getattr(c, "tie_word_embeddings", False)),
    )


# -- index maps: for each new position, the old position it copies (-1: zero) -------------------------


def _prefix(n: int, n_to: int) -> torch.Tensor:
    return torch.cat([torch.arange(n), torch.full((n_to - n,), -1, dtype=torch.long)])


def _kv_rows(plan: PaddingPlan) -> torch.Tensor:
    hd, real_slots = plan.head_dim, plan.n_head_kv * plan.kv_copies
    rows = [torch.arange(hd) + (slot // plan.kv_copies) * hd for slot in range(real_slots)]
    rows.append(torch.full(((plan.n_head_kv_to - real_slots) * hd,), -1, dtype=torch.long))
    return torch.cat(rows)


def _take(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """t with dim `dim` rebuilt from `index` (old positions, -1 for a zero slice)."""
    out = t.index_select(dim, index.clamp(min=0).to(t.device))
    shape = [1] * t.dim()
    shape[dim] = -1
    return out * (index >= 0).to(device=t.device, dtype=t.dtype).view(shape)


def latent_for(wq: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """A latent weight whose ternarization is (wq, scale): wq * v, with v walked by fp32 ulps until the
    training rule's absmean gives `scale` bit for bit, or as close as 64 steps get."""
    nnz = int(torch.count_nonzero(wq))
    if nnz == 0:
        return torch.zeros_like(wq, dtype=dtype)
    target = np.float32(scale)
    v = np.float32(float(target) * wq.numel() / nnz)
    best_error, best_v = math.inf, v
    for _ in range(64):
        got = np.float32(weight_scale(wq.to(dtype) * float(v)).item())
        if abs(float(got) - float(target)) < best_error:
            best_error, best_v = abs(float(got) - float(target)), v
        if got == target:
            break
        v = np.nextafter(v, np.float32(np.inf) if got < target else np.float32(0))
    return wq.to(dtype) * float(best_v)


@dataclass
class PaddedModel:
    """A padded copy of a model, the plan it follows, and how exactly it holds the original's ternary weights."""

    model: nn.Module
    settings: BitNetSettings
    plan: PaddingPlan
    ternary_checked: int
    scale_max_rel_error: float


def _axes(name: str, plan: PaddingPlan) -> tuple[torch.Tensor | None, ...]:
    """Index maps for each dim of the parameter `name` (None: unchanged dim)."""
    e = _prefix(plan.n_embd, plan.n_embd_to)
    f = _prefix(plan.n_ff, plan.n_ff_to)
    q = _prefix(plan.n_head * plan.head_dim, plan.n_head_to * plan.head_dim)
    kv = _kv_rows(plan)
    module, _, kind = name.rpartition(".")
    leaf = module.rpartition(".")[2]
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return None, e
    if leaf in ("input_layernorm", "post_attention_layernorm", "norm") and "sub_norm" not in module:
        return (e,)
    if leaf in ("q_norm", "k_norm"):
        return (None,)
    if leaf == "sub_norm":
        return (q,) if ".o_proj." in name else (f,)
    out_in = {
        "q_proj": (q, e), "k_proj": (kv, e), "v_proj": (kv, e), "o_proj": (e, q),
        "gate_proj": (f, e), "up_proj": (f, e), "down_proj": (e, f),
    }
    if leaf in out_in:
        rows, cols = out_in[leaf]
        by_kind = {"weight": (rows, cols), "bias": (rows,), "lrc_U": (rows, None), "lrc_V": (cols, None)}
        if kind in by_kind:
            return by_kind[kind]
    raise ExportError(f"Padding does not know the parameter '{name}'; export with export.pad=false.")


def _gain(name: str, plan: PaddingPlan) -> float:
    """sqrt(r) for a norm weight over a padded width (r = real / padded); 1 otherwise."""
    module = name.rpartition(".")[0]
    leaf = module.rpartition(".")[2]
    if leaf == "sub_norm":
        return math.sqrt(plan.ratio_attn if ".o_proj." in name else plan.ratio_ff)
    if leaf in ("input_layernorm", "post_attention_layernorm", "norm"):
        return math.sqrt(plan.ratio_embd)
    return 1.0


def _output_scales(model: nn.Module, plan: PaddingPlan) -> dict[str, float]:
    """Projection -> c, for the projections that write a SubLN's input over a ratio other than E's."""
    scales: dict[str, float] = {}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(attn.o_proj, "sub_norm", None) is not None and plan.ratio_attn != plan.ratio_embd:
            scales[f"model.layers.{i}.self_attn.v_proj"] = math.sqrt(plan.ratio_embd / plan.ratio_attn)
        if getattr(mlp.down_proj, "sub_norm", None) is not None and plan.ratio_ff != plan.ratio_embd:
            scales[f"model.layers.{i}.mlp.up_proj"] = math.sqrt(plan.ratio_embd / plan.ratio_ff)
        if getattr(attn, "q_norm", None) is not None and plan.ratio_embd != 1.0:  # per-head norms: r = 1
            for proj in ("q_proj", "k_proj"):
                scales[f"model.layers.{i}.self_attn.{proj}"] = math.sqrt(plan.ratio_embd)
    return scales


def _set_shapes(padded: nn.Module, plan: PaddingPlan, eps: float) -> None:
    c = padded.config
    c.hidden_size, c.intermediate_size = plan.n_embd_to, plan.n_ff_to
    c.num_attention_heads, c.num_key_value_heads, c.head_dim = plan.n_head_to, plan.n_head_kv_to, plan.head_dim
    c.rms_norm_eps = eps
    for module in padded.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = module.weight.shape[1]
        if hasattr(module, "num_key_value_groups"):
            module.num_key_value_groups = plan.n_head_to // plan.n_head_kv_to
        if isinstance(module, SubLN):
            module.eps = eps
        elif hasattr(module, "variance_epsilon"):
            module.variance_epsilon = eps


def pad_model(model: nn.Module, settings: BitNetSettings, plan: PaddingPlan) -> PaddedModel:
    """A padded copy of `model` that computes the same function (module docstring); `model` is untouched."""
    eps = float(model.config.rms_norm_eps) * plan.ratio_embd
    scales = _output_scales(model, plan)
    ternary = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    # fp32 (fp64 for identity_error's float64 twin): a bf16 latent cannot carry the exact scale, nor
    # bf16 the rescaled gains (the GGUF stores norms as F32 anyway).
    work = torch.float64 if model.dtype == torch.float64 else torch.float32
    padded = copy.deepcopy(model).to(work)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    worst, checked = 0.0, 0
    with torch.no_grad():
        for name, param in list(model.named_parameters(remove_duplicate=False)):
            if tied and name == "lm_head.weight":
                continue  # re-tied below
            module_name, _, kind = name.rpartition(".")
            c = scales.get(module_name, 1.0)
            axes = _axes(name, plan)
            if kind == "weight" and module_name in ternary:
                wq, s = ternarize_weight(param.detach())
                for dim, index in enumerate(axes):
                    if index is not None:
                        wq = _take(wq, dim, index)
                target = float(np.float32(float(s) * c))
                value = latent_for(wq, target, work)
                back, s_back = ternarize_weight(value)
                error = abs(float(s_back) - target) / target
                if not torch.equal(back, wq) or error > MAX_SCALE_ERROR:
                    raise ExportError(
                        f"Padding could not keep the ternary weights of {name} exact (scale off by {error:.3g}); "
                        "export with export.pad=false, and report this."
                    )
                worst = max(worst, error)
                checked += 1
            else:
                value = param.detach()
                for dim, index in enumerate(axes):
                    if index is not None:
                        value = _take(value, dim, index)
                value = value * _gain(name, plan)
                if kind != "lrc_V":  # c (1 off the projections in `scales`) scales what a matrix writes
                    value = value * c
            owner = padded.get_submodule(module_name)
            setattr(owner, kind, nn.Parameter(value.to(work).contiguous(), requires_grad=param.requires_grad))
        if tied:
            padded.lm_head.weight = padded.model.embed_tokens.weight
    _set_shapes(padded, plan, eps)
    padded_settings = settings.model_copy(update={"subln_eps": eps}) if settings.subln_eps is not None else settings
    return PaddedModel(padded.eval(), padded_settings, plan, checked, worst)


# -- the model an export writes ---------------------------------------------------------------------


@dataclass
class ExportModel:
    """What the GGUF writer and verification both work on: the checkpoint's model, and the model the
    file holds (the same object, or its padded copy)."""

    original: nn.Module
    model: nn.Module
    settings: BitNetSettings
    padded: PaddedModel | None = None


def needs_padding(model: nn.Module) -> bool:
    """Some ternary matrix's input width is not a multiple of the TQ block."""
    return any(m.in_features % BLOCK for m in model.modules() if isinstance(m, BitLinear))


def export_model(model: nn.Module, settings: BitNetSettings, arch: str, pad: bool) -> ExportModel:
    """The model to write as llama.cpp `arch`: padded (when `pad` and a ternary width needs it) or as is."""
    if not pad or not needs_padding(model):
        return ExportModel(model, model, settings)
    plan = plan_for_model(model, arch)
    padded = pad_model(model, settings, plan)
    return ExportModel(model, padded.model, padded.settings, padded)
