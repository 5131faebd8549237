"""Datasets for training and evaluation: readers that yield :class:`Sample` (image + instance masks), and the
augmentations and mixing that training applies on top.

Readers (all map-style: ``len(ds)``, ``ds[i] -> Sample``; numpy only):

* :class:`CocoInstances` (``coco``): COCO instances JSON via pycocotools.
* :class:`BSDSRegions` / :class:`BSDSEdges` (``bsds``): BSDS500 regions as instances; boundary maps for the edge
  benchmark.
* :class:`DSB2018` (``dsb``): nuclei folders, one PNG per nucleus.
* :class:`MSRCRegions` (``msrc``): MSRC-v2 labelled regions; :class:`CCPParts` (``ccp``): a person and its
  garment/part pieces (nested masks: SAM's whole/part ambiguity).
* :class:`MaskFolder` (``folders``): ``images/`` + ``masks/`` (GrabCut, Berkeley, and your own data; the format
  is documented in :mod:`segany.data.folders`).
* :class:`SA1BFolder` (``mixed``) over :mod:`segany.data.sa1b` files.
* :class:`ADE20KFolder` (``ade20k``): ADE20K images with their instance folders (visible parts), for evaluation.

Training: :class:`MixedDataset`, :func:`open_source`, :class:`AugmentConfig`, :func:`augment_sample` and the single
operations in :mod:`segany.data.augment`; :func:`drop_large_masks` (the paper's > 90 % filter).

Names are imported lazily, so ``import segany.data.sa1b`` does not pay for OpenCV or pycocotools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # real types for mypy; at run time the names come from __getattr__ below
    from segany.data.ade20k import ADE20KFolder
    from segany.data.augment import AugmentConfig, augment_sample
    from segany.data.bsds import BSDSEdges, BSDSRegions, EdgeSample
    from segany.data.ccp import CCPParts
    from segany.data.coco import CocoInstances
    from segany.data.dsb import DSB2018
    from segany.data.folders import MaskFolder
    from segany.data.mixed import MixedDataset, SA1BFolder, open_source
    from segany.data.msrc import MSRCRegions
    from segany.data.sample import Sample, drop_large_masks
    from segany.data.split import is_validation

_EXPORTS = {
    "ADE20KFolder": "ade20k",
    "Sample": "sample",
    "drop_large_masks": "sample",
    "CocoInstances": "coco",
    "BSDSRegions": "bsds",
    "BSDSEdges": "bsds",
    "EdgeSample": "bsds",
    "DSB2018": "dsb",
    "CCPParts": "ccp",
    "MSRCRegions": "msrc",
    "is_validation": "split",
    "MaskFolder": "folders",
    "AugmentConfig": "augment",
    "augment_sample": "augment",
    "MixedDataset": "mixed",
    "SA1BFolder": "mixed",
    "open_source": "mixed",
}

__all__ = [
    "ADE20KFolder",
    "AugmentConfig",
    "BSDSEdges",
    "BSDSRegions",
    "CCPParts",
    "CocoInstances",
    "DSB2018",
    "EdgeSample",
    "MSRCRegions",
    "MaskFolder",
    "MixedDataset",
    "SA1BFolder",
    "Sample",
    "augment_sample",
    "drop_large_masks",
    "is_validation",
    "open_source",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"segany.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'segany.data' has no attribute {name!r}")
