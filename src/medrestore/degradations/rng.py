"""Reproducible random number generators keyed by a string.

``keyed_rng("ct_denoise:ct.pydicom.CT_small", seed=0)`` always returns a generator in the same
state, on every machine and Python version: the key is hashed with SHA-256 (Python's built-in
``hash()`` is salted per process and must not be used for this), and the digest plus the seed
feed a :class:`numpy.random.SeedSequence`. So an image's degradation depends only on its key and
the global seed, never on the order in which images are processed.
"""

from __future__ import annotations

import hashlib

import numpy as np


def key_entropy(key: str) -> list[int]:
    """The SHA-256 digest of ``key`` (UTF-8) as eight 32-bit words."""
    if not isinstance(key, str):
        raise TypeError(f"keyed_rng key must be a str, got {type(key).__name__}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]


def keyed_rng(key: str, seed: int = 0) -> np.random.Generator:
    """A PCG64 generator determined by ``key`` and ``seed`` (a non-negative int)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"keyed_rng seed must be a non-negative int, got {seed!r}")
    seq = np.random.SeedSequence(entropy=[int(seed), *key_entropy(key)])
    return np.random.Generator(np.random.PCG64(seq))
