"""Proposals (mask AR) and box-prompted instances (mask AP) on a tiny synthetic COCO dataset."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segany.evaluate import instances as inst
from segany.evaluate import proposals as props
from segany.evaluate.runs import _gt_as_results

H, W = 48, 64


def write_coco(root: Path) -> Path:
    """Two 48x64 images, three objects (two in image 1), plus one crowd region; returns instances.json."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    objects = {1: [(5, 5, 20, 15), (30, 20, 25, 20)], 2: [(10, 10, 30, 30)]}
    images, anns = [], []
    for image_id, boxes in objects.items():
        Image.fromarray(rng.integers(0, 255, (H, W, 3)).astype(np.uint8)).save(
            root / "images" / f"{image_id}.png"
        )
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": H, "width": W})
        for x, y, w, h in boxes:
            m = np.zeros((H, W), np.uint8)
            m[y : y + h, x : x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1 + len(anns) % 2,
                    "segmentation": rle,
                    "area": float(w * h),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    crowd = np.zeros((H, W), np.uint8)
    crowd[40:, :10] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": 2,
            "category_id": 1,
            "segmentation": rle,
            "area": 80.0,
            "bbox": [0, 40, 10, 8],
            "iscrowd": 1,
        }
    )
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path):
    from pycocotools.coco import COCO

    path = write_coco(tmp_path / "coco")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_ground_truth_masks_have_ar_1_and_ap_1(coco):
    ids = [1, 2]
    gt = _gt_as_results(coco, ids)
    assert len(gt) == 3  # the crowd region is not a detection
    ar = props.evaluate_proposals(coco, gt, ids)
    assert ar["ar_10"] == ar["ar_100"] == ar["ar_1000"] == pytest.approx(1.0)
    assert ar["ar_small_1000"] == pytest.approx(1.0)
    assert ar["ar_medium_1000"] == -1.0  # no objects of that size: pycocotools' "undefined"
    ap = inst.evaluate_instances(coco, gt, ids)
    assert ap["ap"] == pytest.approx(1.0) and ap["ap50"] == pytest.approx(1.0)
    assert props.evaluate_proposals(coco, [], ids)["ar_100"] == 0.0


def test_ar_counts_recall_of_a_partial_proposal_set(coco):
    gt = _gt_as_results(coco, [1, 2])
    # one object of three found; the others get an empty-ish wrong mask
    assert props.evaluate_proposals(coco, gt[:1], [1, 2])["ar_1000"] == pytest.approx(1 / 3)


def test_rank_proposals_by_mean_of_iou_and_stability():
    recs = [
        {"predicted_iou": a, "stability_score": b, "segmentation": {"size": [H, W], "counts": "x"}}
        for a, b in [(0.9, 0.1), (0.6, 0.8), (0.2, 0.2)]
    ]
    ranked = props.rank_proposals(recs, max_proposals=2)
    assert [r["predicted_iou"] for r in ranked] == [0.6, 0.9]
    res = props.proposal_results(7, ranked)
    assert res[0]["score"] == pytest.approx(0.7) and res[0]["image_id"] == 7


def test_boxes_for_image_from_gt_and_detections(coco):
    boxes, cats, scores = inst.boxes_for_image(coco, 1, None)
    np.testing.assert_allclose(boxes, [[5, 5, 25, 20], [30, 20, 55, 40]])
    assert cats == [1, 2] and scores == [1.0, 1.0]
    dets = inst.group_detections([{"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}])
    boxes, cats, scores = inst.boxes_for_image(coco, 2, dets)
    np.testing.assert_allclose(boxes, [[1, 2, 4, 6]])
    assert inst.boxes_for_image(coco, 1, dets)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="COCO box result"):
        inst.group_detections([{"image_id": 1, "bbox": [1, 2, 3]}])


class FakeBoxPredictor:
    """predict_torch over boxes: multimask call returns 3 masks with distinct low-res logits; records calls."""

    original_size = (H, W)
    device = torch.device("cpu")

    class transform:  # noqa: N801 - mimics the predictor's attribute
        @staticmethod
        def apply_boxes_torch(boxes, size):
            return boxes * 2.0

    def __init__(self):
        self.calls = []

    def predict_torch(
        self,
        point_coords,
        point_labels,
        boxes=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        b = len(boxes)
        c = 3 if multimask_output else 1
        self.calls.append({"boxes": boxes.clone(), "mask_input": mask_input, "multimask": multimask_output})
        low = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(b, c, 256, 256).clone()
        iou = torch.tensor([[0.1, 0.9, 0.5]] * b)[:, :c]
        masks = torch.zeros(b, c, H, W, dtype=torch.bool)
        masks[:, :, :10, :10] = not multimask_output
        return masks, iou, low


def test_masks_from_boxes_refines_once_with_the_most_confident_mask():
    pred = FakeBoxPredictor()
    masks = inst.masks_from_boxes(pred, np.array([[1, 2, 3, 4], [5, 6, 7, 8.0]]), batch_size=1)
    assert masks.shape == (2, H, W) and masks[:, :10, :10].all() and masks.sum() == 200
    assert [c["multimask"] for c in pred.calls] == [True, False, True, False]
    refine = pred.calls[1]
    assert torch.equal(refine["boxes"], torch.tensor([[2.0, 4.0, 6.0, 8.0]]))
    assert refine["mask_input"].shape == (1, 1, 256, 256) and torch.all(refine["mask_input"] == 1.0)


def test_instance_results_encode_rle():
    m = np.zeros((2, H, W), bool)
    m[0, 3:5, 3:6] = True
    res = inst.instance_results(4, m, [1, 2], [0.3, 0.2])
    from pycocotools import mask as mask_utils

    assert mask_utils.area(res[0]["segmentation"]) == 6 and isinstance(res[0]["segmentation"]["counts"], str)
    assert res[1]["category_id"] == 2 and res[1]["score"] == 0.2
