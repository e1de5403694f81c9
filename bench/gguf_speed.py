"""llama.cpp decode speed and file size: TQ2_0 (and TQ1_0) export vs an F16 export of the same model.

Target: on the same 256-aligned model of >= ~100M parameters, the TQ2_0 file decodes >= 2.5x as many
tokens/s as the F16 file in llama.cpp on CPU, and is <= 0.2x its size.

Run:
    .venv/bin/python bench/gguf_speed.py                 # defaults, ~105M params, a few minutes on 2 cores
    .venv/bin/python bench/gguf_speed.py --quick         # small shapes, fewer rounds: a smoke check
    .venv/bin/python bench/gguf_speed.py --rounds 7 --tokens 256 --threads 1

Design choices:
- The model is a random llama (default hidden 768, 12 layers, ffn 2560, 12 heads, an 8192-token BPE
  trained on the package corpus), built through the project's own `random` source, converted with
  SubLN 'bitdistill' (GGUF arch `bitnet`) and saved as a checkpoint under the WrinkleFree cache dir,
  so repeated runs skip the build. Every ternary input width is a multiple of 256, so every ternary
  matrix is TQ2_0/TQ1_0 (no Q4_0/Q8_0 fallback). The BPE vocabulary is small, so ~94% of the
  parameters sit in the ternary matrices; the split is printed. As in the export tests, the tied
  embedding is scaled up (EMBED_SCALE) so that random-init logits have a spread of tens of units and
  the greedy-token check below is not decided by near-ties; that does not change any shape or cost.
- The GGUF files are written on every run with the current exporter (`write_gguf`, verify=false: the
  exporter's numerics are covered by the tests; this measures speed), so a cached file never stands
  in for what the exporter writes today.
- The exporter has no F16 option for ternary matrices, so the F16 file is made here from the TQ2_0
  file: every metadata key/value and every tensor is copied, and each TQ2_0 tensor is dequantized
  (gguf.quants) and written as F16. TQ blocks hold fp16(s) * {-1, 0, 1}, which F16 represents
  exactly (checked per tensor), so both files hold bit-identical weights and only the types (and
  general.file_type, which names them) differ. This is the F16 export the target compares against:
  the same network, every matrix in F16.
- Same-model check, in two parts. Files: every metadata key (general.file_type aside), tensor name,
  shape and dequantized value of each ternary file equals the F16 file's, exactly. llama.cpp: the
  greedy continuation from every file is compared with the F16 file's, and so are the prompt
  logits. Those are not bit-identical by design: for a TQ matrix llama.cpp quantizes the
  activations to Q8_K (int8 per 256-block), for an F16 matrix it rounds them to F16, which moves
  random-init logits by a few percent (relative L2; 2% at 4 layers, 4% at 12). TQ2_0 and TQ1_0
  share Q8_K and give identical logits. The check passes when the weights are identical and the
  greedy tokens agree, or the logits agree to within that rounding (relative L2 <= 0.1 and top-1
  agreement >= 95%); an unrelated model would be at relative L2 ~1.4.
- All files are loaded once (mmap), warmed up, then timed in rounds; within a round every file runs
  once, and the order rotates from round to round, so background load on a shared machine hits them
  alike. Reported numbers are medians over rounds. One timed run = reset the KV cache, evaluate the
  prompt in one batch (prompt tok/s), then decode --tokens tokens one at a time, greedy (argmax of
  the logits; no sampler, so EOS never stops it and no seed matters) (decode tok/s). Python's share
  of one decode step (a few tens of microseconds) is the same for every file. `decode GB/s` is file
  size x decode tok/s: the rate at which one decode step streams the weights (every weight is read
  once per token), to compare with what the machine's memory delivers.
- After the table, `kernel_rates` times ggml's dot-product kernels on one core with operands in
  cache, and the script prints how much of a measured decode step that weight arithmetic explains:
  the rest is waiting for memory plus the per-token work that does not shrink with the weights
  (graph build, per-op thread barriers, activation quantization, norms, attention, the F16 output
  head that every file shares). That is what decides how far the file-size ratio carries over to
  the speed ratio.
- Threads wait at a barrier after every llama.cpp op (hundreds per token). With libgomp's default
  (OMP_WAIT_POLICY unset = spin, `--omp-wait-policy active`) a waiting thread spins on its core, so
  on a small shared CPU where other processes hold the cores, a preempted thread stalls the others
  for a scheduler slice and a decode step can take ten times as long (seen here: 2 threads on 2
  busy cores). The default here is `passive`: waiting threads sleep, which costs a wake-up per
  barrier (a fixed per-token cost, the same for every file, so if anything it lowers the TQ/F16
  ratio) but keeps the measurement meaningful on a shared machine. `--threads 1` has no barriers;
  `decode min-max` shows how much the rounds spread.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBED_SCALE = 25.0  # as tests/export/conftest.py: gives random-init logits a usable spread
BENCH_VERSION = "1"  # part of the checkpoint cache key; bump when the build below changes
PROMPT_TEXT = (
    "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
    "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief that thou her "
    "maid art far more fair than she. Be not her maid, since she is envious; her vestal livery is but "
    "sick and green, and none but fools do wear it; cast it off. It is my lady, O, it is my love! O, "
    "that she knew she were! She speaks, yet she says nothing; what of that? Her eye discourses; I will "
    "answer it. I am too bold, 'tis not to me she speaks: two of the fairest stars in all the heaven, "
    "having some business, do entreat her eyes to twinkle in their spheres till they return. What if "
    "her eyes were there, they in her head? The brightness of her cheek would shame those stars, as "
    "daylight doth a lamp; her eyes in heaven would through the airy region stream so bright that "
    "birds would sing and think it were not night. See, how she leans her cheek upon her hand! O, that "
    "I were a glove upon that hand, that I might touch that cheek!"
)


@dataclass(frozen=True)
class Shape:
    """The random model's shape (every width a multiple of 256 at the defaults)."""

    hidden: int
    layers: int
    ffn: int
    heads: int
    vocab: int

    def param_split(self) -> dict[str, int]:
        """Parameter counts by where they end up in the GGUF: ternary matrices, F16 embedding, F32 norms."""
        ternary = self.layers * (4 * self.hidden * self.hidden + 3 * self.hidden * self.ffn)
        embedding = self.vocab * self.hidden  # tied: also the output head
        norms = self.layers * (3 * self.hidden + self.ffn) + self.hidden  # attn/ffn/attn_sub norms, ffn_sub, final
        return {"ternary": ternary, "embedding": embedding, "norms": norms}


