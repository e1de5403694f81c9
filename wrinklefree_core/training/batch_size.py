"""`training.auto_batch_size=true`: the largest per-device micro-batch whose training step fits on the GPU.

Why not Lightning's BatchSizeFinder: it runs trial `fit` calls and restores from a temporary
checkpoint, which would also run this project's checkpoint, NaN-guard and throughput callbacks and
move the data mixture; with manual optimization and a per-step data stream its trial steps are not
what a real step costs. This is the same search, run directly on the real step:

- A trial is one micro-batch of random token ids through `BitNetTrainModule.micro_step_loss` with the
  recipe's forwards (teacher, DLM, hidden states, Q/K/V as the last step of the curriculum needs),
  in the run's precision, followed by backward. Memory for the optimizer state (two fp32 tensors per
  trainable parameter, AdamW's exp_avg/exp_avg_sq) is reserved first, so the result leaves room for it.
- Search: from `training.batch_size`, double while a trial fits (up to `max_batch_size`), or halve
  until one fits; the answer is the largest size that fitted. Out-of-memory is the only signal.
- The module's DLM generator is restored afterwards and trials draw from their own generator, so
  the search leaves no trace in the run's random streams.
- On CPU there is no memory limit to find (no out-of-memory signal, only swapping): the configured
  batch size is kept. The search itself (`search_batch_size`) and the trial step run on CPU too.
- One device only: with several processes each would search on its own and could settle on
  different sizes, so distributed.py refuses `auto_batch_size` with more than one process.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from wrinklefree_core.training.module import BitNetTrainModule


def _trial(module: BitNetTrainModule, rows: int, seq_len: int, vocab: int, device: torch.device, bf16: bool) -> bool:
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        ids = torch.randint(0, vocab, (rows, seq_len), device=device, generator=gen)
        batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(seq_len, device=device).expand(rows, -1)}
        step = module.max_steps - 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = module.micro_step_loss(batch, step, module.objectives.needs_at(step, module.max_steps))
        out.loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        module.student.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def search_batch_size(fits: Callable[[int], bool], start: int, max_batch_size: int) -> int:
    """Largest size `fits` accepts: double from `start` up to `max_batch_size`, or halve; 0 if none fits.

    At most log2(max_batch_size / start) + 1 trials going up and log2(start) going down.
    """
    size = min(start, max_batch_size)
    if fits(size):
        while size * 2 <= max_batch_size and fits(size * 2):
            size *= 2
        return size
    while size > 1:
        size //= 2
        if fits(size):
            return size
    return 0


def find_batch_size(
    module: BitNetTrainModule, seq_len: int, start: int, *, bf16: bool = True, max_batch_size: int = 1024
) -> int:
    """Largest micro-batch (rows) that fits, searched from `start` (module docstring); `start` on CPU."""
    if not torch.cuda.is_available():
        return start
    device = torch.device("cuda", torch.cuda.current_device())
    module.to(device)
    if module.teacher is not None:
        module.teacher.to(device)
    vocab = module.student.get_input_embeddings().num_embeddings
    generator_state = module.dlm_generator.get_state()
    trainable = sum(p.numel() for p in module.student.parameters() if p.requires_grad)
    reserve = torch.empty(2 * trainable, dtype=torch.float32, device=device)
    try:
        size = search_batch_size(lambda rows: _trial(module, rows, seq_len, vocab, device, bf16), start, max_batch_size)
        if size == 0:
            raise RuntimeError(f"not even one sequence of {seq_len} tokens fits in GPU memory; lower training.seq_len")
        return size
    finally:
        del reserve
        module.dlm_generator.set_state(generator_state)
        torch.cuda.empty_cache()
