"""BSDS500: region segmentations as instance masks (training), and boundary maps (edge-detection evaluation).

Layout (``shared/data/bsds500``)::

    images/<split>/<id>.jpg
    groundtruth_png/<split>/segmentation/<id>_<k>.png   uint16 region labels drawn by annotator k (1, 2, ...)
    groundtruth_png/<split>/boundaries/<id>_<k>.png     0/255 boundary map of the same annotator
    overlap_with_interactive_benchmarks.txt             ids that are also Berkeley/GrabCut benchmark images

:class:`BSDSRegions` yields one :class:`Sample` per (image, annotator): every region label of that annotator is one
instance mask (a region may consist of several pieces; it stays one instance, as drawn). With
``for_training=True`` (the default) only the train/val splits are allowed and the overlap ids are never yielded,
so that the interactive benchmarks stay unseen. :class:`BSDSEdges` gives the edge benchmark everything it needs:
the image and the boundary maps and segmentations of *all* annotators.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["BSDSEdges", "BSDSRegions", "EdgeSample", "OVERLAP_FILE", "SPLITS", "read_overlap_ids"]

SPLITS = ("train", "val", "test")
OVERLAP_FILE = "overlap_with_interactive_benchmarks.txt"
_GT_NAME = re.compile(r"^(?P<id>\d+)_(?P<k>\d+)\.png$")


def read_overlap_ids(root: str | Path) -> set[str]:
    """Image ids listed in ``overlap_with_interactive_benchmarks.txt`` (comment lines skipped)."""
    path = Path(root) / OVERLAP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: cannot tell which BSDS images are benchmark images")
    ids = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.add(line.split()[0])
    return ids


def _annotators(root: Path, split: str, kind: str) -> dict[str, list[int]]:
    """image id -> sorted annotator indices that have a ``kind`` ('segmentation'/'boundaries') file."""
    folder = root / "groundtruth_png" / split / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"BSDS ground-truth folder not found: {folder}")
    found: dict[str, list[int]] = {}
    for p in folder.iterdir():
        m = _GT_NAME.match(p.name)
        if m:
            found.setdefault(m["id"], []).append(int(m["k"]))
    return {i: sorted(ks) for i, ks in found.items()}


def _check_splits(splits: str | Sequence[str]) -> list[str]:
    names = [splits] if isinstance(splits, str) else list(splits)
    bad = [s for s in names if s not in SPLITS]
    if bad or not names:
        raise ValueError(f"unknown BSDS split(s) {bad or names}; choose from {SPLITS}")
    return names


class BSDSRegions:
    """Map-style dataset of BSDS500 region segmentations as instance masks.

    Arguments:
      root: the ``bsds500`` folder.
      splits: one split or several (``("train", "val")`` by default).
      annotator: ``"all"`` gives one item per (image, annotator); an int ``k`` gives annotator k only, and images
        without that annotator are skipped.
      for_training: refuse the test split and leave out the overlap ids (see the module docstring).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        splits: str | Sequence[str] = ("train", "val"),
        annotator: int | Literal["all"] = "all",
        for_training: bool = True,
    ) -> None:
        self.root = Path(root)
        self.splits = _check_splits(splits)
        if for_training and "test" in self.splits:
            raise ValueError(
                "the BSDS500 test split is for edge evaluation; pass for_training=False to read it"
            )
        if annotator != "all" and not (isinstance(annotator, int) and annotator >= 0):
            raise ValueError(f"annotator must be 'all' or an int >= 0, got {annotator!r}")
        self.excluded_ids = read_overlap_ids(self.root) if for_training else set()
        items: list[tuple[str, str, int]] = []
        for split in self.splits:
            for image_id, ks in sorted(_annotators(self.root, split, "segmentation").items()):
                if image_id in self.excluded_ids:
                    continue
                chosen = ks if annotator == "all" else [k for k in ks if k == annotator]
                items.extend((split, image_id, k) for k in chosen)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        split, image_id, k = self.items[index]
        image = load_image(self.root / "images" / split / f"{image_id}.jpg")
        seg_path = self.root / "groundtruth_png" / split / "segmentation" / f"{image_id}_{k}.png"
        labels = load_mask(seg_path)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{seg_path}: shape {labels.shape} differs from its image {image.shape[:2]}")
        values = np.unique(labels)
        values = values[values != 0]  # 0 would be "unlabelled"; BSDS labels start at 1
        masks = labels[None] == values[:, None, None]
        return Sample(image=image, masks=masks, source=f"bsds500/{split}/{image_id}#{k}")


@dataclass
class EdgeSample:
    """One BSDS image with every annotator's ground truth.

    Attributes:
      image: (H, W, 3) uint8.
      boundaries: (K, H, W) bool, one human boundary map per annotator.
      segmentations: (K, H, W) uint16 region labels, same annotator order.
      image_id: BSDS id, e.g. ``"100007"``.
      split: ``"train"``, ``"val"`` or ``"test"``.
    """

    image: np.ndarray
    boundaries: np.ndarray
    segmentations: np.ndarray
    image_id: str
    split: str


class BSDSEdges:
    """Map-style dataset for the edge-detection benchmark (the test split by default): ``[i] -> EdgeSample``."""

    def __init__(self, root: str | Path, *, split: str = "test") -> None:
        self.root = Path(root)
        (self.split,) = _check_splits(split)
        bounds = _annotators(self.root, self.split, "boundaries")
        segs = _annotators(self.root, self.split, "segmentation")
        self.ids = sorted(bounds)
        self._annotators = {i: bounds[i] for i in self.ids}
        for i in self.ids:
            if segs.get(i) != bounds[i]:
                raise ValueError(
                    f"BSDS {self.split}/{i}: boundary annotators {bounds[i]} != segmentation annotators {segs.get(i)}"
                )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> EdgeSample:
        image_id = self.ids[index]
        gt = self.root / "groundtruth_png" / self.split
        image = load_image(self.root / "images" / self.split / f"{image_id}.jpg")
        ks = self._annotators[image_id]
        boundaries = np.stack([load_mask(gt / "boundaries" / f"{image_id}_{k}.png") > 0 for k in ks])
        segmentations = np.stack(
            [load_mask(gt / "segmentation" / f"{image_id}_{k}.png").astype(np.uint16) for k in ks]
        )
        if boundaries.shape[1:] != image.shape[:2] or segmentations.shape[1:] != image.shape[:2]:
            raise ValueError(f"BSDS {self.split}/{image_id}: ground truth shape differs from the image")
        return EdgeSample(image, boundaries, segmentations, image_id, self.split)
