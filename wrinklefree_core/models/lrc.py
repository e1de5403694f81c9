"""Low-rank correction (LRC) adapters on BitLinear: y = BitLinear(x) + U V^T h.

After "Low-Rank Correction for Quantized LLMs" (Scetbon & Hensman, 2024): a ternary layer keeps its
quantized weight and int8 activations, and a small full-precision low-rank term corrects the error
the quantization makes relative to the full-precision layer.

Design choices:
- The correction reads the *unquantized* input h, after SubLN when the layer has one. The LRC paper
  corrects W x - Q(W) Q(x) for the layer's own input, so the correction must see the same input the
  quantized matmul sees before activation quantization; for o_proj/down_proj that input is the
  SubLN output. This is also exactly what llama.cpp's LoRA path computes on the `bitnet` graph
  (the LoRA matmul reads the f32 tensor that enters the ternary matmul, after attn/ffn_sub_norm),
  so the adapters export as a LoRA adapter GGUF with lora_a = V^T and lora_b = U.
- Shapes: U (`lrc_U`) is (out, rank), V (`lrc_V`) is (in, rank), so U V^T is (out, in) like the
  weight. rank = ceil(rank_fraction * min(in, out)), at least 1.
- Init "zeros": U = 0 and V uniform in +-1/sqrt(in) (LoRA's choice): the model's output is unchanged
  at step 0 and dL/dU = dy (V^T h)^T is non-zero, so training starts at once. V is drawn from a
  generator seeded by the caller (fixed seed by default), never from torch's global RNG, so adding
  adapters (also done when a checkpoint is rebuilt) does not change the RNG stream of training.
- Init "svd": the top-r SVD of the weight residual E = W - s*W_q (fully quantized weight, whatever
  quant_lambda is, because the correction targets the deployed ternary model), split evenly as
  U = U_r sqrt(S_r), V = V_r sqrt(S_r) so both factors get gradients of similar scale. This is the
  data-free version of LRC; the activation-quantization error is then left to calibration. W is
  the full-precision model's weight when one is given (`reference`: the lrc stage passes its
  teacher), else the layer's own latent. The two differ after training, and entirely after
  `bitnet.init=gptq`, whose latent is pushed away from the teacher so that its *ternarization*
  tracks the teacher: there, latent - s*W_q points away from the teacher and the first LRC steps
  raised held-out perplexity 3000x on SmolLM2-135M.
- The correction is not scaled by quant_lambda: adapters are added after quantization-aware
  training, when lambda is 1.
- BitLinearLRC *is* a BitLinear, so conversion layout checks, set_quant_lambda and the exporter's
  BitLinear walk still see it; `weight`, `bias` and `sub_norm.weight` keep their names and only
  `lrc_U`/`lrc_V` are added to the state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.config.bitnet import LRCSettings
from wrinklefree_core.quant.reference import weight_quant_ref

LRC_PARAM_NAMES = ("lrc_U", "lrc_V")
LRC_INITS = ("zeros", "svd")
DEFAULT_SEED = 0


def lrc_rank(in_features: int, out_features: int, rank_fraction: float) -> int:
    """ceil(rank_fraction * min(in, out)), at least 1.

    The product is nudged down by 1e-9 first so that e.g. 0.3 * 10 (= 3.0000000000000004 in floats)
    gives 3, not 4; the same formula runs at save and load, so the result only has to be stable.
    """
    if not 0.0 < rank_fraction <= 1.0:
        raise ValueError(f"rank_fraction must be in (0, 1], got {rank_fraction}")
    return max(1, math.ceil(rank_fraction * min(in_features, out_features) - 1e-9))


class BitLinearLRC(BitLinear):
    """BitLinear plus a full-precision low-rank correction U V^T applied to the unquantized input."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        rank: int,
        sub_norm_eps: float | None = None,
        quant_lambda: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, sub_norm_eps=sub_norm_eps, quant_lambda=quant_lambda, device=device, dtype=dtype)
        if rank < 1:
            raise ValueError(f"LRC rank must be >= 1, got {rank}")
        self.rank = rank
        self.lrc_U = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lrc_V = nn.Parameter(torch.zeros(in_features, rank, device=device, dtype=dtype))
        if self.lrc_V.device.type != "meta":
            self.reset_lrc("zeros")
        # What add_lrc_adapters was asked for; lrc_settings_of() reads these back for the checkpoint.
        self.lrc_rank_fraction: float | None = None
        self.lrc_init: str | None = None

    @classmethod
    def from_bitlinear(
        cls,
        layer: BitLinear,
        rank: int,
        init: str = "zeros",
        generator: torch.Generator | None = None,
        target: torch.Tensor | None = None,
    ) -> "BitLinearLRC":
        """Wrap `layer`: share its weight, bias, SubLN and quant_lambda, and add initialised adapters."""
        if isinstance(layer, BitLinearLRC):
            raise ValueError("the layer already has LRC adapters")
        new = cls(layer.in_features, layer.out_features, bias=False, rank=rank, device="meta")
        new.weight = layer.weight
        new.bias = layer.bias
        new.sub_norm = layer.sub_norm
        new.quant_lambda = layer.quant_lambda
        device, dtype = layer.weight.device, layer.weight.dtype
        new.lrc_U = nn.Parameter(torch.zeros(layer.out_features, rank, device=device, dtype=dtype))
        new.lrc_V = nn.Parameter(torch.zeros(layer.in_features, rank, device=device, dtype=dtype))
        new.reset_lrc(init, generator, target)
        return new

    @torch.no_grad()
    def reset_lrc(self, init: str = "zeros", generator: torch.Generator | None = None, target: torch.Tensor | None = None) -> None:
        """(Re)initialise U and V in place: "zeros" (U = 0, V random) or "svd" (top-r SVD of target - s*W_q).

        `target` is the full-precision weight the correction aims at (the teacher's); default: the
        layer's own latent weight.
        """
        if init == "zeros":
            gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
            bound = 1.0 / math.sqrt(self.in_features)
            v = (torch.rand(self.lrc_V.shape, generator=gen, device=gen.device) * 2 - 1) * bound
            self.lrc_U.zero_()
            self.lrc_V.copy_(v)
        elif init == "svd":
            w = self.weight.detach().float()
            goal = w if target is None else target.detach().to(w.device, torch.float32)
            if goal.shape != w.shape:
                raise ValueError(f"LRC svd target has shape {tuple(goal.shape)}, the layer's weight {tuple(w.shape)}")
            residual = goal - weight_quant_ref(w)
            u, s, vh = torch.linalg.svd(residual, full_matrices=False)
            root = s[: self.rank].sqrt()
            self.lrc_U.copy_(u[:, : self.rank] * root)
            self.lrc_V.copy_(vh[: self.rank].T * root)
        else:
            raise ValueError(f"unknown LRC init {init!r}; choose one of {', '.join(LRC_INITS)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        # The correction reads the post-SubLN, pre-quantization input (a test pins equality with
        # BitLinear at U = 0).
        return self.quantized_product(x) + F.linear(F.linear(x, self.lrc_V.T), self.lrc_U)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lrc_rank={self.rank}"


def add_lrc_adapters(
    model: nn.Module,
    rank_fraction: float,
    init: str = "zeros",
    *,
    generator: torch.Generator | None = None,
    reference: nn.Module | None = None,
) -> nn.Module:
    """Replace every BitLinear in `model` by a BitLinearLRC, in place, and return the model.

    rank = ceil(rank_fraction * min(in, out)) per layer; `init` is "zeros" or "svd" (module
    docstring). One generator (seeded with DEFAULT_SEED unless given) draws every layer's V in module
    order, so the result is reproducible. With `reference` (the full-precision model, same module
    names), "svd" factors the residual to its weights. Raises ValueError when the model has no BitLinear or
    already has adapters.
    """
    if init not in LRC_INITS:
        raise ValueError(f"unknown LRC init {init!r}; choose one of {', '.join(LRC_INITS)}")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, BitLinear)]
    if not targets:
        raise ValueError("the model has no BitLinear layers: convert it to BitNet before adding LRC adapters")
    if any(isinstance(m, BitLinearLRC) for _, m in targets):
        raise ValueError("the model already has LRC adapters")
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    for name, layer in targets:
        rank = lrc_rank(layer.in_features, layer.out_features, rank_fraction)
        new = BitLinearLRC.from_bitlinear(layer, rank, init, gen, _reference_weight(reference, name, layer))
        new.lrc_rank_fraction, new.lrc_init = rank_fraction, init
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _reference_weight(reference: nn.Module | None, name: str, layer: BitLinear) -> torch.Tensor | None:
    """The weight of `reference`'s module at `name` when it has one of the layer's shape, else None."""
    if reference is None:
        return None
    try:
        module = reference.get_submodule(name)
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.shape == layer.weight.shape else None


