"""Zero padding to TQ-block widths (export/padding.py): the plan, and that the padded model is the same function.

The llama.cpp side (padded files verified layer by layer, and against the unpadded model) is in
test_gguf_llamacpp.py / test_gguf_lora.py; here the padding itself is checked in PyTorch, in float64
with float activations, where the padded and the original model may differ by summation noise only.
The norms' epsilon is raised to 0.05 first, so that a wrong epsilon rescale (invisible at 1e-5 next to
unit activations) moves the logits by far more than the bound.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.export.conftest import build_checkpoint
from tests.export.test_gguf_llamacpp import QWEN2_05B
from tests.export.test_gguf_lora import make_lrc_checkpoint
from wrinklefree_core.export import padding
from wrinklefree_core.export.gguf_layout import target_arch
from wrinklefree_core.export.padding import BLOCK, pad_model, plan_for_model, plan_padding
from wrinklefree_core.export.verify_padding import identity_error
from wrinklefree_core.models.bitlinear import BitLinear
from wrinklefree_core.models.checkpoint import load_bitnet_checkpoint
from wrinklefree_core.models.subln import SubLN
from wrinklefree_core.quant.reference import ternarize_weight

# The export gates at 1e-6 with the model's own eps. At eps 0.05 the fp32 spacing of the ternary scales
# that carry c (a few ulps where no latent hits the absmean exactly) passes through the norms almost
# undivided: 1.6e-6 measured for Qwen2-0.5B's shapes with LRC.
BOUND = 5e-6
BIG_EPS = 0.05


def kv_of_query(n_head: int, n_head_kv: int) -> list[int]:
    """llama.cpp's GQA: query head h reads KV head h // (n_head / n_head_kv)."""
    return [h // (n_head // n_head_kv) for h in range(n_head)]


@pytest.mark.parametrize(
    "shape,same_width,want",
    [
        # SmolLM2-135M: one zero KV group (3 zero query heads) reaches 768 = 3 * 256.
        ((576, 1536, 9, 3, 64, 49152), True, (768, 1536, 12, 4, 1)),
        # Qwen2-0.5B: groups of 7 would need 28 heads (1792 wide); 7 copies of each KV head reach 1024.
        ((896, 4864, 14, 2, 64, 151936), True, (1024, 4864, 16, 16, 7)),
        # Llama-3.2-1B-like widths are already multiples of 256.
        ((2048, 8192, 32, 8, 64, 128256), True, (2048, 8192, 32, 8, 1)),
        # A llama graph lets n_head * head_dim differ from n_embd.
        ((576, 1000, 9, 3, 64, 49152), False, (768, 1024, 12, 4, 1)),
    ],
)
def test_plan_reaches_block_widths_and_keeps_every_query_on_its_kv_head(shape, same_width, want):
    n_embd, n_ff, n_head, n_kv, hd, vocab = shape
    plan = plan_padding(n_embd, n_ff, n_head, n_kv, hd, same_width=same_width, vocab=vocab, tied=True)
    assert (plan.n_embd_to, plan.n_ff_to, plan.n_head_to, plan.n_head_kv_to, plan.kv_copies) == want
    assert plan.active is (want[:4] != (n_embd, n_ff, n_head, n_kv))
    assert plan.n_embd_to % BLOCK == plan.n_ff_to % BLOCK == (plan.n_head_to * hd) % BLOCK == 0
    if same_width:
        assert plan.n_head_to * hd == plan.n_embd_to
    # Each real query head (they keep their places) reads a copy of its own KV head; padded ones a zero head.
    slots = padding._kv_rows(plan).view(plan.n_head_kv_to, hd)[:, 0]
    padded_kv = kv_of_query(plan.n_head_to, plan.n_head_kv_to)
    for h in range(plan.n_head_to):
        source = int(slots[padded_kv[h]])
        if h < n_head:
            assert source == kv_of_query(n_head, n_kv)[h] * hd
        else:
            assert source == -1


def _with_big_eps(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (in place) with every norm's epsilon raised to BIG_EPS."""
    model.config.rms_norm_eps = BIG_EPS
    for m in model.modules():
        if isinstance(m, SubLN):
            m.eps = BIG_EPS
        elif hasattr(m, "variance_epsilon"):
            m.variance_epsilon = BIG_EPS
    return model


MODELS = {
    "bitnet": ("tiny_llama", "bitdistill", (), {}),
    "llama": ("tiny_llama", "none", (), {}),
    "qwen2-biases": ("tiny_qwen2", "none", (), {}),
    "qwen3-qk-norm": ("tiny_qwen3", "none", (), {}),
    "bitnet-ffn-unpadded": ("tiny_llama", "bitdistill", ("model.random.intermediate_size=256",), {}),
    # up_proj left full precision: c (for the FFN SubLN) lands on a plain nn.Linear weight.
    "bitnet-up-full-precision": (
        "tiny_llama", "bitdistill", ("model.random.intermediate_size=256",),
        {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]},
    ),
    "bitnet-qwen2-0.5b-shapes": ("tiny_llama", "bitdistill", QWEN2_05B, {}),
}


@pytest.fixture(scope="module")
def loaded(checkpoint_factory, tmp_path_factory):
    cache = {}

    def get(case: str, lrc: bool = False):
        if (case, lrc) not in cache:
            model_name, subln, overrides, kw = MODELS[case]
            ckpt = checkpoint_factory(model_name, subln, overrides, **kw)
            if lrc:
                ckpt = make_lrc_checkpoint(tmp_path_factory.mktemp("lrc") / case, ckpt, 0.25, "random")
            cache[(case, lrc)] = load_bitnet_checkpoint(ckpt)
        return cache[(case, lrc)]

    return get


@pytest.mark.parametrize("lrc", [False, True], ids=["plain", "lrc"])
@pytest.mark.parametrize("case", list(MODELS))
def test_padded_model_is_the_same_function(case, lrc, loaded, monkeypatch):
    model, settings = loaded(case, lrc)
    model = _with_big_eps(copy.deepcopy(model))
    plan = plan_for_model(model, target_arch(model, settings))
    assert plan.active
    ids = torch.arange(3, 40) % model.config.vocab_size
    err = identity_error(model, settings, plan, ids)
    assert err <= BOUND, f"{case}: padded logits differ by {err:.3g}"

    # The check can fail: each rule left out moves the logits far beyond the bound.
    broken = {"eps not rescaled": None, "gains not rescaled": ("_gain", lambda name, plan: 1.0)}
    # Qwen2-0.5B's FFN SubLN input has a mean square far above even eps 0.05, so c moves it by < 1e-6.
    if padding._output_scales(model, plan) and "0.5b" not in case:
        broken["no c on the matrices that feed a norm of another ratio"] = ("_output_scales", lambda m, p: {})
    for why, patch in broken.items():
        with monkeypatch.context() as mp:
            if patch is None:
                real = padding.pad_model
                mp.setattr(padding, "pad_model", lambda m, s, p: (lambda out: (_with_big_eps(out.model), out)[1])(real(m, s, p)))
            else:
                mp.setattr(padding, *patch)
            assert identity_error(model, settings, plan, ids) > 100 * BOUND, why


@pytest.mark.parametrize("case", ["bitnet", "qwen3-qk-norm", "bitnet-qwen2-0.5b-shapes"])
def test_padded_ternary_weights_are_the_original_ones(case, loaded):
    model, settings = loaded(case, True)
    plan = plan_for_model(model, target_arch(model, settings))
    padded = pad_model(model, settings, plan)
    assert padded.ternary_checked == sum(isinstance(m, BitLinear) for m in model.modules())
    assert padded.scale_max_rel_error < 2.5e-7  # a few fp32 ulps of the absmean, where no latent hits it exactly
    wide = dict(padded.model.named_modules())
    carries_c = padding._output_scales(model, plan)
    for name, m in model.named_modules():
        if not isinstance(m, BitLinear):
            continue
        wq, s = ternarize_weight(m.weight)
        wq_p, s_p = ternarize_weight(wide[name].weight)
        rows, cols = wq.shape
        if name.endswith(("k_proj", "v_proj")) and plan.kv_copies > 1:
            hd = plan.head_dim
            first_copy = wq_p[: rows * plan.kv_copies].view(-1, plan.kv_copies, hd, wq_p.shape[1])[:, 0]
            assert torch.equal(first_copy.reshape(rows, -1)[:, :cols], wq)
        else:
            assert torch.equal(wq_p[:rows, :cols], wq), name
        assert int(torch.count_nonzero(wq_p)) == int(torch.count_nonzero(wq)) * (
            plan.kv_copies if name.endswith(("k_proj", "v_proj")) else 1
        )
        assert float(s_p / s) == pytest.approx(carries_c.get(name, 1.0), rel=3e-7), name
    assert carries_c, "these models rescale some SubLN / q-k norm input, so c must be exercised"


def test_a_bf16_checkpoint_pads_exactly(loaded):
    """Padding works in fp32 whatever the checkpoint's dtype: a bf16 latent could not carry the exact scale."""
    model, settings = loaded("bitnet", True)
    half = copy.deepcopy(model).to(torch.bfloat16)
    padded = pad_model(half, settings, plan_for_model(half, target_arch(half, settings)))
    assert padded.scale_max_rel_error < 2.5e-7
    assert all(p.dtype == torch.float32 for p in padded.model.parameters())
    wide = dict(padded.model.named_modules())
    for name, m in half.named_modules():
        if isinstance(m, BitLinear):
            wq, _ = ternarize_weight(m.weight)
            assert torch.equal(ternarize_weight(wide[name].weight)[0][: wq.shape[0], : wq.shape[1]], wq), name


def test_export_without_padding_keeps_the_fallback_type(checkpoint_factory, tmp_path):
    from wrinklefree_core.config.export import ExportConfig
    from wrinklefree_core.export import write_gguf

    ckpt = checkpoint_factory("tiny_llama", "bitdistill")
    padded = write_gguf(ckpt, tmp_path / "padded.gguf", ExportConfig())
    plain = write_gguf(ckpt, tmp_path / "plain.gguf", ExportConfig(pad=False))
    assert padded.padding is not None and plain.padding is None
    proj = [t for t in padded.tensors if t.gguf_name.startswith("blk.") and len(t.shape) == 2]
    assert proj and all(t.ggml_type == "TQ2_0" for t in proj)
    assert {t.ggml_type for t in plain.tensors if t.gguf_name.startswith("blk.") and len(t.shape) == 2} == {"Q4_0"}
