"""Qwen2 / Qwen2.5: q/k/v biases always (no config flag), never an o_proj or MLP bias; llama.cpp's `qwen2` graph.

The `qwen2` graph loads q/k/v biases, uses NEOX RoPE (HF's row order as is), and shapes wq/wo as
[n_embd, n_embd], so n_head * head_dim must be hidden_size.
"""

from wrinklefree_core.models.architectures.spec import ArchitectureSpec, GraphSpec, register

QKV = frozenset({"q_proj", "k_proj", "v_proj"})

ARCHITECTURE = register(ArchitectureSpec(hf_class="Qwen2ForCausalLM", model_type="qwen2", gguf_arch="qwen2", qkv_bias=True))
GRAPH = register(GraphSpec(name="qwen2", biases=QKV, width_is_heads=True, qk_norm=False))
