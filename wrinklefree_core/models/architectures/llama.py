"""Llama (SmolLM2 among them): optional biases behind config flags; llama.cpp's `llama` graph.

The `llama` graph loads every projection's bias, rotates interleaved pairs (HF's q/k rows are
permuted), lets head_dim differ from hidden_size / n_head, and applies llama3's per-frequency RoPE
factors. Transformers' stock `bitnet` model is this graph with SubLN, so an HF export is possible.
Llama's attention_bias puts a bias on q, k, v *and* o.
"""

from wrinklefree_core.models.architectures.spec import PROJECTIONS, ArchitectureSpec, GraphSpec, register

ARCHITECTURE = register(
    ArchitectureSpec(
        hf_class="LlamaForCausalLM", model_type="llama", gguf_arch="llama", bias_from_config=("attention_bias", "mlp_bias"), hf_bitnet=True
    )
)
GRAPH = register(GraphSpec(name="llama", biases=PROJECTIONS, rows_permuted=True, freq_factors=True, qk_norm=False))