# ---------------------------------------------------------------------------------------------- build


def build_checkpoint(shape: Shape) -> tuple[Path, bool]:
    """Return (the cached BitNet checkpoint of the random `shape` model, whether it was built now)."""
    import torch

    from wrinklefree_core.config.model import ModelConfig, RandomInitConfig
    from wrinklefree_core.models.checkpoint import is_bitnet_checkpoint, save_bitnet_checkpoint
    from wrinklefree_core.models.convert import convert_to_bitnet
    from wrinklefree_core.config.bitnet import BitNetSettings
    from wrinklefree_core.models.sources import load_hf_model, materialize
    from wrinklefree_core.paths import cache_dir

    random_cfg = RandomInitConfig(
        architecture="llama",
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,  # MHA: GQA would only shrink k_proj/v_proj
        vocab_size=shape.vocab,
        tie_word_embeddings=True,
        seed=0,
    )
    settings = BitNetSettings(subln="bitdistill")
    key = f"{BENCH_VERSION}:{EMBED_SCALE}:{random_cfg.model_dump_json()}:{settings.model_dump_json()}"
    out = cache_dir() / "bench" / "gguf_speed" / f"h{shape.hidden}-l{shape.layers}-f{shape.ffn}-" \
        f"{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if is_bitnet_checkpoint(out):
        return out, False

    source = materialize(ModelConfig(name=f"bench_gguf_h{shape.hidden}_l{shape.layers}", source="random",
                                     package=None, gguf_file=None, random=random_cfg))
    model, tokenizer = load_hf_model(source)
    convert_to_bitnet(model, settings)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBED_SCALE)
    return save_bitnet_checkpoint(model.eval(), out, settings, tokenizer), True


def export_ternary(checkpoint: Path, out_dir: Path, ternary_type: str) -> Path:
    """Write the checkpoint as a GGUF with `ternary_type` matrices (F16 embedding), unverified."""
    from wrinklefree_core.config.export import ExportConfig
    from wrinklefree_core.export import write_gguf

    cfg = ExportConfig(ternary_type=ternary_type, float_type="f16", verify=False)
    report = write_gguf(checkpoint, out_dir / f"{ternary_type}.gguf", cfg)
    quantized = {t.ggml_type for t in report.tensors if len(t.shape) > 1} - {"F16"}
    if quantized != {ternary_type.upper()}:
        raise SystemExit(f"{ternary_type} export holds matrix types {sorted(quantized)}: the shape is not 256-aligned.")
    return report.path


