"""torch.compile in the training stages: each decoder block's forward, the way torchtitan compiles.

    CompiledBlocks(model, skip)     every block's forward compiled but those in `skip`; on() / off()
    should_compile(...)             compute.compile: true / false / auto (below)

Design choices:
- Per block, not the whole model: the blocks repeat, so one graph (one compile) serves all of them;
  the embedding, head, loss and HF's mask/output code stay eager, so nothing breaks the graph.
  Only `forward` is replaced (an instance attribute), not `_call_impl`: the block's own hooks (FSDP2's
  unshard/reshard) stay outside the graph, and the state dict, parameter names and checkpoints do
  not change. Blocks are compiled when training starts, after FSDP2 has sharded them.
- Compiled for the training step only. Validation and the final perplexity run eager, under
  no_grad and with other row counts, which would only add compiles.
- A block whose submodules get forward hooks for a step stays eager: attention KD's capture layer.
  Dynamo does not guard on hooks added after a compile (`skip_nnmodule_hook_guards`), so a compiled
  block would keep writing into the first step's capture.
- One graph serves every block of a model (parameters are graph inputs, not constants), but each
  variant is a recompile of the same code (`LlamaDecoderLayer.forward`): grad or no-grad (the
  teacher), BitLinear or LRC, float or int8 product, across the stages of one process. Dynamo's
  default limit of 8 per code object would then fall back to eager without a word, so it is raised
  to RECOMPILE_LIMIT.
- `auto` compiles when the stage's planned steps pay for the compile: on CUDA always (a compile is
  seconds next to a GPU run); on CPU when steps x tokens per step x parameters reaches
  CPU_COMPILE_MIN_WORK, where a cold compile measured on 2 cores pays back. Tiny test models never
  reach it. The rule reads only the config and the model, so a resumed run decides exactly as the
  run it continues.
- Inductor writes its generated code to `<cache>/inductor` (unless TORCHINDUCTOR_CACHE_DIR is set),
  beside the rest of the derived files, so a later run of the same shapes compiles in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from wrinklefree_core.paths import cache_dir
from wrinklefree_core.training.distributed import decoder_layers

CompileSetting = Literal["auto"] | bool
RECOMPILE_LIMIT = 64
# Planned work (optimizer steps x tokens per step x student parameters) from which a cold compile pays
# on CPU: SmolLM2-135M's blocks compile in ~40 s on 2 cores and then save 25-30% of each step, which
# repays the compile after ~7 CE+DLM steps of 1024 tokens and ~29 distillation steps of 512 tokens
# (docs/experiments.md, "torch.compile in the training stages").
CPU_COMPILE_MIN_WORK = 2e12


def should_compile(setting: CompileSetting, accelerator: str, steps: int, tokens_per_step: int, parameters: int) -> bool:
    """compute.compile resolved for a stage: on GPU always, on CPU when the planned work pays for a cold compile."""
    if setting != "auto":
        return bool(setting)
    return accelerator == "gpu" or steps * tokens_per_step * parameters >= CPU_COMPILE_MIN_WORK


def use_cache_folder() -> None:
    """Point inductor's on-disk cache at the WrinkleFree cache folder, unless the user chose another one.

    Inductor writes its default (/tmp/torchinductor_<user>) into the variable the first time it looks,
    so that value counts as not chosen.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


class CompiledBlocks:
    """The compiled forwards of a model's decoder blocks, switched on and off without recompiling.

    `skip`: block indices (negative counts from the end) that stay eager.
    """

    def __init__(self, model: nn.Module, skip: Iterable[int] = ()):
        use_cache_folder()
        layers = decoder_layers(model)
        eager = {i % len(layers) for i in skip}
        self.blocks = [layer for i, layer in enumerate(layers) if i not in eager]
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._compiled = [torch.compile(block.forward) for block in self.blocks]
        self.active = False

    def on(self) -> None:
        """Blocks run their compiled forward (compiles on the first call of each variant)."""
        for block, forward in zip(self.blocks, self._compiled):
            block.forward = forward
        self.active = True

    def off(self) -> None:
        """Blocks run their eager forward again (the compiled code is kept for the next `on`)."""
        for block in self.blocks:
            block.__dict__.pop("forward", None)
        self.active = False
