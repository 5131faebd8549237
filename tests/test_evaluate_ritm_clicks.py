"""The click protocol against an independent implementation of RITM's clicker (the benchmarks' standard).

``ritm_click`` below is RITM's ``Clicker._get_next_click`` (isegm/inference/clicker.py) written out afresh;
segany's `next_click` and `run_clicks` must choose the same clicks on random masks: ties, ignore bands, objects
touching the border, pixels clicked already. RITM calls ``cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)``,
whose float32 results split some exact ties by ~1e-6 (13.928389 and 13.928388 for two pixels both at sqrt(194));
the reference uses the exact transform (scipy), the protocol's definition, and checks OpenCV's against it.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from segany.evaluate.clicks import Click, next_click, run_clicks


def ritm_click(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, clicked: list[Click] | tuple = ()
) -> Click:
    not_ignore = np.ones_like(gt) if ignore is None else ~ignore
    not_clicked = np.ones(gt.shape)
    for c in clicked:
        not_clicked[c.y, c.x] = 0
    dts = []
    for region in (gt & ~pred & not_ignore, ~gt & pred & not_ignore):
        padded = np.pad(region, ((1, 1), (1, 1)), "constant")
        exact = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
        opencv = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        opencv = opencv[1:-1, 1:-1]
        np.testing.assert_allclose(opencv, exact, atol=1e-4)
        dts.append(exact * not_clicked)
    fn_dt, fp_dt = dts
    fn_max, fp_max = np.max(fn_dt), np.max(fp_dt)
    is_positive = fn_max > fp_max
    ys, xs = np.where(fn_dt == fn_max) if is_positive else np.where(fp_dt == fp_max)
    return Click(int(xs[0]), int(ys[0]), bool(is_positive))


def _blobs(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """Rectangles and discs, some running off the image (so touching its border)."""
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        y, x = int(rng.integers(-5, h + 5)), int(rng.integers(-5, w + 5))
        r = int(rng.integers(2, max(3, min(h, w) // 2)))
        if rng.random() < 0.5:
            m[max(0, y - r) : max(0, y + r), max(0, x - r) : max(0, x + r)] = True
        else:
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    return m


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A random (pred, gt, ignore): a perturbed, shifted or symmetric prediction (ties), maybe a 128-style band."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(12, 70, 2))
    gt = _blobs(rng, h, w, int(rng.integers(1, 4)))
    while not gt.any():
        gt = _blobs(rng, h, w, 1)
    kind = seed % 5
    if kind == 0:  # shifted: two strips of equal width, i.e. equal maxima (a tie)
        pred = np.roll(gt, int(rng.integers(1, 6)), axis=int(rng.integers(0, 2)))
    elif kind == 1:  # blobs added and removed
        pred = (gt | _blobs(rng, h, w, 2)) & ~_blobs(rng, h, w, 2)
    elif kind == 2:  # speckle: many single-pixel errors, all at distance 1 (ties everywhere)
        pred = gt ^ (rng.random((h, w)) < 0.05)
    elif kind == 3:  # an unrelated prediction
        pred = _blobs(rng, h, w, int(rng.integers(0, 3)))
    else:  # the first click: nothing predicted yet
        pred = np.zeros_like(gt)
    ignore = None
    if rng.random() < 0.5:  # GrabCut's band: a ring around the object's edge, neither object nor error
        grown = cv2.dilate(gt.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        shrunk = cv2.erode(gt.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        band = grown & ~shrunk
        if (gt & ~band).any():  # keep some object outside the band
            ignore, gt = band, gt & ~band
    return pred, gt, ignore


@pytest.mark.parametrize("start", range(0, 400, 100))
def test_next_click_is_ritms_click_on_random_masks(start):
    agreed = 0
    for seed in range(start, start + 100):
        pred, gt, ignore = _case(seed)
        valid = np.ones_like(gt) if ignore is None else ~ignore
        ours = next_click(pred, gt, ignore)
        if not ((gt ^ pred) & valid).any():
            assert ours is None, seed  # nothing wrong: no click, the mask is kept
            continue
        assert ours == ritm_click(pred, gt, ignore), seed
        # RITM sets the distance to 0 on pixels clicked already: click where it clicked, then ask again
        clicked = [ours]
        for _ in range(3):
            unclicked = (gt ^ pred) & valid
            for c in clicked:
                unclicked[c.y, c.x] = False
            if not unclicked.any():  # every error pixel clicked: RITM falls back to the corner; segany stops
                assert next_click(pred, gt, ignore, clicked) is None, seed
                break
            theirs = ritm_click(pred, gt, ignore, clicked)
            assert next_click(pred, gt, ignore, clicked) == theirs, seed
            clicked.append(theirs)
        agreed += 1
    assert agreed > 50


def test_ties_go_to_the_negative_click_and_size_does_not_decide():
    gt = np.zeros((30, 40), bool)
    gt[5:25, 5:15] = True
    pred = np.zeros_like(gt)
    pred[5:25, 20:30] = True  # FN and FP blocks of the same shape: equal maxima -> negative
    click = next_click(pred, gt)
    assert click == Click(24, 9, False) == ritm_click(pred, gt)
    # a long thin false negative has more pixels than a small thick false positive, but a smaller distance
    gt = np.zeros((40, 60), bool)
    gt[2:4, 0:60] = True  # 120 px, distance 1 (it touches the left and right borders)
    pred = gt.copy()
    pred[2:4, :] = False
    pred[20:29, 20:29] = True  # 81 px, distance 5
    assert next_click(pred, gt) == Click(24, 24, False) == ritm_click(pred, gt)


def test_the_border_counts_as_outside():
    gt = np.zeros((20, 20), bool)
    gt[:, :6] = True  # touches the left, top and bottom borders: deepest at column 2 (distance 3), not 0
    click = next_click(np.zeros_like(gt), gt)
    assert click == Click(2, 2, True) == ritm_click(np.zeros_like(gt), gt)


class _Sequence:
    """A predictor answering the protocol's calls with a fixed list of masks (three copies for multimask)."""

    def __init__(self, masks: list[np.ndarray]):
        self.masks, self.calls = masks, 0

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True,
                return_logits=False):  # fmt: skip
        m = self.masks[min(self.calls, len(self.masks) - 1)]
        self.calls += 1
        n = 3 if multimask_output else 1
        return np.stack([m] * n), np.linspace(0.1, 0.9, n), np.zeros((n, 256, 256), np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_run_clicks_places_ritms_clicks(seed):
    """A whole run: the first click is RITM's click on an empty prediction, then one per returned mask."""
    pred0, gt, ignore = _case(seed)
    rng = np.random.default_rng(1000 + seed)
    h, w = gt.shape
    masks = [pred0] + [(gt | _blobs(rng, h, w, 1)) & ~_blobs(rng, h, w, 1) for _ in range(5)]
    res = run_clicks(_Sequence(masks), gt, ignore, max_clicks=6)
    expected = [ritm_click(np.zeros_like(gt), gt, ignore)]
    valid = np.ones_like(gt) if ignore is None else ~ignore
    for m in masks[: len(res.clicks) - 1]:
        assert ((gt ^ m) & valid).any()
        expected.append(ritm_click(m, gt, ignore, expected))
    assert res.clicks == expected
    if len(res.clicks) < 6:  # stopped early: the last mask had nothing wrong
        assert not ((gt ^ masks[len(res.clicks) - 1]) & valid).any()
