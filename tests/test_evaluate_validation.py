"""The validation-split measurements: known answers with stand-in predictors, the threshold search, the split."""

from __future__ import annotations

import numpy as np
import pytest
from paths import DATA

from segany.data.sample import Sample
from segany.evaluate.validation import (
    FirstClick,
    ValidationReport,
    background_click,
    choose_generator_defaults,
    threshold_table,
    validation_samples,
    whole_part_clicks,
)


class Answers:
    """A predictor that answers every call with fixed masks and scores, and records the calls."""

    def __init__(self, masks: list[np.ndarray], scores: list[float]) -> None:
        self.masks, self.scores, self.calls = np.stack(masks), np.array(scores), []

    def predict(self, point_coords, point_labels, mask_input=None, multimask_output=True):  # type: ignore[no-untyped-def]
        self.calls.append((point_coords.copy(), point_labels.copy(), mask_input is not None))
        k = 3 if multimask_output else 1
        return self.masks[:k], self.scores[:k], np.zeros((k, 8, 8), np.float32)


def _person() -> Sample:
    person = np.zeros((40, 40), bool)
    person[5:38, 10:30] = True
    shirt = np.zeros_like(person)
    shirt[10:20, 10:30] = True
    return Sample(np.zeros((40, 40, 3), np.uint8), np.stack([person, shirt]), source="ccp_parts/x")


def test_whole_part_needs_both_in_two_different_masks() -> None:
    s = _person()
    person, shirt = s.masks
    empty = np.zeros_like(person)
    both = whole_part_clicks(Answers([shirt, person, empty], [0.2, 0.9, 0.1]), s)
    assert both == [{"source": "ccp_parts/x", "both": True, "part": True, "person": True, "top_is_one": True}]
    only_part = whole_part_clicks(Answers([shirt, shirt, empty], [0.1, 0.2, 0.9]), s)[0]
    assert not only_part["both"] and only_part["part"] and not only_part["person"]
    assert not only_part["top_is_one"]  # the top-scored answer is the empty mask


def test_background_click_is_negative_outside_the_object_and_feeds_back_the_mask() -> None:
    gt = np.zeros((60, 60), bool)
    gt[20:40, 20:40] = True
    half = gt.copy()
    half[30:] = False
    pred = Answers([gt, half, half], [0.9, 0.1, 0.1])
    before, after = background_click(pred, gt)  # type: ignore[misc]
    assert before == 1.0 and after == 1.0
    (c1, l1, m1), (c2, l2, m2) = pred.calls
    assert l1.tolist() == [1] and not m1 and l2.tolist() == [1, 0] and m2
    x, y = c2[1].astype(int)
    assert not gt[y, x] and 20 - 13 <= x <= 39 + 13 and 20 - 13 <= y <= 39 + 13


def test_threshold_table_counts_matches_after_filters_and_nms() -> None:
    # one image, two objects; candidates: a good match of each, a duplicate of the first (NMS removes it) and a
    # confident false positive that only the stability filter removes
    cand = {
        "pred": np.array([0.9, 0.8, 0.85, 0.95]),
        "stab": np.array([0.95, 0.9, 0.9, 0.5]),
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 10, 10], [0, 0, 10, 10], [40, 40, 5, 5]], float),
        "ious": np.array([[0.9, 0.0], [0.0, 0.8], [0.85, 0.0], [0.0, 0.0]]),
    }
    rows = {(r["pred_iou_thresh"], r["stability_score_thresh"]): r for r in threshold_table([cand])}
    loose = rows[(0.0, 0.0)]
    assert (
        loose["masks_per_image"] == 3
        and loose["recall"] == 1.0
        and loose["precision"] == pytest.approx(2 / 3)
    )
    tight = rows[(0.0, 0.6)]
    assert tight["masks_per_image"] == 2 and tight["precision"] == 1.0 and tight["f1"] == 1.0
    assert rows[(0.88, 0.95)]["masks_per_image"] == 1 and rows[(0.88, 0.95)]["recall"] == 0.5
    assert rows[(0.9, 0.0)]["images_with_masks"] == 1.0 and rows[(0.9, 0.95)]["images_with_masks"] == 0.0


