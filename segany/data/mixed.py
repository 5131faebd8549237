"""Mix dataset readers into one training stream: source detection, SA-1B folders, the > 90 % mask filter,
augmentation with copy-paste partners, and per-item seeding that is the same in every DataLoader worker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from segany.data.augment import AugmentConfig, augment_sample
from segany.data.sample import Sample, drop_large_masks
from segany.images import load_image

__all__ = ["EVAL_ONLY_FOLDERS", "MixedDataset", "SA1BFolder", "SampleSource", "open_source"]

# Benchmarks that must never be trained on (shared/data/README.md).
EVAL_ONLY_FOLDERS = frozenset({"grabcut", "berkeley"})


class SampleSource(Protocol):
    """Anything map-style that yields samples: every reader in ``segany.data``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class SA1BFolder:
    """A folder of SA-1B files (``sa_<id>.json`` next to the image its ``file_name`` names)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files = sorted(self.root.glob("*.json"))
        if not self.files:
            raise FileNotFoundError(f"no SA-1B .json files in {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        from segany.data.sa1b import read_sa1b  # imports torch; only SA-1B users pay for it

        path = self.files[index]
        doc = read_sa1b(path)
        image_path = path.parent / doc.image.file_name
        image = load_image(image_path)
        if image.shape[:2] != (doc.image.height, doc.image.width):
            raise ValueError(
                f"{image_path}: decoded {image.shape[1]}x{image.shape[0]}, annotations say "
                f"{doc.image.width}x{doc.image.height}"
            )
        return Sample(image=image, masks=doc.masks(), source=f"sa1b/{doc.image.image_id}")


def open_source(path: str | Path, *, for_training: bool = True) -> SampleSource:
    """Pick the reader for a dataset folder by its layout.

    ``instances.json`` -> COCO; ``groundtruth_png/`` -> BSDS500 regions; ``stage1_train/`` or sub-folders with
    ``<id>/images`` + ``<id>/masks`` -> DSB2018; ``images/`` + ``masks/`` -> :class:`~segany.data.folders.MaskFolder`;
    ``regions.json`` + ``regions/`` -> MSRC-v2 regions; ``labels/`` + ``label_list.txt`` -> CCP person/garment parts;
    ``*.json`` files -> SA-1B. With ``for_training=True`` the evaluation-only benchmarks are refused.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if for_training and root.resolve().name.lower() in EVAL_ONLY_FOLDERS:
        raise ValueError(f"{root} is an evaluation-only benchmark; it must not be used for training")
    if (root / "instances.json").is_file():
        from segany.data.coco import CocoInstances

        return CocoInstances(root, for_training=for_training)
    if (root / "groundtruth_png").is_dir():
        from segany.data.bsds import BSDSRegions

        return BSDSRegions(root, for_training=for_training)
    first_child = next((p for p in sorted(root.iterdir()) if p.is_dir()), None)
    if (root / "stage1_train").is_dir() or (
        first_child is not None and (first_child / "images").is_dir() and (first_child / "masks").is_dir()
    ):
        from segany.data.dsb import DSB2018

        return DSB2018(root)
    if (root / "regions.json").is_file() and (root / "regions").is_dir():
        from segany.data.msrc import MSRCRegions

        return MSRCRegions(root)
    if (root / "labels").is_dir() and (root / "label_list.txt").is_file():
        from segany.data.ccp import CCPParts

        return CCPParts(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        from segany.data.folders import MaskFolder

        return MaskFolder(root)
    if any(root.glob("*.json")):
        return SA1BFolder(root)
    raise ValueError(f"{root}: unrecognised dataset layout (see segany.data for the supported ones)")


class MixedDataset:
    """Map-style training dataset drawing from several sources.

    ``[i]`` is deterministic in ``(seed, epoch, i)`` (call :meth:`set_epoch` each epoch), so DataLoader workers
    agree and a resumed run replays the same items. Each item: masks covering more than ``max_mask_fraction`` of
    the image are dropped (SAM paper), then the augmentation (if any) runs with a random copy-paste partner.

    Arguments:
      sources: readers (or anything with ``len`` and ``[i] -> Sample``).
      weights: relative sampling weight per source; None walks through the concatenation of all sources.
      length: items per epoch (default: total number of source items).
      augment_cfg: None for no augmentation (original sizes).
      min_masks: an item with fewer masks after filtering is redrawn (up to ``max_redraws`` times).
      seed: base seed.
    """

    def __init__(
        self,
        sources: Sequence[SampleSource],
        *,
        weights: Sequence[float] | None = None,
        length: int | None = None,
        augment_cfg: AugmentConfig | None = None,
        max_mask_fraction: float = 0.9,
        min_masks: int = 1,
        max_redraws: int = 10,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("MixedDataset needs at least one source")
        self.sources = list(sources)
        sizes = np.array([len(s) for s in self.sources], dtype=np.int64)
        if (sizes == 0).any():
            raise ValueError(f"empty source(s) at position {np.flatnonzero(sizes == 0).tolist()}")
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        if weights is None:
            self.p = sizes / sizes.sum()
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.sources),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(self.sources)} non-negative numbers, not all 0; got {weights}"
                )
            self.p = w / w.sum()
        self.weighted = weights is not None
        self.length = int(length if length is not None else sizes.sum())
        self.augment_cfg = augment_cfg
        self.max_mask_fraction = max_mask_fraction
        self.min_masks = min_masks
        self.max_redraws = max_redraws
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _draw(self, rng: np.random.Generator) -> tuple[int, int]:
        s = int(rng.choice(len(self.sources), p=self.p))
        return s, int(rng.integers(len(self.sources[s])))

    def _load(self, s: int, j: int) -> Sample:
        return drop_large_masks(self.sources[s][j], self.max_mask_fraction)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.weighted or self.length != self._offsets[-1]:
            s, j = self._draw(rng)
        else:
            s = int(np.searchsorted(self._offsets, index, side="right") - 1)
            j = index - int(self._offsets[s])
        sample = self._load(s, j)
        for _ in range(self.max_redraws):
            if len(sample.masks) >= self.min_masks:
                break
            sample = self._load(*self._draw(rng))
        if self.augment_cfg is None:
            return sample

        def partner() -> Sample:  # loaded only if the copy-paste coin says so
            return self._load(*self._draw(rng))

        return augment_sample(sample, rng, self.augment_cfg, partner)
