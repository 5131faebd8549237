"""Graph-cut refinement of a predicted mask with the image's own colours.

A small network trained on a few hundred images groups pixels poorly: a corrective click fixes the pixels around
it, not the whole wrong segment. The image itself knows better which pixels belong together. This module re-solves
each mask as a binary labelling with one more source of evidence, the colours of the object and of its
surroundings in *this* image, and keeps the network's opinion in the same energy. It is the hybrid of Xu et al.,
"Deep Interactive Object Selection" (CVPR 2016): network probabilities plus a graph cut, here with GrabCut's
colour models and contrast-sensitive smoothness (Rother et al. 2004), solved exactly by max-flow (PyMaxflow).

Energy over the pixels of a crop around the object, label ``L_p`` in {object, background}::

    U_p(object)     = -a * log sigmoid(z_p)  - b * log P(c_p | object colours)
    U_p(background) = -a * log sigmoid(-z_p) - b * log P(c_p | background colours)
    V_pq            = gamma * exp(-beta * |c_p - c_q|^2)   for 4-neighbours with different labels

``z`` is the network's mask logit, ``c`` the RGB colour; the colour models are smoothed 3-D histograms of the
current object and background pixels, re-estimated from the new labelling ``iterations`` times. Clicks are hard
constraints (a disk around each), and so is the crop's border inside the image (background), as GrabCut's box.

Only boolean masks from ``SamPredictor.predict`` go through it; logits, the automatic generator and the browser
decoder are the network's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import maxflow
import numpy as np
from scipy import ndimage

_MIN_PIXELS = 20  # fewer object or background pixels than this: no colour model can be fitted


@dataclass(frozen=True)
class GraphCutRefiner:
    """Refines a mask logit map with the image's colours (see the module docstring for the energy).

    Attributes:
        network_weight: ``a``, weight of the network's log-probabilities.
        colour_weight: ``b``, weight of the colour models' log-likelihoods.
        smoothness: ``gamma``, weight of the contrast-sensitive boundary term.
        iterations: colour-model re-estimations (each one graph cut).
        colour_bins: histogram bins per RGB channel.
        margin: the crop around the object (mask and positive clicks) grows by this fraction of its size per side,
            plus 10 pixels.
        seed_radius: radius in pixels of the hard-constraint disk around each click.
        max_pixels: larger crops are solved at a reduced scale and the result resized back (bounds the time).
    """

    network_weight: float = 0.5
    colour_weight: float = 1.0
    smoothness: float = 30.0
    iterations: int = 2
    colour_bins: int = 16
    margin: float = 0.25
    seed_radius: int = 5
    max_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if self.network_weight < 0 or self.colour_weight < 0 or self.smoothness < 0:
            raise ValueError("graph-cut weights must be >= 0")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if not 2 <= self.colour_bins <= 64 or 256 % self.colour_bins:
            raise ValueError("colour_bins must divide 256 and lie in [2, 64]")
        if self.margin < 0 or self.seed_radius < 0 or self.max_pixels < 1024:
            raise ValueError("margin and seed_radius must be >= 0, max_pixels >= 1024")

    def __call__(
        self,
        image: np.ndarray,
        logits: np.ndarray,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> np.ndarray:
        """The refined ``HxW`` bool mask.

        Arguments:
            image: ``HxWx3`` uint8 RGB, the image the logits belong to.
            logits: ``HxW`` mask logits at the image's resolution (``predict(..., return_logits=True)``).
            point_coords: ``Nx2`` clicks ``(x, y)`` in image pixels, or None.
            point_labels: ``N`` labels, 1 object and 0 background (other labels are ignored).
            box: optional ``(x0, y0, x1, y1)``; the crop then covers it too.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
        if logits.shape != image.shape[:2]:
            raise ValueError(f"logits {logits.shape} do not match the image {image.shape[:2]}")
        H, W = logits.shape
        coords = np.zeros((0, 2)) if point_coords is None else np.asarray(point_coords, dtype=np.float64)
        labels = (
            np.zeros((0,), dtype=np.int64)
            if point_labels is None
            else np.asarray(point_labels).astype(np.int64)
        )
        if coords.shape != (labels.shape[0], 2):
            raise ValueError(f"point_coords {coords.shape} and point_labels {labels.shape} do not match")
        network = logits > 0

        crop = self._crop(network, coords[labels == 1], box, H, W)
        if crop is None:
            return network
        x0, y0, x1, y1 = crop
        rgb = image[y0:y1, x0:x1]
        z: np.ndarray = logits[y0:y1, x0:x1].astype(np.float32)
        pts = coords - (x0, y0)
        scale = min(1.0, float(np.sqrt(self.max_pixels / z.size)))
        if scale < 1.0:
            size = (max(1, round(z.shape[1] * scale)), max(1, round(z.shape[0] * scale)))
            rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            z = np.asarray(cv2.resize(z, size, interpolation=cv2.INTER_LINEAR))
            pts = pts * scale
        border = (x0 > 0, y0 > 0, x1 < W, y1 < H)
        solved = self._solve(rgb, z, pts, labels, border, max(1, round(self.seed_radius * scale)))
        if solved is None:
            return network
        if scale < 1.0:
            solved = (
                cv2.resize(solved.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                > 0.5
            )
        out = np.zeros_like(network)
        out[y0:y1, x0:x1] = solved
        return out

    def _crop(
        self, network: np.ndarray, positives: np.ndarray, box: np.ndarray | None, H: int, W: int
    ) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)`` (exclusive ends) around the mask, positive clicks and box; None if all empty."""
        ys, xs = np.nonzero(network.any(axis=1))[0], np.nonzero(network.any(axis=0))[0]
        lo_x = [xs[0]] if xs.size else []
        hi_x = [xs[-1]] if xs.size else []
        lo_y = [ys[0]] if ys.size else []
        hi_y = [ys[-1]] if ys.size else []
        if positives.size:
            lo_x.append(positives[:, 0].min())
            hi_x.append(positives[:, 0].max())
            lo_y.append(positives[:, 1].min())
            hi_y.append(positives[:, 1].max())
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(4)
            lo_x.append(b[0])
            lo_y.append(b[1])
            hi_x.append(b[2])
            hi_y.append(b[3])
        if not lo_x:
            return None
        bx0, bx1 = float(min(lo_x)), float(max(hi_x))
        by0, by1 = float(min(lo_y)), float(max(hi_y))
        mx = (bx1 - bx0 + 1) * self.margin + 10
        my = (by1 - by0 + 1) * self.margin + 10
        x0, y0 = max(0, int(bx0 - mx)), max(0, int(by0 - my))
        x1, y1 = min(W, int(bx1 + mx) + 1), min(H, int(by1 + my) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        return x0, y0, x1, y1

    def _solve(
        self,
        rgb: np.ndarray,
        z: np.ndarray,
        pts: np.ndarray,
        labels: np.ndarray,
        border: tuple[bool, bool, bool, bool],
        radius: int,
    ) -> np.ndarray | None:
        h, w = z.shape
        hard_fg = np.zeros((h, w), np.uint8)
        hard_bg = np.zeros((h, w), np.uint8)
        for (x, y), lab in zip(pts, labels, strict=True):
            if lab in (0, 1):
                cv2.circle(hard_fg if lab == 1 else hard_bg, (int(x), int(y)), radius, 1, -1)
        left, top, right, bottom = border
        edge = np.zeros((h, w), bool)
        edge[:, 0] |= left
        edge[0, :] |= top
        edge[:, -1] |= right
        edge[-1, :] |= bottom
        fg_seed = hard_fg.astype(bool)
        bg_seed = (hard_bg.astype(bool) | edge) & ~fg_seed

        # Network term: -log sigmoid(+-z), computed stably.
        net_fg = self.network_weight * np.logaddexp(0.0, -z)
        net_bg = self.network_weight * np.logaddexp(0.0, z)
        # Contrast-sensitive smoothness (GrabCut's beta: the inverse of twice the mean squared colour step).
        c = rgb.astype(np.float32)
        dx = ((c[:, 1:] - c[:, :-1]) ** 2).sum(-1)
        dy = ((c[1:] - c[:-1]) ** 2).sum(-1)
        mean_step = (dx.sum() + dy.sum()) / max(1, dx.size + dy.size)
        beta = 1.0 / (2.0 * max(float(mean_step), 1e-6))
        right_w = np.zeros((h, w), np.float64)
        right_w[:, :-1] = self.smoothness * np.exp(-beta * dx)
        down_w = np.zeros((h, w), np.float64)
        down_w[:-1] = self.smoothness * np.exp(-beta * dy)

        bins = self.colour_bins
        q = (rgb // (256 // bins)).astype(np.int64)
        colour_index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        big = 1e9
        current = (z > 0) | fg_seed
        current &= ~bg_seed
        for step in range(self.iterations):
            n_fg = int(current.sum())
            if n_fg < _MIN_PIXELS or current.size - n_fg < _MIN_PIXELS:
                return None if step == 0 else current
            col_fg = -self.colour_weight * _log_histogram(colour_index, current, bins)
            col_bg = -self.colour_weight * _log_histogram(colour_index, ~current, bins)
            cost_fg = np.where(bg_seed, big, net_fg + col_fg)
            cost_bg = np.where(fg_seed, big, net_bg + col_bg)
            graph = maxflow.Graph[float]()
            nodes = graph.add_grid_nodes((h, w))
            graph.add_grid_edges(nodes, weights=right_w, structure=_RIGHT, symmetric=True)
            graph.add_grid_edges(nodes, weights=down_w, structure=_DOWN, symmetric=True)
            # Source side = object: a source capacity is paid when the pixel ends up background, and vice versa.
            graph.add_grid_tedges(nodes, cost_bg, cost_fg)
            graph.maxflow()
            current = ~graph.get_grid_segments(nodes)
        return current


_RIGHT = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]])
_DOWN = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]])


def _log_histogram(colour_index: np.ndarray, select: np.ndarray, bins: int) -> np.ndarray:
    """Per-pixel log-likelihood under a smoothed, Laplace-corrected colour histogram of the selected pixels."""
    counts = np.bincount(colour_index[select], minlength=bins**3).astype(np.float64).reshape(bins, bins, bins)
    counts = ndimage.gaussian_filter(counts, sigma=1.0, mode="constant")
    prob = (counts + 1.0) / (counts.sum() + bins**3)
    return np.log(prob).reshape(-1)[colour_index]
