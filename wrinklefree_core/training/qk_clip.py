"""QK-clip: keep every attention head's largest pre-softmax logit at or below tau.

From Kimi K2 ("Kimi K2: Open Agentic Intelligence", Moonshot AI, 2025), whose MuonClip is Muon plus
this clip: after each optimizer step, every head h whose largest logit S_h = max q_i.k_j / sqrt(d)
seen during the step exceeds tau has W_q^h and W_k^h rescaled by sqrt(tau / S_h) each, so the logit,
bilinear in q and k, drops to tau. Heads at or below tau are not touched.

Design choices:
- Measured on the real logits: forward hooks capture each layer's q_proj / k_proj outputs and the
  `position_embeddings` (cos, sin) and attention mask the attention module receives, then rebuild
  q and k exactly as HF does (per-head view, Qwen3's q_norm/k_norm, the model file's own
  apply_rotary_pos_emb) and take q.k^T * module.scaling over the positions softmax really sees
  (causal, and the 4-D mask when one is passed). Pre-RoPE q.k is not an upper bound of the rotated
  logit (RoPE rotates q and k by different angles), so a pre-RoPE proxy would under- or over-clip.
- Cost: one extra QK^T per layer, in fp32, one KV group at a time (memory B * group * T^2), under
  no_grad, and only in training mode: validation forwards neither count nor cost anything. Only a
  running per-head max (a few floats per layer) is kept between forwards, so gradient accumulation
  takes the max over all micro-batches of the step; `apply()` resets it. Under data parallelism each
  rank sees different data, so apply() first all-reduces the maxima (MAX): every replica then
  rescales the same heads by the same factors and the weights stay identical across ranks.
- Rescaling scales a head's whole q (or k) output: its weight rows, its bias entries (Qwen2) and its
  LRC `lrc_U` rows, so q and k scale exactly even with a bias or an adapter. A BitLinear's weight is
  the latent weight; rescaling it is what QK-clip means under QAT. With quant_lambda = 0 the new
  logit is exactly tau; at quant_lambda > 0 the per-tensor absmean scale is shared by all heads of
  the projection, so ternarization redistributes slightly and the logit only lands near tau; the
  next step measures the real logit again and clips again if needed.
- GQA: a kv head is shared by `group` q heads. Each q head h gets sqrt(eta_h) with
  eta_h = min(1, tau / S_h); the shared k head gets sqrt(eta_g) with eta_g = min over its group
  (i.e. tau / the group's max). The worst head lands on tau, other clipped heads of the group land
  below tau (tau * sqrt(S_h / S_max)), unclipped heads of the group shrink by sqrt(eta_g), and no
  logit ever grows. With one q head per kv head this is exactly Kimi's per-head rule.
- QK-norm (Qwen3): q and k are RMS-normalized per head after the projection, so rescaling W_q / W_k
  changes nothing. The logit scale lives in q_norm.weight / k_norm.weight, which all heads of the
  layer share, so the clip is per layer: both norm weights get sqrt(tau / max over the layer's heads).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class _AttentionSite:
    """One attention module and what recomputing its logits needs."""

    layer: int
    module: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    rotary: Callable
    signature: inspect.Signature
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    running_max: torch.Tensor | None = None


def _attention_sites(model: nn.Module) -> list[_AttentionSite]:
    sites: list[_AttentionSite] = []
    for module in model.modules():
        q_proj, k_proj = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        if not (isinstance(q_proj, nn.Linear) and isinstance(k_proj, nn.Linear) and hasattr(module, "head_dim")):
            continue
        rotary = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
        if rotary is None:
            raise ValueError(
                f"{type(module).__name__} has no apply_rotary_pos_emb in its model file; "
                "QK-clip supports HF Llama/Qwen2/Qwen3 attention"
            )
        head_dim = int(module.head_dim)
        sites.append(
            _AttentionSite(
                layer=len(sites),
                module=module,
                q_proj=q_proj,
                k_proj=k_proj,
                num_heads=q_proj.out_features // head_dim,
                num_kv_heads=k_proj.out_features // head_dim,
                head_dim=head_dim,
                scaling=float(getattr(module, "scaling", head_dim**-0.5)),
                rotary=rotary,
                signature=inspect.signature(module.forward),
                q_norm=getattr(module, "q_norm", None),
                k_norm=getattr(module, "k_norm", None),
            )
        )
    if not sites:
        raise ValueError("no attention module with q_proj/k_proj/head_dim found: QK-clip supports HF Llama/Qwen2/Qwen3 models")
    return sites


def _allowed_positions(mask: Any, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bool (B|1, 1, T, S) of the positions softmax attends to: causal, and the 4-D mask if given."""
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)[None, None]
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        mask = mask[..., :q_len, :k_len]
        # bool masks mark attended positions; additive float masks put a huge negative on blocked ones.
        attended = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        allowed = allowed & attended
    return allowed


