"""Small pieces shared by captioners and text encoders: the two registries, weight hashes, the
tokenizer sanity check, device / dtype choice and ``"module:Class"`` plug-ins. Nothing heavy at
import time."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Mapping

from medrestore.errors import ConfigError
from medrestore.registry import Registry

_PKG = "medrestore.prepare.captions"

#: ``captioner.name`` of a cache config -> "module:Class" of a Captioner
CAPTIONERS = Registry("captioner")
CAPTIONERS.add("template", f"{_PKG}.captioners:TemplateCaptioner")
CAPTIONERS.add("llava", f"{_PKG}.captioners:LlavaCaptioner")

#: ``encoder.name`` of a cache config -> "module:Class" of a TextEncoder
ENCODERS = Registry("encoder")
ENCODERS.add("open_clip", f"{_PKG}.encoders:OpenClipEncoder")
ENCODERS.add("minilm", f"{_PKG}.encoders:MeanPoolEncoder")

#: suffixes of files that hold weights (hashed into fingerprints)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".gguf")
#: files that define a tokenizer (hashed too: another vocabulary means other embeddings)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "special_tokens_map.json")
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file (memoised per path, size and mtime: a 7B model is ~14 GB)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


def files_sha256(paths: list[Path], root: Path | None = None) -> str:
    """One sha256 over several files: the sorted list of ``name sha256`` lines."""
    lines = sorted(f"{p.relative_to(root) if root else p.name} {file_sha256(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def weights_sha256(path: str | os.PathLike, what: str) -> str:
    """Hash of a weights file, or of every weight file at the top of a model directory."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        raise ConfigError(f"{what}: no such file or directory {p}")
    files = [f for f in sorted(p.iterdir()) if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    if not files:
        raise ConfigError(f"{what}: {p} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return files_sha256(files, p)


def tokenizer_sha256(model_dir: str | os.PathLike) -> str | None:
    files = [Path(model_dir) / n for n in TOKENIZER_FILES if (Path(model_dir) / n).is_file()]
    return files_sha256(files) if files else None


def check_vocab(vocab_size: int, embedding_rows: int, model_dir: str | os.PathLike,
                min_vocab: int = 1000, exact: bool = True) -> None:
    """The tokenizer sanity check. An offline hub tokenizer can silently come back with a
    vocabulary of a handful of tokens that maps every word to one id; the embeddings are then
    garbage without any error. Require ``vocab_size >= min_vocab`` and ``== embedding_rows``
    (``<=`` with ``exact=False``: generative models often pad their embedding matrix)."""
    ok_rows = vocab_size == embedding_rows if exact else vocab_size <= embedding_rows
    if vocab_size < min_vocab or not ok_rows:
        rel = "==" if exact else "<="
        raise ConfigError(f"{model_dir}: tokenizer vocabulary of {vocab_size} tokens is not sane "
                          f"(expected >= {min_vocab} and {rel} the model's {embedding_rows} "
                          "embedding rows); the tokenizer files are missing or wrong")


def resolve_device(device: str | None) -> str:
    """``auto``/``None`` -> ``cuda:<LOCAL_RANK>`` when a GPU is visible, else ``cpu``."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        return "cpu"
    return str(device)


def resolve_dtype(dtype: str | None, device: str) -> str:
    """``auto`` -> ``bfloat16`` on GPU, ``float32`` on CPU (CPU bf16 matmuls are slow and
    change the greedy decode); explicit names are checked."""
    if dtype in (None, "auto"):
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={dtype!r}; expected auto, float32, bfloat16 or float16")
    return str(dtype)


def import_object(spec: str, what: str) -> Any:
    """``"package.module:Name"`` -> the object (user plug-ins for captioners / encoders)."""
    if ":" not in spec:
        raise ConfigError(f"{what}={spec!r} is neither a known name nor 'module:Class'")
    mod, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}={spec!r} cannot be imported ({exc})") from None


def build_component(cfg: Mapping[str, Any], registry: Registry, what: str) -> Any:
    """Build a captioner / encoder from ``{name: <registered name or module:Class>, **kwargs}``."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if not name:
        raise ConfigError(f"{what}.name is required; known: {registry.names()} or 'module:Class'")
    name = str(name)
    if name in registry:
        cls = registry.get(name)
    elif ":" in name:
        cls = import_object(name, f"{what}.name")
    else:
        raise ConfigError(f"{what}.name={name!r} is unknown; known: {registry.names()} "
                          "(or a plug-in 'module:Class')")
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise ConfigError(f"{what} {name!r}: {exc}") from None
