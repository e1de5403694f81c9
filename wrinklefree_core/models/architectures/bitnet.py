"""llama.cpp's `bitnet` graph (src/models/bitnet.cpp): where every SubLN (bitdistill) conversion exports.

It applies attn_sub_norm before o_proj and ffn_sub_norm before down_proj in every layer, loads no
bias, has no QK-norm, reuses token_embd as the output head, shapes wq/wo as [n_embd, n_embd], uses
NEOX RoPE and passes no per-frequency RoPE factors. It is a graph, not an HF architecture: any
architecture whose model fits these rules exports to it.
"""

from wrinklefree_core.models.architectures.spec import GraphSpec, register

GRAPH = register(GraphSpec(name="bitnet", width_is_heads=True, qk_norm=False, tied_head=True, sub_norms=True))
