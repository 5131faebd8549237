"""COCO-format instance segmentation (``instances.json`` + an image folder), decoded with pycocotools.

Each item is one image with one binary mask per (non-crowd) annotation and its category id. Crowd annotations
(``iscrowd=1``) are regions holding many objects, not instances, so they are left out unless asked for.
Annotations whose polygon rasterises to nothing are dropped (they cannot be prompted or scored).

``for_training=True`` (the default) leaves out the images listed in ``overlap_with_coco_mval.txt`` next to the
annotation file, when that file exists: they are the images of the COCO-MVal interactive benchmark, and a model
must not be trained on images it may later be scored on.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segany.data.sample import Sample
from segany.images import MAX_PIXELS, load_image

__all__ = ["CocoInstances", "MVAL_OVERLAP_FILE"]

MVAL_OVERLAP_FILE = "overlap_with_coco_mval.txt"


class CocoInstances:
    """Map-style dataset over a COCO instances file: ``len()``, ``[i] -> Sample``.

    Arguments:
      root: folder holding the annotation file and the image folder (e.g. ``shared/data/coco_subsets``).
      annotations: annotation file, relative to ``root`` (or absolute).
      images: image folder, relative to ``root`` (or absolute); ``file_name`` entries are looked up in it.
      for_training: leave out the benchmark-overlap images (see the module docstring).
      include_crowd: also yield crowd regions as masks.
      skip_empty: leave out images that have no usable annotation.
      max_pixels: passed to :func:`segany.images.load_image`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        annotations: str | Path = "instances.json",
        images: str | Path = "images",
        for_training: bool = True,
        include_crowd: bool = False,
        skip_empty: bool = True,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        from pycocotools.coco import COCO

        self.root = Path(root)
        ann_path = self.root / annotations
        self.image_dir = self.root / images
        if not ann_path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_path}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self.coco = COCO(str(ann_path))
        self.include_crowd = include_crowd
        self.max_pixels = max_pixels

        excluded: set[str] = set()
        overlap = ann_path.parent / MVAL_OVERLAP_FILE
        if for_training and overlap.is_file():
            excluded = {line.strip() for line in overlap.read_text().splitlines() if line.strip()}
        self.excluded_stems = excluded

        ids = []
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            if Path(info["file_name"]).stem in excluded:
                continue
            if skip_empty and not self.annotations(img_id):
                continue
            ids.append(img_id)
        self.image_ids: list[int] = ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The raw COCO annotation dicts of one image that this reader turns into masks (crowd filter applied)."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        return [a for a in anns if self.include_crowd or not a.get("iscrowd", 0)]

    def __getitem__(self, index: int) -> Sample:
        img_id = self.image_ids[index]
        info = self.coco.imgs[img_id]
        path = self.image_dir / info["file_name"]
        image = load_image(path, max_pixels=self.max_pixels)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the annotation's "
                f"{info['width']}x{info['height']}"
            )
        masks, cats = [], []
        with warnings.catch_warnings():
            # pycocotools' Cython decoder trips a NumPy 2 deprecation on every call; the result is unaffected.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            for ann in self.annotations(img_id):
                m = self.coco.annToMask(ann).astype(bool)
                if m.any():
                    masks.append(m)
                    cats.append(int(ann["category_id"]))
        h, w = image.shape[:2]
        return Sample(
            image=image,
            masks=np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool),
            category_ids=np.asarray(cats, dtype=np.int64),
            source=f"coco/{img_id}",
        )
