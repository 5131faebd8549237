"""Zero-shot instance segmentation from boxes (paper §7.4): boxes in, masks out, COCO mask AP.

Each box (from a detector's COCO-format results file, or the ground-truth boxes) prompts SAM once with
``multimask_output=True``; the mask with the highest predicted IoU is taken, and one refinement round feeds its
low-resolution logits back as ``mask_input`` together with the same box (``multimask_output=False``) — the
paper's "one extra iteration with the most confident mask". The detection's score is kept as the mask's score
(ground-truth boxes score 1). Mask AP is pycocotools' ``COCOeval`` (``segm``, default parameters). A predictor
that refines its masks (the default model's graph cut) refines the final mask with the box, as ``predict`` would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segany.evaluate.proposals import _cocoeval_stats


def boxes_xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes to ``[x0, y0, x1, y1]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


@torch.no_grad()
def masks_from_boxes(predictor: Any, boxes_xyxy: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Masks (``N x H x W`` bool) for XYXY boxes in original-image pixels; the predictor's image must be set.

    ``predictor`` is a ``SamPredictor`` (official API: ``transform``, ``original_size``, ``predict_torch``).
    """
    h, w = predictor.original_size
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    out = np.zeros((len(boxes), h, w), dtype=bool)
    for start in range(0, len(boxes), batch_size):
        chunk = torch.as_tensor(boxes[start : start + batch_size])
        tboxes = predictor.transform.apply_boxes_torch(chunk, (h, w)).to(predictor.device)
        _, iou_pred, low_res = predictor.predict_torch(None, None, boxes=tboxes, multimask_output=True)
        best = iou_pred.argmax(dim=1)
        chosen = low_res[torch.arange(len(best), device=low_res.device), best][:, None]  # B x 1 x 256 x 256
        refine = bool(getattr(predictor, "can_refine", False))
        masks, _, _ = predictor.predict_torch(
            None, None, boxes=tboxes, mask_input=chosen, multimask_output=False, return_logits=refine
        )
        final = masks.cpu().numpy()
        if refine:
            final = predictor.refine_masks(final, box=boxes[start : start + len(chunk)])
        out[start : start + len(chunk)] = final[:, 0]
    return out


def instance_results(
    image_id: int, masks: np.ndarray, category_ids: list[int], scores: list[float]
) -> list[dict[str, Any]]:
    """COCO result dicts with RLE-encoded masks."""
    from pycocotools import mask as mask_utils

    out = []
    for m, c, s in zip(masks, category_ids, scores, strict=True):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": int(image_id), "category_id": int(c), "segmentation": rle, "score": float(s)})
    return out


def evaluate_instances(coco_gt: Any, results: list[dict[str, Any]], image_ids: list[int]) -> dict[str, float]:
    """COCO mask AP (AP, AP50, AP75, APs, APm, APl) of ``results`` on ``image_ids``."""
    keys = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"]
    if not image_ids:
        raise ValueError("no images to evaluate")
    if not results:
        return dict.fromkeys(keys, 0.0)
    stats = _cocoeval_stats(coco_gt, results, image_ids, use_cats=True, max_dets=None)
    return dict(zip(keys, (float(v) for v in stats[:6]), strict=True))


def boxes_for_image(
    coco_gt: Any, image_id: int, detections: dict[int, list[dict[str, Any]]] | None
) -> tuple[np.ndarray, list[int], list[float]]:
    """Prompt boxes (XYXY), categories and scores of one image: from detections grouped by image id, or the
    non-crowd ground truth when ``detections`` is None."""
    if detections is None:
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = [a["bbox"] for a in anns]
        cats = [int(a["category_id"]) for a in anns]
        scores = [1.0] * len(anns)
    else:
        dets = detections.get(image_id, [])
        boxes = [d["bbox"] for d in dets]
        cats = [int(d["category_id"]) for d in dets]
        scores = [float(d["score"]) for d in dets]
    return boxes_xywh_to_xyxy(np.array(boxes).reshape(-1, 4)), cats, scores


def group_detections(detections: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Group a COCO results list by image id, checking the fields the box prompts need."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for i, d in enumerate(detections):
        missing = {"image_id", "category_id", "bbox", "score"} - set(d)
        if missing or len(d["bbox"]) != 4:
            raise ValueError(
                f"detection {i} is not a COCO box result (missing {sorted(missing)} or bad bbox)"
            )
        grouped.setdefault(int(d["image_id"]), []).append(d)
    return grouped
