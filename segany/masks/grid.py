"""Point grids and crop windows for automatic mask generation."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["build_all_layer_point_grids", "build_point_grid", "generate_crop_boxes"]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``[n*n, 2]`` float64 (x, y) points in [0, 1]: cell centres of an n x n grid, row-major (x fastest)."""
    if n_per_side < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side}")
    side = np.linspace(0.5 / n_per_side, 1 - 0.5 / n_per_side, n_per_side)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop windows (XYXY ints) and their layer index: the whole image, then ``(2**i)**2`` overlapping windows.

    In layer i the windows overlap by ``overlap_ratio * short_side * 2 / 2**i`` pixels, so deeper layers zoom
    in further while keeping objects on a window border whole in a neighbouring window. Windows are listed
    column by column (x0 outer, y0 inner), the official order, which decides NMS tie-breaks.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + im_w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + im_h) / per_side)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers
