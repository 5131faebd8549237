"""Classical baselines run next to the model: GrabCut from the box (clicks) and Canny (edges)."""

from __future__ import annotations

import cv2
import numpy as np

GRABCUT_ITERATIONS = 5


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight inclusive box ``(x0, y0, x1, y1)`` of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask is empty: it has no box")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def grabcut_from_box(
    image: np.ndarray, box: tuple[int, int, int, int], iterations: int = GRABCUT_ITERATIONS, seed: int = 0
) -> np.ndarray:
    """OpenCV GrabCut initialised with a box (``GC_INIT_WITH_RECT``); returns an ``HxW`` bool mask.

    ``image`` is ``HxWx3`` uint8 RGB, ``box`` an inclusive ``(x0, y0, x1, y1)``. Pixels outside the box are
    definite background. OpenCV's GMM initialisation uses k-means with its global RNG, so the RNG is seeded for
    reproducible numbers. When the box covers the whole image there are no background samples and GrabCut cannot
    run; the box itself is returned then.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be HxWx3 uint8")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w - 1, x1), min(h - 1, y1)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {box} does not overlap the {w}x{h} image")
    rect_mask = np.zeros((h, w), dtype=bool)
    rect_mask[y0 : y1 + 1, x0 : x1 + 1] = True
    if rect_mask.all():
        return rect_mask
    cv2.setRNGSeed(seed)
    labels = np.zeros((h, w), dtype=np.uint8)
    bgd = np.zeros((1, 65), dtype=np.float64)
    fgd = np.zeros((1, 65), dtype=np.float64)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    try:
        cv2.grabCut(
            bgr, labels, (x0, y0, x1 - x0 + 1, y1 - y0 + 1), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT
        )
    except cv2.error:  # degenerate colour statistics (e.g. a constant image): fall back to the box
        return rect_mask
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


CANNY_SIGMA = 2.0
CANNY_LEVELS = 64


def canny_soft_edges(image: np.ndarray, sigma: float = CANNY_SIGMA, levels: int = CANNY_LEVELS) -> np.ndarray:
    """A soft Canny edge map in [0, 1] so that Canny can be scored over thresholds like any edge detector.

    Canny gives a binary map per (low, high) threshold pair; a pixel's strength here is the highest of ``levels``
    evenly spaced high thresholds (low = 0.4 x high, L2 gradient, Gaussian pre-smoothing ``sigma``) at which
    Canny still marks it. Its edges are one pixel wide already (Canny's own non-maximum suppression).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be HxWx3")
    gray = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    smooth = cv2.GaussianBlur(gray, (0, 0), sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    top = float(np.sqrt(gx**2 + gy**2).max())
    soft = np.zeros(gray.shape, dtype=np.float32)
    for i in range(1, levels + 1):
        high = top * i / (levels + 1)
        edges = cv2.Canny(smooth, 0.4 * high, high, apertureSize=3, L2gradient=True) > 0
        soft[edges] = i / levels
    return soft
