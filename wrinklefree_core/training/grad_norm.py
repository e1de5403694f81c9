"""Global gradient norm and finiteness over gradients that may be FSDP shards.

ZClip, the NaN guard and gradient clipping must decide on the whole model's gradient, and every
rank must reach the same decision, or one rank raises (or clips) while the others wait in the next
collective. With DDP and on one device each rank holds every full gradient, so the local answer is
the global one. With FSDP (FSDP2 DTensors, `Shard` placements) each rank holds a row shard, so:

    norm^2 = all_reduce_sum( sum of squares of the local shards ) + sum of squares of replicated grads
    finite = all_reduce_min( local shards finite ) and replicated grads finite

Design choices:
- A gradient is classified by its own placements: a DTensor with a `Shard` placement contributes
  its local shard to the all-reduced sum (over its mesh's process group); a plain tensor or a
  `Replicate`d DTensor is the same on every rank and is added once, after the reduction. One
  all-reduce per call, whatever the number of parameters, and none at all without shards.
- Sums of squares are accumulated in float64 on the gradients' device: the norm is read on the host
  anyway (the clip decision needs it) and float64 keeps the sharded and unsharded sums equal to
  fp32 rounding of the parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _split(grads: Sequence[torch.Tensor]):
    """(local shards with their process group, replicated tensors) of `grads`."""
    from torch.distributed.tensor import DTensor, Shard

    sharded, replicated = [], []
    for g in grads:
        if isinstance(g, DTensor):
            local = g.to_local()
            if any(isinstance(p, Shard) for p in g.placements):
                sharded.append((local, g.device_mesh.get_group()))
            else:
                replicated.append(local)
        else:
            replicated.append(g)
    return sharded, replicated


def _square_sum(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=device)
    for t in tensors:
        if t.numel():
            total += torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32)).double() ** 2
    return total


def _reduce(value: torch.Tensor, groups: list, op) -> torch.Tensor:
    import torch.distributed as dist

    for group in {id(g): g for g in groups}.values():
        dist.all_reduce(value, op=op, group=group)
    return value


def global_grad_norm(grads: Sequence[torch.Tensor]) -> float:
    """L2 norm of all of `grads` as full tensors, as a Python float; a collective when any is sharded."""
    if not grads:
        return 0.0
    import torch.distributed as dist

    sharded, replicated = _split(grads)
    device = (sharded[0][0] if sharded else replicated[0]).device
    total = _square_sum(replicated, device)
    if sharded:
        if len({id(g) for _, g in sharded}) > 1:
            raise ValueError("gradients sharded over different process groups: cannot sum one norm over them")
        total = total + _reduce(_square_sum([t for t, _ in sharded], device), [sharded[0][1]], dist.ReduceOp.SUM)
    return math.sqrt(float(total))


def grads_all_finite(grads: Sequence[torch.Tensor]) -> bool:
    """True when every element of every gradient, on every rank's shard, is finite; a collective when sharded."""
    if not grads:
        return True
    import torch.distributed as dist

    sharded, replicated = _split(grads)
    device = (sharded[0][0] if sharded else replicated[0]).device
    ok = torch.ones((), dtype=torch.int32, device=device)
    for t in [*replicated, *(t for t, _ in sharded)]:
        if t.numel():
            ok &= torch.isfinite(t).all().to(torch.int32)
    if sharded:
        ok = _reduce(ok, [g for _, g in sharded], dist.ReduceOp.MIN)
    return bool(ok)


def local_values(t: torch.Tensor) -> torch.Tensor:
    """This rank's elements of `t` (its shard for a DTensor), for per-parameter diagnostics."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t
