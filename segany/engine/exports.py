"""Export a project's accepted masks as COCO instances JSON or as SA-1B per-image records.

Both use COCO compressed RLE (``{"size": [h, w], "counts": str}``), exactly as SA-1B ships its masks, so
``pycocotools.mask.decode`` reads every segmentation back. Fields beyond the formats (who made a mask, how long
it took, its 1-10 rating) are kept as extra keys, which COCO and SA-1B readers ignore.
"""

from __future__ import annotations

import json
from typing import Any

from segany.engine.db import Annotation, Image

DEFAULT_CATEGORY = "object"


def _extras(a: Annotation, creator: str | None) -> dict[str, Any]:
    return {
        "label": a.label,
        "source": a.source,
        "created_by": creator,
        "seconds": a.seconds,
        "quality": a.quality,
    }


def to_coco(images: list[Image], anns: list[tuple[Annotation, str | None]]) -> dict[str, Any]:
    names = sorted({a.label or DEFAULT_CATEGORY for a, _ in anns})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    sizes = {im.id: [im.height, im.width] for im in images}
    return {
        "info": {"description": "segany annotation engine export"},
        "images": [
            {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height} for im in images
        ],
        "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in cat_id.items()],
        "annotations": [
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": cat_id[a.label or DEFAULT_CATEGORY],
                "segmentation": {"size": sizes[a.image_id], "counts": a.rle_counts},
                "area": a.area,
                "bbox": json.loads(a.bbox),
                "iscrowd": 0,
                **_extras(a, creator),
            }
            for a, creator in anns
        ],
    }


def to_sa1b(images: list[Image], anns: list[tuple[Annotation, str | None]]) -> list[dict[str, Any]]:
    """One SA-1B record (the content of an ``sa_<id>.json``) per image, in a list."""
    by_image: dict[int, list[tuple[Annotation, str | None]]] = {im.id: [] for im in images}
    for a, creator in anns:
        by_image[a.image_id].append((a, creator))
    out = []
    for im in images:
        out.append(
            {
                "image": {
                    "image_id": im.id,
                    "width": im.width,
                    "height": im.height,
                    "file_name": im.file_name,
                },
                "annotations": [
                    {
                        "id": a.id,
                        "segmentation": {"size": [im.height, im.width], "counts": a.rle_counts},
                        "bbox": json.loads(a.bbox),
                        "area": a.area,
                        "predicted_iou": a.predicted_iou,
                        "stability_score": a.stability_score,
                        "point_coords": [[p["x"], p["y"]] for p in json.loads(a.prompts) if p["label"] == 1],
                        "crop_box": [0, 0, im.width, im.height],
                        **_extras(a, creator),
                    }
                    for a, creator in by_image[im.id]
                ],
            }
        )
    return out
