"""BSDS edge benchmark known answers, edge thinning, Canny baseline, and SAM edge maps on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from paths import DATA

from segany.evaluate import edges
from segany.evaluate.baselines import canny_soft_edges

BSDS = DATA / "bsds500"


def rectangle_boundary(
    h: int = 40, w: int = 60, y0: int = 10, x0: int = 15, y1: int = 30, x1: int = 45
) -> np.ndarray:
    """Four one-pixel sides of a rectangle without its corners (thinning would take corner pixels away)."""
    b = np.zeros((h, w), bool)
    b[y0, x0 + 1 : x1] = b[y1, x0 + 1 : x1] = True
    b[y0 + 1 : y1, x0] = b[y0 + 1 : y1, x1] = True
    return b


def test_correspond_pixels_is_one_to_one_within_distance():
    gt = np.zeros((20, 20), bool)
    gt[10, 5:15] = True
    near = np.roll(gt, 1, axis=0)  # 1 px away: all match
    mp, mg = edges.correspond_pixels(near, gt, max_dist=1.5)
    assert mp.sum() == mg.sum() == 10
    far = np.roll(gt, 5, axis=0)
    mp, mg = edges.correspond_pixels(far, gt, max_dist=1.5)
    assert mp.sum() == mg.sum() == 0
    double = near | gt  # 20 predicted pixels, 10 ground-truth pixels: only 10 can be matched
    mp, mg = edges.correspond_pixels(double, gt, max_dist=1.5)
    assert mp.sum() == 10 and mg.sum() == 10


def test_ground_truth_map_scores_1_and_empty_map_0():
    gt = rectangle_boundary()
    counts = edges.evaluate_edge_image(gt.astype(float), [gt])
    s = edges.summarize_edges([counts, counts])
    assert s["ods"] == pytest.approx(1.0) and s["ois"] == pytest.approx(1.0)
    assert s["r50"] == pytest.approx(1.0)
    empty = edges.summarize_edges([edges.evaluate_edge_image(np.zeros(gt.shape), [gt])])
    assert empty["ods"] == 0.0 and empty["ois"] == 0.0 and empty["ap"] == 0.0


def test_shifted_and_partial_maps_have_computed_scores():
    gt = rectangle_boundary()
    n = gt.sum()
    # half of the boundary, at full strength: P = 1, R = |half| / |gt|
    half = gt.copy()
    half[:, 31:] = False
    s = edges.summarize_edges([edges.evaluate_edge_image(half.astype(float), [gt])])
    r = half.sum() / n
    assert s["ods"] == pytest.approx(2 * r / (1 + r), abs=1e-6)
    # a second annotator that drew nothing lowers nothing in precision but adds no recall pixels
    s2 = edges.summarize_edges([edges.evaluate_edge_image(gt.astype(float), [gt, np.zeros_like(gt)])])
    assert s2["ods"] == pytest.approx(1.0)
    # 0.0075 x diagonal of a 40x60 image is 0.54 px: after a 1 px shift to the right only the horizontal sides
    # still overlap themselves (28 of 29 pixels each): P = R = 56 / 96
    shifted = np.roll(gt, 1, axis=1).astype(float)
    s3 = edges.summarize_edges([edges.evaluate_edge_image(shifted, [gt])])
    assert s3["ods"] == pytest.approx(56 / 96)


def test_two_level_map_gives_a_pr_curve_with_ap():
    gt = rectangle_boundary()
    soft = np.zeros(gt.shape)
    soft[gt] = 0.9
    noise = np.zeros_like(gt)
    noise[2, 2:50:3] = True  # isolated false edges at low strength
    soft[noise] = 0.3
    s = edges.summarize_edges([edges.evaluate_edge_image(soft, [gt])])
    p_low = gt.sum() / (gt.sum() + noise.sum())
    assert s["precision"][0] == pytest.approx(p_low) and s["recall"][0] == pytest.approx(1.0)
    assert s["ods"] == pytest.approx(1.0) and s["ods_threshold"] > 0.3
    # BSDS AP: recall values {0 (nothing above 0.9: P counted as 0), 1 (best P = 1)}, interpolated on 0:0.01:1
    assert s["ap"] == pytest.approx(0.505)


def test_real_bsds_image_union_of_annotators_is_near_1():
    image_id = "100007"
    folder = BSDS / "groundtruth_png" / "test" / "boundaries"
    if not folder.is_dir():
        pytest.skip("BSDS500 not available")
    from segany.data.bsds import BSDSEdges

    ds = BSDSEdges(BSDS, split="test")
    sample = ds[ds.ids.index(image_id)]
    union = sample.boundaries.any(axis=0).astype(float)
    s = edges.summarize_edges([edges.evaluate_edge_image(union, list(sample.boundaries))])
    # thinning the union of five annotators merges nearby parallel boundaries: near, not exactly, 1
    assert 0.99 < s["ods"] <= 1.0


def test_edge_nms_thins_a_blurred_line():
    edge = np.zeros((30, 30), np.float32)
    for d, v in ((-2, 0.2), (-1, 0.6), (0, 1.0), (1, 0.6), (2, 0.2)):
        edge[:, 15 + d] = v
    thin = edges.edge_nms(edge)
    rows = thin[8:22]
    assert np.all(rows[:, 15] == 1.0)
    assert np.count_nonzero(rows) == rows.shape[0]  # one pixel per row survives
    assert thin[0].max() == 0.0  # faded at the image border


def test_canny_soft_edges_range_and_thinness():
    image = np.zeros((40, 50, 3), np.uint8)
    image[:, 25:] = 200
    soft = canny_soft_edges(image)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() == pytest.approx(1.0)
    strong = soft > 0.5
    assert strong[:, 20:30].any() and not strong[:, :15].any()
    assert strong[5:35].sum(axis=1).max() <= 2


def test_sam_edge_map_on_tiny_model():
    from segany.build import load_model
    from segany.predictor import SamPredictor

    predictor = SamPredictor(load_model("tiny"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 56, 3)).astype(np.uint8)
    edge = edges.sam_edge_map(predictor, image, points_per_side=3, thin=False)
    assert edge.shape == (40, 56) and edge.dtype == np.float32
    assert edge.min() >= 0 and edge.max() <= 1.0
    assert edge.max() == pytest.approx(1.0) or edge.max() == 0.0  # normalised (or no mask at all)


def test_outer_boundary_ignores_holes_and_image_border():
    ring = np.zeros((20, 20), bool)
    ring[4:16, 4:16] = True
    ring[8:12, 8:12] = False  # a hole: its boundary is not an outer boundary
    band = edges.outer_boundary(ring)
    assert band[3, 10] and band[4, 10] and not band[5, 10] and not band[2, 10]  # one pixel each side
    assert not band[8:12, 8:12].any() and not band[7, 10]
    full = np.zeros((10, 10), bool)
    full[:, :5] = True  # touches three image borders: only the inner edge is a boundary
    band = edges.outer_boundary(full)
    assert band[:, 4:6].all() and not band[:, :4].any() and not band[:, 6:].any()


def test_mask_edge_responses_sit_on_the_probability_step():
    logits = np.full((30, 40), -8.0, np.float32)
    logits[10:20, 12:30] = 8.0
    box, idx, val = edges.mask_edge_responses(logits, logits > 0)
    assert box == [12.0, 10.0, 29.0, 19.0]
    ys, xs = np.unravel_index(idx, logits.shape)
    assert ys.min() == 9 and ys.max() == 20 and xs.min() == 11 and xs.max() == 30
    # on a straight stretch of the left side the Sobel x response is 4 x (p(x+1) - p(x-1)); y response is 0
    mid_left = val[(ys == 15) & (xs == 11)]
    assert mid_left == pytest.approx(4 * (1 / (1 + np.exp(-8)) - 1 / (1 + np.exp(8))), rel=1e-4)
