"""MSRC-v2 with Malisiewicz & Efros's cleaned-up region maps: every labelled region is one training mask.

Layout::

    <root>/images/<stem>.jpg      RGB
    <root>/regions/<stem>.png     uint8 region ids 1..N (no 0), same size as the image
    <root>/regions.json           {stem: {"<id>": class name, or null for the void region}}

The void region (unlabelled pixels: foliage behind a flower, gaps in a bicycle frame) is not an object, so it
yields no mask; every labelled region is one connected piece (an object instance or a piece of stuff).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["MSRCRegions"]


class MSRCRegions:
    """Map-style dataset: ``[i] -> Sample`` with one mask per labelled region of image ``i``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / "regions.json"
        if not index.is_file():
            raise FileNotFoundError(f"MSRC regions index not found: {index}")
        self.regions: dict[str, dict[str, str | None]] = json.loads(index.read_text())
        self.stems = sorted(s for s in self.regions if (self.root / "regions" / f"{s}.png").is_file())
        if not self.stems:
            raise FileNotFoundError(f"no region maps under {self.root / 'regions'}")

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> Sample:
        stem = self.stems[index]
        image = load_image(self.root / "images" / f"{stem}.jpg")
        ids = load_mask(self.root / "regions" / f"{stem}.png")
        if ids.shape != image.shape[:2]:
            raise ValueError(f"{stem}: region map {ids.shape} differs from its image {image.shape[:2]}")
        labelled = [int(k) for k, name in self.regions[stem].items() if name is not None]
        masks = np.stack([ids == k for k in labelled]) if labelled else np.zeros((0, *ids.shape), bool)
        return Sample(image=image, masks=masks[masks.any(axis=(1, 2))], source=f"msrc_v2/{stem}")
