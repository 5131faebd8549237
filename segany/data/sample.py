"""The one record every dataset reader yields and every augmentation consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Sample", "drop_large_masks"]


@dataclass
class Sample:
    """One image with its instance masks.

    Attributes:
      image: (H, W, 3) ``uint8`` RGB, displayed orientation (``segany.images.load_image``).
      masks: (N, H, W) ``bool``, one per instance; N may be 0.
      ignore: optional (N, H, W) ``bool``: pixels of each instance's ground truth that must not count either way
        (GrabCut's 128 band). Never overlaps its mask.
      category_ids: optional (N,) ``int64`` class ids (COCO), for evaluation tooling; SAM training ignores them.
      source: where it came from, e.g. ``"coco/139"``, ``"bsds500/train/100075#2"``, ``"grabcut/banana1"``.
    """

    image: np.ndarray
    masks: np.ndarray
    ignore: np.ndarray | None = None
    category_ids: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"{self.source}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        hw = self.image.shape[:2]
        if self.masks.ndim != 3 or self.masks.shape[1:] != hw or self.masks.dtype != np.bool_:
            raise ValueError(
                f"{self.source}: masks must be (N, {hw[0]}, {hw[1]}) bool, got {self.masks.shape} {self.masks.dtype}"
            )
        if self.ignore is not None and (
            self.ignore.shape != self.masks.shape or self.ignore.dtype != np.bool_
        ):
            raise ValueError(
                f"{self.source}: ignore must be bool of shape {self.masks.shape}, got {self.ignore.shape}"
            )
        if self.category_ids is not None and self.category_ids.shape != (len(self.masks),):
            raise ValueError(
                f"{self.source}: category_ids must have shape ({len(self.masks)},), got {self.category_ids.shape}"
            )

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def select(self, keep: np.ndarray) -> Sample:
        """The same image with only the instances where ``keep`` (bool (N,) or integer indices) selects."""
        return replace(
            self,
            masks=self.masks[keep],
            ignore=None if self.ignore is None else self.ignore[keep],
            category_ids=None if self.category_ids is None else self.category_ids[keep],
        )


def drop_large_masks(sample: Sample, max_fraction: float = 0.9) -> Sample:
    """Drop masks covering more than ``max_fraction`` of the image (the SAM paper discards SA-1B masks > 90 %).

    Such masks are mostly "the whole image" or background, which teach the model nothing about objects.
    """
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    if len(sample.masks) == 0:
        return sample
    area = sample.masks.reshape(len(sample.masks), -1).sum(1)
    return sample.select(area <= max_fraction * sample.height * sample.width)
