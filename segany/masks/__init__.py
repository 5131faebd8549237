"""Mask utilities for automatic generation and datasets: RLE codecs, boxes and NMS, quality, grids and crops."""

from segany.masks.boxes import box_xywh_to_xyxy, box_xyxy_to_xywh, boxes_near_crop_edge, masks_to_boxes, nms
from segany.masks.grid import build_all_layer_point_grids, build_point_grid, generate_crop_boxes
from segany.masks.quality import remove_small_regions, stability_score
from segany.masks.rle import (
    area_from_rle,
    coco_rle_to_counts,
    coco_string_to_counts,
    counts_to_coco_string,
    decode_rle,
    encode_coco_rle,
    mask_to_rle,
    masks_to_rle_counts,
    rle_counts_to_mask,
    rle_to_coco,
    rle_to_mask,
)

__all__ = [
    "area_from_rle",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "boxes_near_crop_edge",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_rle_to_counts",
    "coco_string_to_counts",
    "counts_to_coco_string",
    "decode_rle",
    "encode_coco_rle",
    "generate_crop_boxes",
    "mask_to_rle",
    "masks_to_boxes",
    "masks_to_rle_counts",
    "nms",
    "remove_small_regions",
    "rle_counts_to_mask",
    "rle_to_coco",
    "rle_to_mask",
    "stability_score",
]
