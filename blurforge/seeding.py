"""Per-sample random generators derived from (seed, key).

A sample's randomness must not depend on which worker draws it or in which order, so every
sample gets its own generator from the run seed and its stable key.
"""

from __future__ import annotations

import hashlib

import numpy as np


def seed_for(seed: int, key: str) -> int:
    """A non-negative int63 seed for the sample ``key`` of a run seeded with ``seed``.

    Stable across processes, platforms and Python versions (SHA-256, not ``hash()``).
    """
    digest = hashlib.sha256(f"{int(seed)}/{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def rng_for(seed: int, key: str) -> np.random.Generator:
    """The generator of sample ``key``; equal to ``np.random.default_rng(seed_for(seed, key))``."""
    return np.random.default_rng(seed_for(seed, key))