def head_max_logits(
    site: _AttentionSite, q: torch.Tensor, k: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], mask: Any
) -> torch.Tensor:
    """Per q head, the largest pre-softmax logit of one forward, from the raw q_proj / k_proj outputs."""
    batch, seq = q.shape[:2]
    q = q.view(batch, seq, site.num_heads, site.head_dim)
    k = k.view(batch, seq, site.num_kv_heads, site.head_dim)
    if site.q_norm is not None and site.k_norm is not None:
        q, k = site.q_norm(q), site.k_norm(k)
    cos, sin = position_embeddings
    q, k = site.rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    q, k = q.float(), k.float()
    allowed = _allowed_positions(mask, q.shape[2], k.shape[2], q.device)
    group = site.num_heads // site.num_kv_heads
    maxima = []
    for g in range(site.num_kv_heads):
        # q heads g*group .. (g+1)*group-1 read kv head g (HF's repeat_kv layout).
        logits = q[:, g * group : (g + 1) * group] @ k[:, g : g + 1].transpose(-1, -2) * site.scaling
        logits = logits.masked_fill(~allowed, float("-inf"))
        maxima.append(logits.amax(dim=(0, 2, 3)))
    return torch.cat(maxima)


def _scale_output_rows(proj: nn.Linear, row_factor: torch.Tensor) -> None:
    """Multiply output row r of `proj` (weight, bias, LRC U) by row_factor[r], so its output row scales exactly."""
    f = row_factor.to(device=proj.weight.device, dtype=proj.weight.dtype)
    proj.weight.mul_(f[:, None])
    if proj.bias is not None:
        proj.bias.mul_(f)
    lrc_u = getattr(proj, "lrc_U", None)
    if isinstance(lrc_u, torch.Tensor):
        lrc_u.mul_(f[:, None])


class QKClip:
    """Record each head's max attention logit during training forwards and clip heads above tau.

    `QKClip(model, tau)` hooks every attention layer of `model`; call `apply()` after each optimizer
    step (MuonWithAdamW does this for `muonclip`), `max_logits()` to read the running maxima, and
    `remove()` to detach the hooks.
    """

    def __init__(self, model: nn.Module, tau: float):
        if not tau > 0:
            raise ValueError(f"QK-clip tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.sites = _attention_sites(model)
        self.last_heads_clipped = 0
        self._handles: list[RemovableHandle] = []
        for site in self.sites:
            self._handles += [
                site.q_proj.register_forward_hook(self._capture(site, "q")),
                site.k_proj.register_forward_hook(self._capture(site, "k")),
                site.module.register_forward_hook(self._measure(site), with_kwargs=True),
            ]

    @staticmethod
    def _capture(site: _AttentionSite, key: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if site.module.training:
                site.captured[key] = output.detach()

        return hook

    @staticmethod
    def _measure(site: _AttentionSite) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            q, k = site.captured.pop("q", None), site.captured.pop("k", None)
            if q is None or k is None or not module.training:
                return
            bound = site.signature.bind_partial(*args, **kwargs).arguments
            position_embeddings = bound.get("position_embeddings")
            if position_embeddings is None:
                raise RuntimeError(f"QK-clip: attention layer {site.layer} was called without position_embeddings")
            with torch.no_grad():
                current = head_max_logits(site, q, k, position_embeddings, bound.get("attention_mask"))
                site.running_max = current if site.running_max is None else torch.maximum(site.running_max, current)

        return hook

    def max_logits(self, sync: bool = False) -> torch.Tensor:
        """(layers, heads) fp32 CPU tensor of the max logit per head since the last apply(); -inf where unseen.

        With `sync` (what apply() uses) the maxima are all-reduced (MAX) over the default process
        group when torch.distributed is initialized, so every data-parallel rank clips identically.
        """
        device = self.sites[0].q_proj.weight.device
        rows = [
            s.running_max.float() if s.running_max is not None else torch.full((s.num_heads,), float("-inf"), device=device)
            for s in self.sites
        ]
        maxima = torch.stack([r.to(device) for r in rows])
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        return maxima.cpu()

    def reset(self) -> None:
        """Forget the recorded maxima."""
        for site in self.sites:
            site.running_max = None

    @torch.no_grad()
    def apply(self) -> dict[str, float]:
        """Rescale the heads whose max logit exceeded tau, reset the maxima, and return statistics.

        Returns {"heads_clipped": number of q heads above tau, "max_logit": largest logit seen since
        the last apply (nan if no training forward ran)}.
        """
        maxima = self.max_logits(sync=True)
        clipped = int((maxima > self.tau).sum())
        for site, s_max in zip(self.sites, maxima):
            if bool((s_max > self.tau).any()):
                self._clip_site(site, s_max)
        self.reset()
        self.last_heads_clipped = clipped
        top = float(maxima.max())
        return {"heads_clipped": float(clipped), "max_logit": top if math.isfinite(top) else float("nan")}

    def _clip_site(self, site: _AttentionSite, s_max: torch.Tensor) -> None:
        # eta = min(1, tau / S); heads never seen (-inf) or below tau keep eta = 1.
        eta = torch.where(s_max > self.tau, self.tau / s_max, torch.ones_like(s_max)).double()
        if site.q_norm is not None and site.k_norm is not None:
            factor = float(eta.min().sqrt())
            site.q_norm.weight.mul_(factor)
            site.k_norm.weight.mul_(factor)
            return
        group = site.num_heads // site.num_kv_heads
        eta_kv = eta.view(site.num_kv_heads, group).amin(dim=1)
        _scale_output_rows(site.q_proj, eta.sqrt().repeat_interleave(site.head_dim))
        _scale_output_rows(site.k_proj, eta_kv.sqrt().repeat_interleave(site.head_dim))

    def remove(self) -> None:
        """Detach every hook; the model behaves as if QKClip had never been attached."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for site in self.sites:
            site.captured.clear()
