"""Boxes of masks, box formats and box-IoU non-maximum suppression.

Box convention (as the official automatic generator): XYXY with *inclusive* max coordinates in pixels, so a
one-pixel mask at (x, y) has box ``[x, y, x, y]`` and XYWH width ``x_max - x_min``; empty masks get
``[0, 0, 0, 0]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "boxes_near_crop_edge",
    "masks_to_boxes",
    "nms",
]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight inclusive XYXY boxes of binary masks.

    Arguments:
      masks: ``[..., H, W]`` bool tensor.

    Returns:
      ``[..., 4]`` int64 boxes ``(x0, y0, x1, y1)``; ``[0, 0, 0, 0]`` for empty masks.
    """
    if masks.dim() < 2:
        raise ValueError(f"masks must be [..., H, W], got shape {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    m = masks.to(torch.bool).reshape(-1, h, w)
    rows = m.any(dim=-1).to(torch.uint8)  # N x H: row has a set pixel
    cols = m.any(dim=-2).to(torch.uint8)  # N x W
    # argmax returns the first maximal index, so it finds the first set row/column from either end.
    y0 = rows.argmax(dim=-1)
    y1 = (h - 1) - rows.flip(-1).argmax(dim=-1)
    x0 = cols.argmax(dim=-1)
    x1 = (w - 1) - cols.flip(-1).argmax(dim=-1)
    out = torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int64)
    out = out * rows.any(dim=-1, keepdim=True)  # zero boxes for empty masks
    return out.reshape(*lead, 4)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` XYXY -> XYWH (width = x1 - x0, matching inclusive boxes as the official code)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` XYWH -> XYXY."""
    return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)


def boxes_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], image_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """Which boxes lie within ``atol`` px of a crop edge that is not also an image edge.

    Masks cut off by a crop boundary are incomplete, so the generator drops them; masks touching the true image
    border are kept.

    Arguments:
      boxes: ``[N, 4]`` XYXY in the crop's frame.
      crop_box: XYXY of the crop in the image frame.
      image_box: XYXY of the whole image, ``[0, 0, W, H]``.

    Returns:
      ``[N]`` bool.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    shifted = boxes.to(torch.float32) + crop[:2].repeat(2)
    near_crop = (shifted - crop).abs() <= atol
    near_image = (shifted - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy box-IoU NMS; indices of kept boxes by decreasing score (ties keep input order).

    Uses torchvision's ``batched_nms`` with a single category, as the official generator, so the kept set and
    its order are identical; the categories live on the boxes' device (the official 1.0 code puts them on the
    CPU, which fails for GPU boxes). torchvision is imported here, not with this module, so that the core
    (``segany segment``, which imports `segany.masks` for the graph cut) installs and runs without it.
    """
    try:
        from torchvision.ops import batched_nms
    except ModuleNotFoundError as err:
        if err.name not in ("torchvision", "torchvision.ops"):
            raise
        from segany.extras import MissingExtra

        raise MissingExtra("automatic mask generation (segany.masks.nms)", "auto", ["torchvision"]) from err
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError("scores must be [N] for [N, 4] boxes")
    categories = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes.to(torch.float32), scores.to(boxes.device), categories, iou_threshold)
