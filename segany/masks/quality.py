"""Mask quality measures and clean-up used to filter automatically generated masks."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["fill_small_components", "remove_small_regions", "stability_score"]


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks binarised at ``mask_threshold + offset`` and ``mask_threshold - offset``.

    The high-threshold mask is contained in the low-threshold one, so the IoU is the ratio of their areas; a
    mask whose logits are steep around the threshold scores close to 1. Pixel counts are exact integers (int32),
    so the score equals the official one bit for bit; an all-below mask gives NaN (0/0) as the official does,
    and NaN never passes a threshold.

    Arguments:
      logits: ``[..., H, W]`` float mask logits.

    Returns:
      ``[...]`` float32 scores.
    """
    inter = (logits > (mask_threshold + offset)).sum(dim=(-2, -1), dtype=torch.int32)
    union = (logits > (mask_threshold - offset)).sum(dim=(-2, -1), dtype=torch.int32)
    return inter / union


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill holes or drop islands smaller than ``area_thresh`` pixels (8-connectivity, OpenCV).

    ``"holes"`` fills background components (including ones touching the border) below the threshold;
    ``"islands"`` removes foreground components below it, keeping the largest one when all are small.

    Returns:
      The cleaned ``[H, W]`` bool mask and whether anything changed.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = (mask != fill_holes).astype(np.uint8)  # the components to inspect are set pixels of `working`
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the complement of `working`
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        # Set pixels: the original foreground (label 0 here) and the small holes.
        lut = np.zeros(n_labels, dtype=bool)
        lut[0] = True
        lut[small] = True
    else:
        lut = np.ones(n_labels, dtype=bool)
        lut[0] = False
        lut[small] = False
        if not lut.any():
            lut[int(np.argmax(sizes)) + 1] = True
    return lut[labels], True


def fill_small_components(logits: torch.Tensor, mask_threshold: float, max_area: float) -> torch.Tensor:
    """SAM 2's clean-up of low-res mask logits: small holes become foreground and small specks background.

    Components are 8-connected, found on the masks as given: background components (logits <= threshold) of at
    most ``max_area`` pixels get ``threshold + 10``, foreground components (> threshold) of at most ``max_area``
    get ``threshold - 10`` (SAM 2's image predictor with ``max_hole_area = max_sprinkle_area = max_area``, which
    its automatic generator sets to ``min_mask_region_area``). Unlike `remove_small_regions` the area bound is
    inclusive, it runs before upsampling, and a mask that is all specks loses them all.

    Arguments:
      logits: ``[K, h, w]`` float logits.

    Returns:
      ``[K, h, w]`` float32 logits (a new tensor).
    """
    import cv2

    out = logits.float().clone()
    fg_all = (logits > mask_threshold).cpu().numpy()
    for i, fg in enumerate(fg_all):
        for component, value in ((~fg, mask_threshold + 10.0), (fg, mask_threshold - 10.0)):
            n, labels, stats, _ = cv2.connectedComponentsWithStats(component.astype(np.uint8), connectivity=8)
            small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] <= max_area) + 1
            if small.size:
                where = torch.from_numpy(np.isin(labels, small)).to(out.device)
                out[i][where] = value
    return out
