"""segany: Segment Anything, the whole system.

Switch from the official package by changing one import::

    from segany import sam_model_registry, SamPredictor
"""

from segany.automatic import SamAutomaticMaskGenerator
from segany.build import SamConfig, build_sam, sam_model_registry
from segany.predictor import ImageEmbedding, SamPredictor

__version__ = "0.1.0"

__all__ = [
    "ImageEmbedding",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "sam_model_registry",
    "__version__",
]
