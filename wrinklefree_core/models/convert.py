"""HF causal LM -> BitNet: swap the attention/MLP nn.Linear modules for BitLinear, in place.

Design choices:
- In place and by name, the way torchtitan's float8 conversion swaps Linears: only the projections
  listed in `settings.target_modules` inside `model.model.layers[i].self_attn` / `.mlp` change.
  Embeddings, every norm (including Qwen3's q_norm/k_norm) and lm_head stay full precision, so a
  tied lm_head stays tied to the embedding without any extra work.
- `BitLinear.from_linear` reuses the original weight and bias Parameters, so state-dict names are
  unchanged and a converted model with quant_lambda=0 and no SubLN computes exactly what the HF
  model computes.
- Everything is validated before the first module is replaced, so a refused model is left untouched.
- SubLN placement follows the settings: 'bitdistill' puts it before o_proj and down_proj (what
  llama.cpp's `bitnet` graph runs), 'all' before every converted projection, 'none' nowhere.
- `settings.lrc` adds low-rank correction adapters to every BitLinear (models/lrc.py), so that a
  checkpoint's module tree is rebuilt with them before its tensors load. They start with U = 0 (the
  model computes what it did without them); SVD initialisation is the lrc stage's explicit step.
"""

from __future__ import annotations

from torch import nn

from wrinklefree_core.models.architectures import architecture_of, check_rope_for_export
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.lrc import rebuild_lrc_adapters
from wrinklefree_core.config.bitnet import BitNetSettings

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Projections that read a sum over many heads / FFN channels: BitDistill's SubLN placement.
BITDISTILL_SUBLN = frozenset({"o_proj", "down_proj"})


def _wants_subln(placement: str, proj: str) -> bool:
    if placement == "all":
        return True
    if placement == "bitdistill":
        return proj in BITDISTILL_SUBLN
    return False


def _plan(model: nn.Module, settings: BitNetSettings) -> list[tuple[nn.Module, str, bool]]:
    """Return (parent module, attribute, wants SubLN) for every projection to convert; raise before any change."""
    unknown = sorted(set(settings.target_modules) - set(ATTENTION_PROJECTIONS) - set(MLP_PROJECTIONS))
    if unknown:
        raise ValueError(
            f"target_modules has unknown projection names {unknown}; choose from "
            f"{list(ATTENTION_PROJECTIONS + MLP_PROJECTIONS)}."
        )
    n = len(model.model.layers)
    bad_skips = sorted(i for i in settings.skip_layers if not -n <= i < n)
    if bad_skips:
        raise ValueError(f"skip_layers {bad_skips} out of range: the model has {n} decoder layers (0..{n - 1}).")

    plan: list[tuple[nn.Module, str, bool]] = []
    for qualified, wants_subln in expected_bitlinear_layout(n, settings).items():
        parent_name, _, attr = qualified.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, attr, None)
        if isinstance(module, BitLinear):
            raise ValueError(f"{qualified} is already a BitLinear: the model was converted before.")
        if type(module) is not nn.Linear:
            raise ValueError(
                f"{qualified} is {type(module).__name__}, expected nn.Linear; quantized or adapter-wrapped "
                "HF models cannot be converted (load the plain full-precision weights)."
            )
        plan.append((parent, attr, wants_subln))
    return plan


def convert_to_bitnet(model: nn.Module, settings: BitNetSettings) -> nn.Module:
    """Convert an HF causal LM to BitNet in place and return it.

    Every nn.Linear named in `settings.target_modules` inside each decoder layer (except
    `settings.skip_layers`) becomes a BitLinear sharing the original weight/bias; SubLN is attached
    per `settings.subln` with eps `settings.subln_eps` or the model's rms_norm_eps; quant_lambda is set
    to `settings.quant_lambda`; `settings.lrc` adds U = 0 LRC adapters to every BitLinear. Raises
    UnsupportedArchitectureError / ValueError without modifying anything when the model cannot be
    converted.
    """
    architecture_of(model)
    check_rope_for_export(model, settings.subln)
    plan = _plan(model, settings)
    eps = settings.subln_eps if settings.subln_eps is not None else model.config.rms_norm_eps

    for parent, name, wants_subln in plan:
        linear = getattr(parent, name)
        sub_norm_eps = eps if wants_subln else None
        setattr(parent, name, BitLinear.from_linear(linear, sub_norm_eps=sub_norm_eps, quant_lambda=settings.quant_lambda))
    if settings.lrc is not None:
        rebuild_lrc_adapters(model, settings.lrc)
    return model


def expected_bitlinear_layout(num_layers: int, settings: BitNetSettings) -> dict[str, bool]:
    """Map each BitLinear name `settings` produces on a `num_layers` model to whether it has a SubLN.

    Lets a checkpoint writer check that the settings it records really describe the model.
    """
    skip = {i % num_layers for i in settings.skip_layers}
    layout: dict[str, bool] = {}
    for i in range(num_layers):
        if i in skip:
            continue
        for block_name, names in (("self_attn", ATTENTION_PROJECTIONS), ("mlp", MLP_PROJECTIONS)):
            for name in names:
                if name in settings.target_modules:
                    layout[f"model.layers.{i}.{block_name}.{name}"] = _wants_subln(settings.subln, name)
    return layout


def bitlinear_modules(model: nn.Module) -> list[tuple[str, BitLinear]]:
    """List (qualified name, module) for every BitLinear in `model`, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BitLinear)]
