"""Qwen3: Qwen2's biases dropped (optional via attention_bias), per-head QK-norm added; llama.cpp's `qwen3` graph.

The `qwen3` graph loads q/k/v biases and attn_q_norm/attn_k_norm, uses NEOX RoPE, and takes
head_dim from the GGUF's key_length (it may differ from hidden_size / n_head).
"""

from wrinklefree_core.models.architectures.spec import ArchitectureSpec, GraphSpec, register

ARCHITECTURE = register(
    ArchitectureSpec(hf_class="Qwen3ForCausalLM", model_type="qwen3", gguf_arch="qwen3", qk_norm=True, bias_from_config=("attention_bias",))
)
GRAPH = register(GraphSpec(name="qwen3", biases=frozenset({"q_proj", "k_proj", "v_proj"}), qk_norm=True))