def rewrite_as_f16(src: Path, dst: Path) -> dict[str, int]:
    """Copy the GGUF at `src` to `dst` with every quantized tensor dequantized to F16; return type counts.

    Metadata and all other tensors are copied as they are; general.file_type becomes MOSTLY_F16.
    Refuses (SystemExit) a tensor whose dequantized values F16 cannot hold exactly.
    """
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    tmp = dst.parent / f"{dst.name}.tmp-{os.getpid()}"
    writer = GGUFWriter(str(tmp), arch)
    counts: dict[str, int] = {}
    try:
        alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = alignment.contents()
        for field in reader.fields.values():
            # GGUF.* are the header's virtual fields and the writer adds general.architecture itself.
            if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name == gguf.Keys.General.FILE_TYPE:
                value = int(gguf.LlamaFileType.MOSTLY_F16)
            writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
        for t in reader.tensors:
            qtype = T(t.tensor_type)
            if qtype in (T.F16, T.F32):
                writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=qtype)
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
                continue
            values = gguf.quants.dequantize(np.asarray(t.data), qtype)
            half = values.astype(np.float16)
            if not np.array_equal(half.astype(np.float32), values):
                raise SystemExit(f"{t.name}: {qtype.name} values are not exactly representable in F16.")
            writer.add_tensor(t.name, half)
            counts[f"{qtype.name}->F16"] = counts.get(f"{qtype.name}->F16", 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return counts


# ---------------------------------------------------------------------------------------------- measure


def open_llama(path: Path, n_ctx: int, threads: int, logits_all: bool = False):
    """Load a GGUF for timing (or, with logits_all, for the logit comparison)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, flash_attn=False, seed=0, verbose=False)


def last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token. Llama.eval keeps them only with logits_all, so read them
    from the context directly (a copy: the buffer is overwritten by the next decode)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def timed_run(llm, prompt: list[int], n_tokens: int) -> tuple[float, float, list[int]]:
    """Evaluate `prompt` from an empty cache, then greedily decode `n_tokens`; return
    (prompt seconds, decode seconds, decoded tokens)."""
    llm.reset()  # the next eval drops every cached position from n_tokens = 0 on
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    tokens: list[int] = []
    tok = int(np.argmax(last_logits(llm)))
    t2 = time.perf_counter()
    for _ in range(n_tokens):
        tokens.append(tok)
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, tokens


def prompt_logits(path: Path, prompt: list[int], threads: int) -> np.ndarray:
    """llama.cpp's logits for every prompt position, (len(prompt), vocab)."""
    llm = open_llama(path, n_ctx=len(prompt) + 8, threads=threads, logits_all=True)
    try:
        llm.eval(prompt)
        return np.array(llm.scores[: len(prompt)], dtype=np.float64)
    finally:
        llm.close()


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Relative L2 error, max abs error and top-1 agreement of `got` vs `want` logits."""
    diff = got - want
    return {
        "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(want)),
        "max_abs": float(np.abs(diff).max()),
        "top1": float(np.mean(got.argmax(-1) == want.argmax(-1))),
    }


def same_weights(path: Path, reference: Path) -> tuple[bool, str]:
    """Whether two GGUFs hold the same metadata (general.file_type aside) and, tensor by tensor, the
    same names, shapes and dequantized values, exactly; with a short reason when they do not."""
    import gguf
    from gguf import GGUFReader

    a, b = GGUFReader(path), GGUFReader(reference)
    skip = {gguf.Keys.General.FILE_TYPE}
    kv_a = {f.name: f.contents() for f in a.fields.values() if not f.name.startswith("GGUF.") and f.name not in skip}
    kv_b = {f.name: f.contents() for f in b.fields.values() if not f.name.startswith("GGUF.") and f.name not in skip}
    if kv_a != kv_b:
        return False, f"metadata differs in {sorted(k for k in kv_a.keys() | kv_b.keys() if kv_a.get(k) != kv_b.get(k))}"
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        return False, "tensor names or order differ"
    for ta, tb in zip(a.tensors, b.tensors):
        va = gguf.quants.dequantize(np.asarray(ta.data), ta.tensor_type)
        vb = gguf.quants.dequantize(np.asarray(tb.data), tb.tensor_type)
        if va.shape != vb.shape or not np.array_equal(va, vb):
            return False, f"{ta.name} differs"
    return True, f"{len(a.tensors)} tensors and {len(kv_a)} metadata keys identical"


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------- diagnostics


def kernel_rates() -> dict[str, float]:
    """One core's throughput of the dot-product kernels a decode step runs, in Gweights/s.

    The kernels are ggml's own (`ggml_vec_dot_{tq2_0,tq1_0}_q8_K`, `ggml_vec_dot_f16` from the
    libggml-cpu that llama-cpp-python loads), called through ctypes on one long row whose operands
    fit in L2 (<= 0.8 MB), so they measure arithmetic, not memory. The best of 1000 calls is kept
    (other processes only ever slow a call down) at five row lengths, and the rate is the slope of
    time over length, so the ctypes call cost (microseconds, as long as the longest row takes for
    TQ2_0) drops out. Returns {} when the library does not export the kernels.
    """
    import ctypes

    import gguf
    import llama_cpp

    try:
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
        kernels = {"TQ2_0": lib.ggml_vec_dot_tq2_0_q8_K, "TQ1_0": lib.ggml_vec_dot_tq1_0_q8_K,
                   "F16": lib.ggml_vec_dot_f16}
        quantize_q8_k = lib.quantize_row_q8_K
        lib.ggml_cpu_init()  # fills the fp16 conversion tables the kernels read
    except (OSError, AttributeError):
        return {}
    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    for fn in kernels.values():
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), size_t, vp, size_t, vp, size_t, ctypes.c_int]
        fn.restype = None
    quantize_q8_k.argtypes, quantize_q8_k.restype = [vp, vp, ctypes.c_int64], None

    n = 256 * 768
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, size=(n // 256, 256)).astype(np.float32) * np.float32(0.015625)
    x = rng.standard_normal(n).astype(np.float32)
    q8_k = np.zeros(292 * (n // 256), np.uint8)  # block_q8_K: f32 d, 256 int8, 16 int16 sums
    quantize_q8_k(x.ctypes.data, q8_k.ctypes.data, n)
    operands = {
        "TQ2_0": (gguf.quants.quantize(w, gguf.GGMLQuantizationType.TQ2_0), q8_k),
        "TQ1_0": (gguf.quants.quantize(w, gguf.GGMLQuantizationType.TQ1_0), q8_k),
        "F16": (w.reshape(-1).astype(np.float16), x.astype(np.float16)),
    }
    out = ctypes.c_float()

    lengths = [n // 8, n // 4, n // 2, 3 * n // 4, n]
    rates: dict[str, float] = {}
    for name, fn in kernels.items():
        a, b = operands[name]
        best = [float("inf")] * len(lengths)
        # The lengths take turns, so a stretch of time when another process shares the core or the
        # caches slows every length alike instead of bending the fitted line.
        for _ in range(1000):
            for i, length in enumerate(lengths):
                t0 = time.perf_counter()
                fn(length, ctypes.byref(out), 0, a.ctypes.data, 0, b.ctypes.data, 0, 1)
                best[i] = min(best[i], time.perf_counter() - t0)
        rates[name] = float(1 / np.polyfit(lengths, best, 1)[0] / 1e9)
    return rates


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per file, median reported (default 7; quick 2)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens decoded per timed run (default 128; quick 32)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="prompt length in tokens (default 128; quick 32)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default os.cpu_count())")
    parser.add_argument("--omp-wait-policy", choices=["passive", "active"], default="passive",
                        help="OMP_WAIT_POLICY for llama.cpp's OpenMP threads (default passive; see the header)")
    parser.add_argument("--hidden", type=int, default=None, help="model width (default 768; quick 512)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 12; quick 4)")
    parser.add_argument("--ffn", type=int, default=None, help="MLP width (default 2560; quick 1536)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default hidden/64)")
    parser.add_argument("--vocab", type=int, default=None, help="BPE vocabulary size (default 8192; quick 4096)")
    parser.add_argument("--types", default="tq2_0,tq1_0", help="comma list of ternary types to export besides F16")
    parser.add_argument("--quick", action="store_true", help="small model and short runs: a smoke check, not a result")
    args = parser.parse_args()

    quick = args.quick
    hidden = args.hidden or (512 if quick else 768)
    shape = Shape(
        hidden=hidden,
        layers=args.layers or (4 if quick else 12),
        ffn=args.ffn or (1536 if quick else 2560),
        heads=args.heads or max(1, hidden // 64),
        vocab=args.vocab or (4096 if quick else 8192),
    )
    rounds = args.rounds or (2 if quick else 7)
    n_gen = args.tokens or (32 if quick else 128)
    n_prompt = args.prompt_tokens or (32 if quick else 128)
    threads = args.threads or os.cpu_count() or 1
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    # Read by the OpenMP runtime when llama.cpp's libraries load, i.e. at the import below.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    import llama_cpp

    load_start = os.getloadavg()
    system_info = llama_cpp.llama_print_system_info().decode().strip()
    split = shape.param_split()
    print(f"# {platform.machine()} CPU, {os.cpu_count()} cores, llama.cpp threads={threads}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, llama-cpp-python {llama_cpp.__version__}")
    print(f"# llama.cpp system_info: {system_info}")
    print(f"# model: hidden {shape.hidden}, {shape.layers} layers, ffn {shape.ffn}, {shape.heads} heads, "
          f"vocab {shape.vocab} (requested), arch bitnet")

    t0 = time.perf_counter()
    checkpoint, built = build_checkpoint(shape)
    t_build = time.perf_counter() - t0
    out_dir = checkpoint.parent / f"{checkpoint.name}-gguf"
    out_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    files: dict[str, Path] = {}
    if "tq2_0" not in types:
        types.insert(0, "tq2_0")  # the F16 file is made from the TQ2_0 one
    for ternary_type in types:
        files[ternary_type.upper()] = export_ternary(checkpoint, out_dir, ternary_type)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    f16_path = out_dir / "f16.gguf"
    counts = rewrite_as_f16(files["TQ2_0"], f16_path)
    t_f16 = time.perf_counter() - t0
    files = {"F16": f16_path, **files}

    from gguf import GGUFReader

    # The trained BPE can stop short of the requested size on a small corpus: count what was written.
    n_vocab = len(GGUFReader(f16_path).get_field("tokenizer.ggml.tokens").contents())
    split["embedding"] = n_vocab * shape.hidden
    total = sum(split.values())
    print(f"# params: {total / 1e6:.1f}M = ternary {split['ternary'] / 1e6:.1f}M ({split['ternary'] / total:.1%}) "
          f"+ embedding (tied, {n_vocab} tokens) {split['embedding'] / 1e6:.1f}M "
          f"({split['embedding'] / total:.1%}) + norms {split['norms'] / 1e3:.0f}k")
    print(f"# checkpoint {checkpoint} ({'built' if built else 'cached, loaded'} in {t_build:.0f}s); "
          f"exports {t_export:.0f}s; F16 rewrite {t_f16:.0f}s ({counts})")

    # Prompt: the first n_prompt tokens of a fixed text, tokenized by llama.cpp itself (all files
    # share the vocabulary); repeated if the text is too short for the requested length.
    n_ctx = n_prompt + n_gen + 16
    llms = {name: open_llama(path, n_ctx, threads) for name, path in files.items()}
    ids = llms["F16"].tokenize(PROMPT_TEXT.encode(), add_bos=True)
    while len(ids) < n_prompt:
        ids += ids[1:]
    prompt = ids[:n_prompt]

    # Same-model checks that need no timing come first, so a wrong F16 file fails fast.
    weight_checks = {name: same_weights(path, f16_path) for name, path in files.items() if name != "F16"}
    logits = {name: prompt_logits(path, prompt, threads) for name, path in files.items()}
    logit_checks = {name: compare(logits[name], logits["F16"]) for name in files if name != "F16"}
    ternary_gap = {name: float(np.abs(logits[name] - logits["TQ2_0"]).max())
                   for name in files if name not in ("F16", "TQ2_0")}

    for llm in llms.values():  # warm-up: page the weights in, spin up the thread pool
        timed_run(llm, prompt, min(8, n_gen))

    prompt_s: dict[str, list[float]] = {name: [] for name in files}
    decode_s: dict[str, list[float]] = {name: [] for name in files}
    generated: dict[str, list[list[int]]] = {name: [] for name in files}
    names = list(files)
    loads = [os.getloadavg()[0]]
    t_bench = time.perf_counter()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            p, d, toks = timed_run(llms[name], prompt, n_gen)
            prompt_s[name].append(p)
            decode_s[name].append(d)
            generated[name].append(toks)
        loads.append(os.getloadavg()[0])
    t_bench = time.perf_counter() - t_bench
    for llm in llms.values():
        llm.close()

    sizes = {name: path.stat().st_size for name, path in files.items()}
    decode_tps = {name: n_gen / statistics.median(ts) for name, ts in decode_s.items()}
    prompt_tps = {name: n_prompt / statistics.median(ts) for name, ts in prompt_s.items()}
    spread = {name: (n_gen / max(ts), n_gen / min(ts)) for name, ts in decode_s.items()}

    print(f"# prompt {n_prompt} tokens, decode {n_gen} tokens greedy, {rounds} rounds (rotating order), "
          f"median; timed part {t_bench:.0f}s")
    print(f"# load average: {load_start[0]:.2f} at start, 1-min {min(loads):.2f}-{max(loads):.2f} during timing")
    header = (f"| {'file':<10} | {'type':<5} | {'size MiB':>8} | {'size vs F16':>11} | {'decode tok/s':>12} | "
              f"{'decode vs F16':>13} | {'decode min-max':>14} | {'decode GB/s':>11} | {'prompt tok/s':>12} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, path in files.items():
        lo, hi = spread[name]
        print(f"| {path.name:<10} | {name:<5} | {sizes[name] / 2**20:>8.2f} | {sizes[name] / sizes['F16']:>10.3f}x | "
              f"{decode_tps[name]:>12.1f} | {decode_tps[name] / decode_tps['F16']:>12.2f}x | "
              f"{f'{lo:.1f}-{hi:.1f}':>14} | {sizes[name] * decode_tps[name] / 1e9:>11.1f} | {prompt_tps[name]:>12.1f} |")

    # Same model: weights, greedy tokens and prompt logits vs the F16 file.
    ok = True
    for name in names:
        if any(g != generated[name][0] for g in generated[name]):
            print(f"! {name}: greedy tokens differ between rounds (llama.cpp run is not deterministic)")
        if name == "F16":
            continue
        same = common_prefix(generated[name][0], generated["F16"][0])
        c = logit_checks[name]
        weights_ok, why = weight_checks[name]
        verdict = weights_ok and (same == n_gen or (c["rel_l2"] <= 0.1 and c["top1"] >= 0.95))
        ok &= verdict
        print(f"# same model {name} vs F16: weights: {why}; greedy tokens {same}/{n_gen} identical; prompt "
              f"logits rel L2 {c['rel_l2']:.2e}, max abs {c['max_abs']:.3f}, top-1 agreement {c['top1']:.1%} -> "
              f"{'same model' if verdict else 'MISMATCH'}")
    for name, gap in ternary_gap.items():
        print(f"# {name} vs TQ2_0 prompt logits (both Q8_K activations): max abs difference {gap:.2e}")

    # Where a decode step's time goes: the weight arithmetic at the kernels' in-cache rates (as if
    # `threads` cores scaled perfectly) vs the measured time; the rest is waiting for memory and
    # the per-token work that does not shrink with the weights.
    rates = kernel_rates()
    if rates:
        print(f"# ggml dot kernels, one core, operands in L2: "
              + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + " Gweights/s")
        parts = []
        for name in names:
            ternary_rate = rates["F16"] if name == "F16" else rates[name]
            arithmetic = split["ternary"] / ternary_rate + split["embedding"] / rates["F16"]  # head: F16 in every file
            parts.append(f"{name} {1e3 / decode_tps[name]:.2f} ms (weight arithmetic {arithmetic / threads / 1e6:.2f} ms)")
        print(f"# per decoded token, measured (arithmetic at {threads}x one core): " + ", ".join(parts))

    tq2 = "TQ2_0"
    speed, size = decode_tps[tq2] / decode_tps["F16"], sizes[tq2] / sizes["F16"]
    print(f"# target: TQ2_0 decode >= 2.50x F16 -> {speed:.2f}x ({'met' if speed >= 2.5 else 'NOT met'}); "
          f"size <= 0.200x F16 -> {size:.3f}x ({'met' if size <= 0.2 else 'NOT met'})")
    if not ok:
        raise SystemExit("The files do not compute the same model; the comparison above is void.")


if __name__ == "__main__":
    main()
