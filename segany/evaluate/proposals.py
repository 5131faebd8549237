"""Object proposals (paper §7.3): mask average recall of the automatic generator's masks, class-agnostic.

Settings as in the paper (App. D.3): one 64x64 point grid on the full image (no crops), no predicted-IoU or
stability filter, box NMS at 0.9; when more than 1000 masks remain, the top 1000 by the mean of predicted IoU and
stability score are kept, and that mean is also the proposal's score for the AR ranking. Recall is measured by
pycocotools' ``COCOeval`` on masks with ``useCats = 0`` and ``maxDets = [10, 100, 1000]``: AR@10, AR@100,
AR@1000 and AR@1000 for small / medium / large objects (COCO area ranges).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

PROPOSAL_GENERATOR_SETTINGS: dict[str, Any] = {
    "points_per_side": 64,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.9,
    "crop_n_layers": 0,
    "output_mode": "coco_rle",
}
MAX_PROPOSALS = 1000
AR_MAX_DETS = [10, 100, 1000]


def rank_proposals(records: list[dict[str, Any]], max_proposals: int = MAX_PROPOSALS) -> list[dict[str, Any]]:
    """Generator records sorted by the mean of predicted IoU and stability score, best first, at most ``max``."""
    scored = sorted(records, key=lambda r: -(float(r["predicted_iou"]) + float(r["stability_score"])) / 2.0)
    return scored[:max_proposals]


def proposal_results(
    image_id: int, records: list[dict[str, Any]], category_id: int = 1
) -> list[dict[str, Any]]:
    """COCO result dicts (``coco_rle`` segmentations) for ranked records; the category is a placeholder."""
    out = []
    for r in records:
        seg = dict(r["segmentation"])
        if isinstance(seg.get("counts"), bytes):
            seg["counts"] = seg["counts"].decode("ascii")
        score = (float(r["predicted_iou"]) + float(r["stability_score"])) / 2.0
        out.append(
            {"image_id": int(image_id), "category_id": category_id, "segmentation": seg, "score": score}
        )
    return out


def evaluate_proposals(coco_gt: Any, results: list[dict[str, Any]], image_ids: list[int]) -> dict[str, float]:
    """Class-agnostic mask AR of ``results`` against ``coco_gt`` (a ``pycocotools.coco.COCO``) on ``image_ids``."""
    keys = ["ar_10", "ar_100", "ar_1000", "ar_small_1000", "ar_medium_1000", "ar_large_1000"]
    if not image_ids:
        raise ValueError("no images to evaluate")
    if not results:
        return dict.fromkeys(keys, 0.0)
    stats = _cocoeval_stats(coco_gt, results, image_ids, use_cats=False, max_dets=AR_MAX_DETS)
    return dict(zip(keys, (float(v) for v in stats[6:12]), strict=True))


def _cocoeval_stats(
    coco_gt: Any,
    results: list[dict[str, Any]],
    image_ids: list[int],
    use_cats: bool,
    max_dets: list[int] | None,
) -> np.ndarray:
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables to stdout
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it is given
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = sorted(image_ids)
        ev.params.useCats = int(use_cats)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)