def rebuild_lrc_adapters(model: nn.Module, settings: LRCSettings) -> nn.Module:
    """Add adapters with the structure `settings` describes, for weights that are loaded afterwards.

    Always uses the cheap "zeros" init (an SVD of not-yet-loaded weights would be wasted work), but
    records `settings.init`, so that lrc_settings_of() reports what the checkpoint says.
    """
    add_lrc_adapters(model, settings.rank_fraction, "zeros")
    for _, m in lrc_modules(model):
        m.lrc_init = settings.init
    return model


def lrc_modules(model: nn.Module) -> list[tuple[str, BitLinearLRC]]:
    """(qualified name, module) for every BitLinearLRC, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BitLinearLRC)]


def lrc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every adapter parameter (U and V of each BitLinearLRC), in module order."""
    return [p for _, m in lrc_modules(model) for p in (m.lrc_U, m.lrc_V)]


def freeze_all_but_lrc(model: nn.Module) -> list[nn.Parameter]:
    """Set requires_grad=False on every parameter except the adapters; return the adapters.

    Raises ValueError when the model has no adapters (nothing would train).
    """
    trainable = lrc_parameters(model)
    if not trainable:
        raise ValueError("the model has no LRC adapters: call add_lrc_adapters first")
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return trainable


def lrc_settings_of(model: nn.Module) -> LRCSettings | None:
    """The LRCSettings that rebuild `model`'s adapters (None without adapters), for the checkpoint's config.

    Raises ValueError when the adapters were not all added by one add_lrc_adapters call, since a
    single rank_fraction could not rebuild them.
    """
    modules = [m for _, m in lrc_modules(model)]
    if not modules:
        return None
    recorded = {(m.lrc_rank_fraction, m.lrc_init) for m in modules}
    if len(recorded) != 1 or None in next(iter(recorded)):
        raise ValueError(f"LRC adapters were not added by one add_lrc_adapters call (found {sorted(map(str, recorded))})")
    rank_fraction, init = recorded.pop()
    return LRCSettings(rank_fraction=rank_fraction, init=init)
