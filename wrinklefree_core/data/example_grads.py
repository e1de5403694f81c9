"""Per-example gradients of the input embedding and lm_head weights, from one batched forward/backward.

For a row with next-token loss L = (1/T') sum_t CE(logits_t, x_{t+1}) over its T' = seq_len - 1
scored positions (every next token, as training's CE and evaluate.py count them):
- lm_head W [V, d]:    dL/dW = sum_t e_t h_t^T,  e_t = (softmax(logits_t) - onehot(x_{t+1})) / T',
  h_t the lm_head input (the final hidden state);
- input embedding E [V, d]:  dL/dE = sum_t onehot(x_t) delta_t^T,  delta_t = dL/d(embedding output at t).

Design choices:
- Rows of a batch never interact (attention stays inside a row, norms and BitLinear's activation
  quantization are per token, the weight quantization does not depend on the inputs), so e_t is
  computed in closed form and one backward of the batch's logits with e as their gradient gives every
  row's own delta_t: no per-example backward, and no parameter's `.grad` is touched. Scoring only
  lm_head needs no backward through the network at all.
- The factors are expanded into dense per-example [V, d] gradients (einsum, scatter-add). DataInf
  needs the Gram matrix of the n rows: factored, one pair costs T^2 (V + d) (Gram of the e's times Gram
  of the h's); dense, T V d per row plus V d per pair. Dense is cheaper whenever n T > d, i.e. for any
  useful number of rows. Memory is n V d floats per layer: 32k per row for tiny_llama, 28M (113 MB)
  for SmolLM2-135M, so keep the scored rows to a few dozen on large vocabularies.
- Tied embeddings (lm_head.weight is the embedding weight) are one tensor and therefore one layer:
  its gradient is the sum of the chosen parts. Untied, each chosen matrix is its own layer.
- Everything after the forward is fp32, whatever precision the forward ran in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = ("embed", "lm_head")


def _modules(model: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head); influence scoring needs one")
    return emb, head, head.weight is emb.weight


def layer_names(model: nn.Module, params: Sequence[str]) -> list[str]:
    """Names of the scored layers, in the order `example_gradients` returns them."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown or not params:
        raise ValueError(f"influence params must be a non-empty subset of {list(PARAMS)}, got {list(params)}")
    _, _, tied = _modules(model)
    chosen = [p for p in PARAMS if p in params]
    return ["+".join(chosen)] if tied else chosen


def example_gradients(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    params: Sequence[str] = PARAMS,
) -> list[torch.Tensor]:
    """Per layer of `layer_names(model, params)`: fp32 [rows, V * d], each row's own mean-loss gradient."""
    names = layer_names(model, params)
    emb, head, tied = _modules(model)
    want_embed = "embed" in params
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    try:
        with torch.set_grad_enabled(want_embed):
            embeds = emb(input_ids)
            if want_embed:
                embeds = embeds.detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, position_ids=position_ids).logits
    finally:
        handle.remove()

    rows, length = input_ids.shape
    vocab = logits.shape[-1]
    # e_t in closed form; the last position predicts nothing.
    e = torch.zeros(rows, length, vocab, dtype=torch.float32, device=logits.device)
    e[:, :-1] = torch.softmax(logits[:, :-1].detach().float(), dim=-1)
    e[:, :-1].scatter_add_(-1, input_ids[:, 1:, None], torch.full((rows, length - 1, 1), -1.0, device=logits.device))
    e /= length - 1

    parts: dict[str, torch.Tensor] = {}
    if "lm_head" in params:
        hidden = captured[-1].detach().float()
        parts["lm_head"] = torch.einsum("btv,btd->bvd", e, hidden)
    if want_embed:
        (delta,) = torch.autograd.grad(logits, embeds, grad_outputs=e.to(logits.dtype))
        dim = delta.shape[-1]
        offsets = (input_ids + torch.arange(rows, device=input_ids.device)[:, None] * emb.weight.shape[0]).reshape(-1)
        grad = torch.zeros(rows * emb.weight.shape[0], dim, dtype=torch.float32, device=delta.device)
        parts["embed"] = grad.index_add_(0, offsets, delta.float().reshape(-1, dim)).view(rows, -1, dim)
    if tied:
        return [sum(parts.values()).reshape(rows, -1)]
    return [parts[name].reshape(rows, -1) for name in names]


def mean_gradients(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    params: Sequence[str] = PARAMS,
) -> list[torch.Tensor]:
    """Per layer, the gradient of the mean row loss over every row of `batches` ((ids, position_ids) pairs)."""
    sums: list[torch.Tensor] | None = None
    count = 0
    for ids, positions in batches:
        grads = example_gradients(model, ids, positions, params)
        sums = [g.sum(0) for g in grads] if sums is None else [s + g.sum(0) for s, g in zip(sums, grads)]
        count += ids.shape[0]
    if sums is None:
        raise ValueError("no probe rows")
    return [s / count for s in sums]


def row_losses(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss of each row (fp32 [rows]); the loss whose gradients `example_gradients` returns."""
    logits = model(input_ids=input_ids, position_ids=position_ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none")
    return nll.view(input_ids.shape[0], -1).mean(1)
