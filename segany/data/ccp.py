"""Clothing Co-Parsing (CCP): one person per image, with garment and body-part labels — SAM's whole/part case.

Layout::

    <root>/images/<id>.jpg        RGB
    <root>/labels/<id>.png        uint8 label map, 0 = background, 1..58 = ``label_list.txt`` entries

A label is not an instance (shoes: left and right; skin: face, arms, legs), so each label is split into its
connected pieces, and pieces smaller than ``min_part_fraction`` of the image are dropped. The whole person (the
union of all labels) is one more mask, so a click on a jacket has two right answers in the same sample: the
jacket and the person (`segany.train.prompts` trains both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["CCPParts"]


class CCPParts:
    """Map-style dataset: ``[i] -> Sample`` whose masks are the person (first) and its garment/part pieces."""

    def __init__(self, root: str | Path, *, min_part_fraction: float = 0.001) -> None:
        self.root = Path(root)
        if not (self.root / "labels").is_dir():
            raise FileNotFoundError(f"CCP labels folder not found: {self.root / 'labels'}")
        self.ids = sorted(
            p.stem
            for p in (self.root / "labels").glob("*.png")
            if (self.root / "images" / f"{p.stem}.jpg").is_file()
        )
        if not self.ids:
            raise FileNotFoundError(f"no CCP label maps with images under {self.root}")
        self.min_part_fraction = min_part_fraction

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        import cv2

        image_id = self.ids[index]
        image = load_image(self.root / "images" / f"{image_id}.jpg")
        labels = load_mask(self.root / "labels" / f"{image_id}.png")
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{image_id}: label map {labels.shape} differs from its image {image.shape[:2]}")
        min_px = self.min_part_fraction * labels.size
        masks = [labels > 0]
        for value in np.unique(labels):
            if value == 0:
                continue
            n, comp = cv2.connectedComponents((labels == value).astype(np.uint8), connectivity=8)
            for k in range(1, n):
                piece = comp == k
                if piece.sum() >= min_px:
                    masks.append(piece)
        stacked = np.stack(masks) if masks[0].any() else np.zeros((0, *labels.shape), bool)
        return Sample(image=image, masks=stacked, source=f"ccp_parts/{image_id}")
