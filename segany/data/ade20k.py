"""ADE20K's per-image folders (the 2021 release): each image beside a folder of its amodal instance masks.

Layout (anywhere under ``root``, e.g. ``ADE20K_2021_17_01/images/ADE/training/urban/street/``)::

    <name>.jpg                                   the image
    <name>/instance_<NNN>_<name>.png             one object: 255 visible, 128 occluded part, 0 elsewhere

A sample's masks are the *visible* parts (a click can only land on what is seen); an object with no visible
pixel is left out. The occluded part is the occluder's pixels, so it counts as background, not as ignore.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["ADE20KFolder", "looks_like_ade20k"]

_VISIBLE = 255


def _instance_files(image: Path) -> list[Path]:
    folder = image.with_suffix("")
    return sorted(folder.glob(f"instance_*_{image.stem}.png")) if folder.is_dir() else []


def looks_like_ade20k(root: str | Path) -> bool:
    """True if some image under ``root`` has an ADE20K instance folder beside it."""
    return any(True for _ in Path(root).rglob("instance_*_*.png"))


class ADE20KFolder:
    """Map-style dataset over every ADE20K image under ``root``: ``[i] -> Sample`` of its visible instances.

    Arguments:
      root: any folder above the images (searched recursively, in sorted order).
      min_pixels: leave out objects with fewer visible pixels (1: keep every visible object).
    """

    def __init__(self, root: str | Path, *, min_pixels: int = 1) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ADE20K folder not found: {self.root}")
        self.min_pixels = min_pixels
        self.images = [p for p in sorted(self.root.rglob("*.jpg")) if _instance_files(p)]
        if not self.images:
            raise ValueError(
                f"{self.root}: no ADE20K image with an instance folder (<name>.jpg + <name>/instance_*.png)"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        path = self.images[index]
        image = load_image(path)
        masks = []
        for f in _instance_files(path):
            m = load_mask(f)
            if m.shape != image.shape[:2]:
                raise ValueError(f"{f}: mask shape {m.shape} differs from its image {image.shape[:2]}")
            visible = m == _VISIBLE
            if visible.sum() >= max(self.min_pixels, 1):
                masks.append(visible)
        hw = image.shape[:2]
        stacked = np.stack(masks) if masks else np.zeros((0, *hw), dtype=bool)
        return Sample(image=image, masks=stacked, source=f"ade20k/{path.stem}")