def test_generator_defaults_leave_a_mask_on_almost_every_image() -> None:
    # image A: two confident good masks; image B: one right mask scored 0.45. The best F1 (0.5) loses B
    # entirely; the chosen filters are the best F1 among those that keep a mask on every image.
    a = {
        "pred": np.array([0.9, 0.8]),
        "stab": np.array([0.95, 0.95]),
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 10, 10]], float),
        "ious": np.array([[0.9, 0.0], [0.0, 0.8]]),
    }
    b = {
        "pred": np.array([0.45, 0.42, 0.41]),
        "stab": np.array([0.95, 0.95, 0.95]),
        "boxes": np.array([[0, 0, 10, 10], [30, 30, 10, 10], [50, 50, 10, 10]], float),
        "ious": np.array([[0.9], [0.0], [0.0]]),
    }
    table = threshold_table([a, b], iou_grid=(0.3, 0.5), stability_grid=(0.9,))
    best_f1 = max(table, key=lambda r: r["f1"])
    assert best_f1["pred_iou_thresh"] == 0.5 and best_f1["images_with_masks"] == 0.5
    chosen = choose_generator_defaults(table)
    assert chosen["pred_iou_thresh"] == 0.3 and chosen["images_with_masks"] == 1.0
    assert choose_generator_defaults(table, coverage=0.5) == best_f1


def test_summary_of_calibration() -> None:
    rep = ValidationReport()
    rep.first = [
        FirstClick(np.array([0.9, 0.5, 0.1]), np.array([0.8, 0.6, 0.0])),  # top is best
        FirstClick(np.array([0.2, 0.6, 0.4]), np.array([0.9, 0.3, 0.5])),  # top is not
    ]
    rep.clicks = [np.array([0.5, 0.7, 0.65]), np.array([0.5, 0.7, 0.75])]
    s = rep.summary()
    assert s["calibration"]["top_is_best_rate"] == 0.5
    assert s["calibration"]["iou_mae"] == pytest.approx(np.mean([0.1, 0.1, 0.1, 0.7, 0.3, 0.1]), abs=1e-4)
    assert s["calibration"]["miou_1_top"] == pytest.approx(0.55)
    assert s["miou"] == [0.5, 0.7, 0.7] and s["max_drop"] == 0.0


@pytest.mark.skipif(not (DATA / "msrc_v2").is_dir(), reason="no shared data")
def test_validation_samples_are_exactly_the_split() -> None:
    from segany.data import is_validation

    got = [s.source for s in validation_samples(DATA / "msrc_v2", 0.08)]
    assert got and all(is_validation(k, 0.08) for k in got)
    import json

    stems = json.loads((DATA / "msrc_v2" / "regions.json").read_text())
    assert len(got) == sum(is_validation(f"msrc_v2/{s}", 0.08) for s in stems)


def test_cli_validation_writes_reports_and_the_chosen_filters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import torch
    from PIL import Image

    from segany.build import TINY, sam_model_registry
    from segany.checkpoint import read_generator_defaults, save_safetensors
    from segany.cli import main

    root = tmp_path / "data" / "msrc_v2"
    (root / "images").mkdir(parents=True)
    (root / "regions").mkdir()
    rng = np.random.default_rng(0)
    index = {}
    for i in range(12):
        ids = np.ones((48, 64), np.uint8)
        ids[10:30, 12:40] = 2
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i}.jpg")
        Image.fromarray(ids).save(root / "regions" / f"s{i}.png")
        index[f"s{i}"] = {"1": "grass", "2": "cow"}
    (root / "regions.json").write_text(json.dumps(index))
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_safetensors(ckpt, sam_model_registry["tiny"]().state_dict(), TINY)
    args = ["eval", "validation", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--model"]
    args += [
        "tiny",
        "--checkpoint",
        str(ckpt),
        "--fraction",
        "0.5",
        "--auto-images",
        "2",
        "--points-per-side",
        "3",
    ]
    assert main([*args, "--no-progress", "--write-generator-defaults"]) == 0
    doc = json.loads((tmp_path / "out" / "validation.json").read_text())
    s = doc["summary"]
    from segany.data import is_validation

    held = sum(is_validation(f"msrc_v2/s{i}", 0.5) for i in range(12))
    assert s["images"] == {"msrc_v2": held} and held > 0
    assert len(s["miou"]) == 5 and s["calibration"]["masks"] == 3 * s["objects"]
    assert s["automatic"]["images"] == 2 and "ar_1000" in s["automatic"]["proposals"]
    chosen = s["automatic"]["chosen"]
    assert read_generator_defaults(ckpt) == {
        "pred_iou_thresh": chosen["pred_iou_thresh"],
        "stability_score_thresh": chosen["stability_score_thresh"],
    }
    assert "Automatic generator on 2 images" in (tmp_path / "out" / "validation.md").read_text()
