"""Zero-shot edge detection (paper §7.2): SAM edge maps and the standard BSDS boundary benchmark.

Edge map (paper App. D.2): a 16x16 grid of single foreground points, 3 masks each (768 masks), no predicted-IoU or
stability filter, box NMS (threshold 0.7 on predicted IoU, as the automatic generator's within-crop NMS; the paper
does not give its value), Sobel magnitude of each *unthresholded* mask probability map (sigmoid of the logits),
kept only on the mask's outer boundary (the 3x3 morphological gradient of the logit>0 mask with its holes filled,
so hole boundaries do not count), pixel-wise max over masks, normalised to [0, 1], thinned by the orientation-based
edge NMS of Dollár & Zitnick's structured-edge code (``edge_nms``).

Benchmark (Martin et al.'s BSDS code, as in ``evaluation_bdry_image``/``collect_eval_bdry`` and Dollár's
``edgesEvalImg``): for each of 99 thresholds ``linspace(0.01, 0.99, 99)`` the map is binarised (``>= t``) and
thinned to one pixel (``skimage.morphology.thin``, the same algorithm as MATLAB ``bwmorph(..., 'thin', inf)``), then
matched to each annotator's boundary map with a one-to-one matching of pixels at most ``0.0075 x diagonal``
apart. A predicted pixel counts as correct if any annotator matches it; recall sums matched and total boundary
pixels over annotators. ODS is the best (interpolated) F of counts summed over the dataset, OIS sums each image's
counts at its own best threshold, AP is the mean interpolated precision at recall 0:0.01:1, R50 the recall at 50 %
precision.

Matching: the original uses Goldberg's CSA min-cost assignment on the sparse graph of pixel pairs within the
distance (cost = distance) plus outlier edges of cost 100 x max distance. Here the same objective is solved exactly:
the pair graph is split into connected components and each is a dense ``scipy.optimize.linear_sum_assignment``
(cost = distance, non-pairs cost the outlier cost). Because the outlier cost dominates, both give (in practice) maximum-
cardinality matchings; CSA is epsilon-optimal, so counts can differ from the original only where CSA stops short of
the optimum.
(``scipy.sparse.csgraph.maximum_bipartite_matching`` was tried first and is pathologically slow on these graphs.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from segany.masks.grid import build_point_grid

NUM_THRESHOLDS = 99
MAX_DIST = 0.0075
EDGE_POINTS_PER_SIDE = 16
EDGE_NMS_THRESH = 0.7


# --------------------------------------------------------------------------------------------------------------
# SAM edge maps


@torch.no_grad()
def sam_edge_map(
    predictor: Any,
    image: np.ndarray,
    points_per_side: int = EDGE_POINTS_PER_SIDE,
    nms_thresh: float = EDGE_NMS_THRESH,
    points_per_batch: int = 64,
    thin: bool = True,
) -> np.ndarray:
    """SAM's zero-shot edge map of an ``HxWx3`` uint8 RGB image, ``HxW`` float32 in [0, 1].

    ``predictor`` is a ``SamPredictor`` (official API: ``set_image``, ``transform``, ``predict_torch``).
    """
    from torchvision.ops import nms

    h, w = image.shape[:2]
    predictor.set_image(image)
    points = build_point_grid(points_per_side) * np.array([w, h])  # the automatic generator's grid

    boxes, scores, sparse_edges = [], [], []
    for start in range(0, len(points), points_per_batch):
        batch = torch.as_tensor(points[start : start + points_per_batch], dtype=torch.float32)
        coords = predictor.transform.apply_coords_torch(batch, (h, w)).to(predictor.device)
        labels = torch.ones(len(batch), dtype=torch.int64, device=predictor.device)
        logits, iou_pred, _ = predictor.predict_torch(
            coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True
        )
        logits = logits.flatten(0, 1).float()  # N x H x W
        iou_pred = iou_pred.flatten().float()
        binary = logits > 0
        keep = binary.flatten(1).any(dim=1)
        logits, iou_pred, binary = logits[keep], iou_pred[keep], binary[keep]
        if len(logits) == 0:
            continue
        logits_np = logits.cpu().numpy()
        binary_np = binary.cpu().numpy()
        for i in range(len(binary_np)):
            box, idx, val = mask_edge_responses(logits_np[i], binary_np[i])
            sparse_edges.append((idx, val))
            boxes.append(box)
        scores.append(iou_pred.cpu())
    edge = np.zeros(h * w, dtype=np.float32)
    if sparse_edges:
        keep_idx = nms(torch.tensor(np.array(boxes), dtype=torch.float32), torch.cat(scores), nms_thresh)
        for i in keep_idx.tolist():
            idx, val = sparse_edges[i]
            edge[idx] = np.maximum(edge[idx], val)
    edge = edge.reshape(h, w)
    top = float(edge.max())
    if top > 0:
        edge /= top
    return edge_nms(edge) if thin else edge


def mask_edge_responses(logits: np.ndarray, mask: np.ndarray) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Box (XYXY, inclusive) of a non-empty mask and its edge responses as flat indices and values.

    Response = Sobel magnitude of ``sigmoid(logits)``, kept on :func:`outer_boundary` pixels only. Work is done on
    the mask's box plus a 2-pixel margin: every boundary pixel and its 3x3 Sobel neighbourhood lie inside it.
    """
    import cv2

    h, w = mask.shape
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    box = [float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])]
    y0, y1 = max(int(ys[0]) - 2, 0), min(int(ys[-1]) + 3, h)
    x0, x1 = max(int(xs[0]) - 2, 0), min(int(xs[-1]) + 3, w)
    band = outer_boundary(mask[y0:y1, x0:x1])
    prob = 1.0 / (1.0 + np.exp(-logits[y0:y1, x0:x1].astype(np.float32)))
    gx = cv2.Sobel(prob, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(prob, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    by, bx = np.nonzero(band)
    values = np.sqrt(gx[by, bx] ** 2 + gy[by, bx] ** 2)
    return box, (by + y0) * w + (bx + x0), values


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the array border filled (4-connected)."""
    import cv2

    n, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    if n - 1 == np.count_nonzero(border):  # every background component reaches the border: no holes
        return mask
    return mask | (~mask & ~np.isin(labels, border))


def outer_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the mask's outer boundary: the 3x3 morphological gradient of the hole-filled
    mask, so hole boundaries do not count; outside the array counts as neither (no boundary at the border)."""
    import cv2

    filled = fill_holes(mask.astype(bool)).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    # OpenCV's default border for dilate/erode never wins the max/min: the array border is not a boundary
    return cv2.dilate(filled, kernel) > cv2.erode(filled, kernel)


# --------------------------------------------------------------------------------------------------------------
# Edge thinning (orientation-based non-maximum suppression)


def edge_orientation(edge: np.ndarray) -> np.ndarray:
    """Edge normal orientation in [0, pi) from second derivatives of the triangle-smoothed map (Dollár's code)."""
    tri = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], dtype=np.float64) / 25.0  # convTri(E, 4)
    smooth = ndimage.convolve1d(
        ndimage.convolve1d(edge.astype(np.float64), tri, axis=0, mode="reflect"), tri, axis=1, mode="reflect"
    )
    oy, ox = np.gradient(smooth)
    oxx = np.gradient(ox, axis=1)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(
    edge: np.ndarray,
    orientation: np.ndarray | None = None,
    radius: int = 1,
    border: int = 5,
    margin: float = 1.01,
) -> np.ndarray:
    """Suppress pixels not maximal along the edge normal; fade responses within ``border`` px of the image edge.

    Same rule as ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``: a pixel survives if ``margin * E`` is not below the
    bilinearly interpolated map at distance ``1..radius`` on either side along its normal.
    """
    edge = np.asarray(edge, dtype=np.float32)
    if edge.ndim != 2:
        raise ValueError("edge map must be 2-D")
    o = edge_orientation(edge) if orientation is None else orientation
    h, w = edge.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cos_o, sin_o = np.cos(o), np.sin(o)
    out = edge.copy()
    scaled = edge * margin
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        neighbour = _bilinear(edge, xs + d * cos_o, ys + d * sin_o)
        out[scaled < neighbour] = 0
    s = min(border, w // 2, h // 2)
    for i in range(s):
        f = i / s
        out[:, i] *= f
        out[:, w - 1 - i] *= f
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    dx, dy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - dx) * (1 - dy)
        + img[y0, x0 + 1] * dx * (1 - dy)
        + img[y0 + 1, x0] * (1 - dx) * dy
        + img[y0 + 1, x0 + 1] * dx * dy
    )


