"""The `compute` config group: where a stage runs (this process, or a SkyPilot GPU job)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from wrinklefree_core.config.base import Section


class ComputeConfig(Section):
    """Execution backend and resources."""

    backend: Literal["local", "skypilot"] = Field("local", description="local = in this process; skypilot = a cloud GPU job.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device for local runs; auto picks cuda when present.")
    precision: Literal["auto", "bf16-if-native", "32-true", "bf16-mixed"] = Field(
        "auto",
        description="Training precision; auto = bf16-mixed on GPU, fp32 on CPU; bf16-if-native = bf16-mixed on GPU "
        "and on CPUs with AVX512-BF16/AMX, fp32 elsewhere.",
    )
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="torch.compile each decoder block in training; auto = on GPU, and on CPU when the stage's planned steps "
        "pay for the compile (wrinklefree_core/training/compile.py).",
    )
    int_matmul: Literal["auto"] | bool = Field(
        "auto",
        description="BitLinear's fully quantized training forward as an int8 matmul; auto = on CPUs with VNNI or AMX, "
        "where it is faster (wrinklefree_core/quant/int_matmul.py).",
    )
    accelerators: str = Field("H100:1", description="SkyPilot accelerator spec per node, e.g. H100:8.")
    devices: Literal["auto"] | PositiveInt = Field(
        "auto", description="Training processes per node; auto = every GPU (1 on CPU, torchrun's count under torchrun). >1 on CPU uses gloo."
    )
    num_nodes: int = Field(1, gt=0, description="Nodes; >1 runs torchrun across SkyPilot nodes (FSDP unless strategy says ddp).")
    cloud: str | None = Field(None, description="SkyPilot cloud (null = any enabled cloud).")
    region: str | None = Field(None, description="SkyPilot region (null = any).")
    disk_size_gb: int = Field(256, gt=0, description="Boot disk size of each node.")
    use_spot: bool = Field(False, description="Use spot instances.")
    teardown: bool = Field(True, description="Tear the cluster down when the job ends.")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="Data-parallel strategy for >1 process; auto = ddp on 1 node, fsdp (FSDP2) on many.")
