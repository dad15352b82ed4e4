"""One loader for every model the pipeline uses.

A model is named either by a Hugging Face id / local folder (plain `from_pretrained`), or by
a GGUF file shipped in registry packages. A packaged GGUF is dequantized once into a plain
HF folder in a cache (transformers' GGUF path takes a minute and cannot `save_pretrained`),
then loaded like any folder in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wsd.core.packaged import package_version, packaged_file
from wsd.core.store import slug, umask_modes

log = logging.getLogger(__name__)

_DONE_FILE = "wsd_conversion.json"
_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class GGUFPart:
    package: str
    file: str


@dataclass(frozen=True)
class ModelSpec:
    """What a `conf/pilot/*.yaml` or `conf/base/*.yaml` entry describes."""

    name: str
    path: str | None = None  # HF id or local folder
    gguf_parts: tuple[GGUFPart, ...] = ()  # concatenated in order into one GGUF file
    gguf_sha256: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None  # "auto" spreads a large model over all visible GPUs
    trust_remote_code: bool = False
    # backend=vllm: this model's engine settings (wsd.backends.vllm_engine.VLLMSettings); HF ignores them
    vllm: dict | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg) -> ModelSpec:
        cfg = dict(cfg)
        unknown = set(cfg) - set(cls.__dataclass_fields__) - {"gguf"}
        if unknown:
            raise ValueError(f"unknown model setting(s) {sorted(unknown)} for model {cfg.get('name')!r}")
        gguf = dict(cfg.pop("gguf", None) or {})
        if cfg.get("vllm") is not None:
            cfg["vllm"] = dict(cfg["vllm"])
        parts = tuple(GGUFPart(**dict(p)) for p in gguf.get("parts") or ())
        spec = cls(**cfg, gguf_parts=parts, gguf_sha256=gguf.get("sha256"))
        if bool(spec.path) == bool(spec.gguf_parts):
            raise ValueError(
                f"model {spec.name!r} needs exactly one of `path` (HF id or folder) or `gguf.parts`"
            )
        if spec.dtype not in _DTYPES:
            raise ValueError(f"model {spec.name!r}: dtype {spec.dtype!r} is not one of {_DTYPES}")
        return spec


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: object
    tokenizer: object
    folder: str = field(default="")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self):
        return self.model.device

    @property
    def eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS and every EOS of the generation config (Gemma ends turns with one)."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


def check_available(spec: ModelSpec) -> None:
    """Fail fast, before anything heavy is loaded, if a model cannot possibly be found."""
    if spec.gguf_parts:
        for part in spec.gguf_parts:
            packaged_file(part.package, part.file)
        return
    path = os.path.expanduser(spec.path)
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
    if looks_local:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {spec.name!r}: folder {spec.path!r} does not exist")
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
        if not isinstance(cached, str):
            raise FileNotFoundError(
                f"model {spec.name!r}: {spec.path!r} is not in the local Hugging Face cache and "
                "HF_HUB_OFFLINE=1; download it first or point `path` at a local folder"
            )


def _parts_key(spec: ModelSpec) -> str:
    ident = [
        (p.package, package_version(p.package), p.file, packaged_file(p.package, p.file).stat().st_size)
        for p in spec.gguf_parts
    ]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]


def _join_parts(spec: ModelSpec, target: Path) -> None:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in spec.gguf_parts:
            with packaged_file(part.package, part.file).open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if spec.gguf_sha256 and digest.hexdigest() != spec.gguf_sha256:
        raise ValueError(
            f"model {spec.name!r}: the joined GGUF has sha256 {digest.hexdigest()}, "
            f"expected {spec.gguf_sha256}"
        )


def packaged_folder_path(spec: ModelSpec, cache_dir: str | os.PathLike) -> Path:
    """Where the converted folder of a packaged model lives (keyed by package versions)."""
    return Path(cache_dir).expanduser() / "packaged" / f"{slug(spec.name)}-{_parts_key(spec)}"


def packaged_folder(spec: ModelSpec, cache_dir: str | os.PathLike) -> Path:
    """The plain HF folder for a packaged GGUF model, converting it on first use.

    Safe when several processes start at once (a file lock serialises the conversion) and a
    half-written conversion is never used: it is built in a temporary folder and renamed
    into place only when complete.
    """
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = packaged_folder_path(spec, cache_dir)
    if (final / _DONE_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / _DONE_FILE).is_file():
            return final
        log.info("converting packaged model %s into %s (once)", spec.name, final)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.") as tmp:
            gguf = Path(tmp) / "model.gguf"
            _join_parts(spec, gguf)
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
            plain = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
            plain.load_state_dict(quantized.state_dict())
            if hasattr(plain.config, "quantization_config"):  # the weights are plain now
                del plain.config.quantization_config
            out = Path(tmp) / "hf"
            plain.save_pretrained(out)
            tokenizer.save_pretrained(out)
            source = [{"package": p.package, "version": package_version(p.package), "file": p.file}
                      for p in spec.gguf_parts]
            (out / _DONE_FILE).write_text(json.dumps({"name": spec.name, "source": source}, indent=1))
            umask_modes(out)
            if final.exists():  # a folder without the marker: leftover of a foreign failure
                shutil.rmtree(final)
            os.replace(out, final)
    return final


def model_folder(spec: ModelSpec, cache_dir: str | os.PathLike) -> str:
    """Where `from_pretrained` should look: the HF id/folder, or the converted cache folder."""
    if spec.gguf_parts:
        return str(packaged_folder(spec, cache_dir))
    return os.path.expanduser(spec.path)


def resolve_device(device: str | None) -> str:
    """`auto` (or null): the GPU when there is one, else the CPU; anything else as given."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(spec: ModelSpec, cache_dir: str | os.PathLike) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(spec, cache_dir)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    dtype = spec.dtype if spec.dtype == "auto" else getattr(torch, spec.dtype)
    kwargs = {"dtype": dtype, **common}
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not spec.device_map:
        model.to(resolve_device(spec.device))
    model.eval()
    log.info("loaded %s from %s (%s, %s)", spec.name, folder, spec.dtype, spec.device_map or spec.device)
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, folder=folder)
