"""segany: Segment Anything, the whole system.

Switch from the official package by changing one import::

    from segany import sam_model_registry, SamPredictor

The names below are imported on first use (PEP 562), so that ``import segany`` and ``segany --help`` do not pay
for PyTorch and torchvision (about 3 s here) before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ImageEmbedding": "segany.predictor",
    "SamAutomaticMaskGenerator": "segany.automatic",
    "SamConfig": "segany.build",
    "SamPredictor": "segany.predictor",
    "build_sam": "segany.build",
    "sam_model_registry": "segany.build",
}

__all__ = [
    "ImageEmbedding",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "sam_model_registry",
    "__version__",
]

if TYPE_CHECKING:
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.build import SamConfig, build_sam, sam_model_registry
    from segany.predictor import ImageEmbedding, SamPredictor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segany' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
