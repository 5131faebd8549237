"""Kaggle Data Science Bowl 2018 nuclei folders: one RGBA image and one binary PNG per nucleus.

Layout::

    <root>/<id>/images/<id>.png     RGBA (alpha is opaque in this data; composited on black by load_image)
    <root>/<id>/masks/<any>.png     0/255, exactly one nucleus each

``root`` may be the dataset folder or its ``stage1_train`` sub-folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["DSB2018"]


class DSB2018:
    """Map-style dataset of DSB2018 nuclei: ``[i] -> Sample`` with one mask per nucleus.

    Arguments:
      root: ``dsb2018_nuclei`` or ``dsb2018_nuclei/stage1_train``.
      ids: restrict to these image ids (e.g. a train/eval split chosen by the caller).
    """

    def __init__(self, root: str | Path, *, ids: Sequence[str] | None = None) -> None:
        root = Path(root)
        if (root / "stage1_train").is_dir():
            root = root / "stage1_train"
        if not root.is_dir():
            raise FileNotFoundError(f"DSB2018 folder not found: {root}")
        self.root = root
        found = sorted(p.name for p in root.iterdir() if (p / "images" / f"{p.name}.png").is_file())
        if ids is not None:
            missing = sorted(set(ids) - set(found))
            if missing:
                raise ValueError(f"DSB2018 ids not found under {root}: {missing[:5]}")
            found = [i for i in found if i in set(ids)]
        self.ids = found

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        folder = self.root / image_id
        image = load_image(folder / "images" / f"{image_id}.png")
        paths = sorted((folder / "masks").glob("*.png"))
        masks = np.zeros((len(paths), *image.shape[:2]), dtype=bool)
        for i, p in enumerate(paths):
            m = load_mask(p)
            if m.shape != image.shape[:2]:
                raise ValueError(f"{p}: shape {m.shape} differs from its image {image.shape[:2]}")
            masks[i] = m > 0
        return Sample(image=image, masks=masks[masks.any(axis=(1, 2))], source=f"dsb2018/{image_id}")
