"""The validation split of the training folders: a fixed share of each folder's images, chosen by a hash of the
image's key, so that it is the same on every machine, in every pack and for every reader of the same image.

Settings (loss constants, thresholds, stopping) are chosen on this split, never on the benchmarks; the pack
made for training leaves it out (`segany.train.cache.pack_sources` with ``validation_fraction``).
"""

from __future__ import annotations

import hashlib

__all__ = ["VALIDATION_FRACTION", "image_key", "is_validation"]

VALIDATION_FRACTION = 0.08


def image_key(source: str) -> str:
    """The image a sample's ``source`` names: ``"bsds500/train/100075#2"`` -> ``"bsds500/train/100075"``."""
    return source.split("#", 1)[0]


def is_validation(source: str, fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether the image of ``source`` (e.g. ``"duts_tr/ILSVRC2012_test_00000004"``) is held out for validation."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    digest = hashlib.sha256(image_key(source).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