# --------------------------------------------------------------------------------------------------------------
# BSDS benchmark


def thresholds(n: int = NUM_THRESHOLDS) -> np.ndarray:
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


@dataclass
class EdgeCounts:
    """Per-threshold counts of one image: matched/total boundary pixels (recall) and predicted pixels (precision)."""

    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray


def correspond_pixels(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of boolean edge maps within ``max_dist`` pixels; returns the matched pixels of each."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    mp, mg = _match(p, g, cKDTree(g) if len(g) else None, max_dist)
    matched_pred = np.zeros(pred.shape, dtype=bool)
    matched_gt = np.zeros(gt.shape, dtype=bool)
    matched_pred[p[mp, 0], p[mp, 1]] = True
    matched_gt[g[mg, 0], g[mg, 1]] = True
    return matched_pred, matched_gt


def _match(
    p: np.ndarray, g: np.ndarray, g_tree: cKDTree | None, max_dist: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of matched rows of ``p`` and ``g`` (``K x 2`` pixel arrays) under the BSDS matching objective.

    Pairs within ``max_dist`` cost their distance, leaving a pixel unmatched costs ``100 x max_dist`` (the CSA
    outlier cost). The pair graph splits into small connected components (pixels near one stretch of contour), and
    each is solved exactly with ``scipy.optimize.linear_sum_assignment``.
    """
    if len(p) == 0 or g_tree is None or len(g) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = cKDTree(p).sparse_distance_matrix(g_tree, max_dist, output_type="ndarray")
    i, j, dist = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    if len(i) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n, m = len(p), len(g)
    adjacency = coo_matrix((np.ones(len(i)), (i, n + j)), shape=(n + m, n + m))
    n_comp, label = connected_components(adjacency, directed=False)
    order = np.argsort(label[i], kind="stable")
    i, j, dist = i[order], j[order], dist[order]
    bounds = np.searchsorted(label[i], np.arange(n_comp + 1))
    outlier = 100.0 * max_dist
    rows_out, cols_out = [], []
    for c in range(n_comp):
        a, b = bounds[c], bounds[c + 1]
        if a == b:
            continue
        ci, cj = i[a:b], j[a:b]
        ru, ri = np.unique(ci, return_inverse=True)
        cu, cinv = np.unique(cj, return_inverse=True)
        cost = np.full((len(ru), len(cu)), outlier)
        cost[ri, cinv] = dist[a:b]
        rr, cc = linear_sum_assignment(cost)
        real = cost[rr, cc] < outlier
        rows_out.append(ru[rr[real]])
        cols_out.append(cu[cc[real]])
    return np.concatenate(rows_out), np.concatenate(cols_out)


def evaluate_edge_image(
    edge: np.ndarray, gts: list[np.ndarray], n_thresholds: int = NUM_THRESHOLDS, max_dist: float = MAX_DIST
) -> EdgeCounts:
    """Counts of one soft edge map (``HxW`` in [0, 1]) against each annotator's boolean boundary map."""
    from skimage.morphology import thin

    edge = np.asarray(edge, dtype=np.float64)
    if not gts:
        raise ValueError("at least one ground-truth boundary map is needed")
    for g in gts:
        if g.shape != edge.shape:
            raise ValueError(f"ground truth shape {g.shape} != edge map shape {edge.shape}")
    h, w = edge.shape
    radius = max_dist * float(np.hypot(h, w))
    thrs = thresholds(n_thresholds)
    counts = EdgeCounts(*(np.zeros(n_thresholds) for _ in range(4)))
    gt_pts = [np.argwhere(g) for g in gts]
    trees = [cKDTree(pts) if len(pts) else None for pts in gt_pts]
    total_gt = sum(len(pts) for pts in gt_pts)
    previous: np.ndarray | None = None
    for k, t in enumerate(thrs):
        bmap = edge >= t
        if previous is not None and np.array_equal(bmap, previous):  # same binary map: same counts
            for arr in (counts.cnt_r, counts.sum_r, counts.cnt_p, counts.sum_p):
                arr[k] = arr[k - 1]
            continue
        previous = bmap
        bthin = thin(bmap)
        p = np.argwhere(bthin)
        matched_any = np.zeros(len(p), dtype=bool)
        cnt_r = 0
        for pts, tree in zip(gt_pts, trees, strict=True):
            rows, _ = _match(p, pts, tree, radius)
            matched_any[rows] = True
            cnt_r += len(rows)
        counts.cnt_r[k] = cnt_r
        counts.sum_r[k] = total_gt
        counts.cnt_p[k] = np.count_nonzero(matched_any)
        counts.sum_p[k] = len(p)
    return counts


def _fmeasure(r: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    r, p = np.asarray(r, dtype=np.float64), np.asarray(p, dtype=np.float64)
    s = p + r
    return np.where(s > 0, 2 * p * r / np.where(s > 0, s, 1), 0.0)


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a / np.where(b == 0, 1, b)


def _best_f(thrs: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """BSDS ``maxF``: best F along the PR curve, linearly interpolated between neighbouring thresholds."""
    best = (float(thrs[0]), float(r[0]), float(p[0]), float(_fmeasure(r[0], p[0])))
    d = np.linspace(0, 1, 100)
    for i in range(1, len(thrs)):
        ti = thrs[i] * d + thrs[i - 1] * (1 - d)
        ri = r[i] * d + r[i - 1] * (1 - d)
        pi = p[i] * d + p[i - 1] * (1 - d)
        fi = _fmeasure(ri, pi)
        j = int(np.argmax(fi))
        if fi[j] > best[3]:
            best = (float(ti[j]), float(ri[j]), float(pi[j]), float(fi[j]))
    return best


def summarize_edges(per_image: list[EdgeCounts]) -> dict[str, Any]:
    """ODS, OIS, AP, R50 and the dataset PR curve from per-image counts."""
    if not per_image:
        raise ValueError("no images to summarize")
    n = len(per_image[0].cnt_r)
    thrs = thresholds(n)
    tot = [np.sum([getattr(c, f) for c in per_image], axis=0) for f in ("cnt_r", "sum_r", "cnt_p", "sum_p")]
    ois_counts = np.zeros(4)
    for c in per_image:
        f = _fmeasure(_ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p))
        ind = int(np.flatnonzero(f == f.max())[-1])
        ois_counts += [c.cnt_r[ind], c.sum_r[ind], c.cnt_p[ind], c.sum_p[ind]]
    r = _ratio(tot[0], tot[1])
    p = _ratio(tot[2], tot[3])
    ods_t, ods_r, ods_p, ods_f = _best_f(thrs, r, p)
    ois_f = float(_fmeasure(_ratio(ois_counts[0], ois_counts[1]), _ratio(ois_counts[2], ois_counts[3])))
    return {
        "num_images": len(per_image),
        "ods": ods_f,
        "ods_threshold": ods_t,
        "ods_recall": ods_r,
        "ods_precision": ods_p,
        "ois": ois_f,
        "ap": _average_precision(r, p),
        "r50": _recall_at_half_precision(r, p),
        "thresholds": thrs.tolist(),
        "recall": r.tolist(),
        "precision": p.tolist(),
    }


def _average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """BSDS ``Area_PR``: precision interpolated on recall 0:0.01:1 (0 outside the curve), summed x 0.01."""
    ru, first = np.unique(r[::-1], return_index=True)  # keep the highest-threshold point per recall value
    pu = p[::-1][first]
    if len(ru) < 2:
        return 0.0
    grid = np.linspace(0, 1, 101)
    interp = np.interp(grid, ru, pu)
    interp[(grid < ru[0]) | (grid > ru[-1])] = 0.0
    return float(interp.sum() * 0.01)


def _recall_at_half_precision(r: np.ndarray, p: np.ndarray) -> float:
    """Recall at 50 % precision (or at the lowest precision, if all are above 50 %), as in ``edgesEvalDir``."""
    pu, first = np.unique(p, return_index=True)
    ru = r[first]
    target = max(float(pu[0]), 0.5)
    if target > pu[-1]:
        return float("nan")
    return float(np.interp(target, pu, ru))
