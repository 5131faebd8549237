"""SA-1B annotation files: one JSON per image, as released with the SA-1B dataset.

Layout (the dataset README's, which training and evaluation read)::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": str},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str},   # COCO RLE
                      "bbox": [x, y, w, h], "area": int, "predicted_iou": float, "stability_score": float,
                      "crop_box": [x, y, w, h], "point_coords": [[x, y]]}, ...]}

``records_to_sa1b`` turns ``SamAutomaticMaskGenerator.generate`` records (any ``output_mode``) into that dict;
``write_sa1b``/``read_sa1b`` store and load it with validation, so a broken file fails loudly at read time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segany.masks.rle import coco_rle_to_counts, counts_to_coco_string, decode_rle, encode_coco_rle

__all__ = [
    "SA1BAnnotation",
    "SA1BFile",
    "SA1BImage",
    "read_sa1b",
    "records_to_sa1b",
    "sa1b_from_dict",
    "write_sa1b",
]


@dataclass(frozen=True)
class SA1BImage:
    image_id: int
    width: int
    height: int
    file_name: str


@dataclass(frozen=True)
class SA1BAnnotation:
    id: int
    segmentation: dict[str, Any]  # COCO RLE, counts as str
    bbox: list[float]  # XYWH
    area: int
    predicted_iou: float
    stability_score: float
    crop_box: list[float]  # XYWH
    point_coords: list[list[float]]

    def decode(self) -> np.ndarray:
        """The mask as an ``[height, width]`` bool array."""
        return decode_rle(self.segmentation)


@dataclass(frozen=True)
class SA1BFile:
    image: SA1BImage
    annotations: list[SA1BAnnotation]

    def to_dict(self) -> dict[str, Any]:
        return {"image": asdict(self.image), "annotations": [asdict(a) for a in self.annotations]}

    def masks(self) -> np.ndarray:
        """All masks as an ``[N, height, width]`` bool array."""
        out = np.zeros((len(self.annotations), self.image.height, self.image.width), dtype=bool)
        for i, ann in enumerate(self.annotations):
            out[i] = ann.decode()
        return out


def _to_coco_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    if isinstance(segmentation, (np.ndarray, torch.Tensor)):
        if tuple(segmentation.shape) != (height, width):
            raise ValueError(
                f"mask of shape {tuple(segmentation.shape)} does not match image {height}x{width}"
            )
        return encode_coco_rle(segmentation)
    if isinstance(segmentation, Mapping) and "size" in segmentation and "counts" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} does not match image {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if not isinstance(counts, str):
            counts = counts_to_coco_string(coco_rle_to_counts(dict(segmentation))).decode("ascii")
        return {"size": [height, width], "counts": counts}
    raise TypeError(f"unsupported segmentation type {type(segmentation).__name__}")


def records_to_sa1b(
    records: Iterable[Mapping[str, Any]],
    *,
    image_id: int,
    file_name: str,
    height: int,
    width: int,
    first_annotation_id: int = 0,
) -> SA1BFile:
    """Convert automatic-generator records (binary mask, uncompressed or COCO RLE) into an SA-1B file.

    Annotation ids are ``first_annotation_id, first_annotation_id + 1, ...`` in record order.
    """
    anns = []
    for i, rec in enumerate(records):
        anns.append(
            SA1BAnnotation(
                id=first_annotation_id + i,
                segmentation=_to_coco_rle(rec["segmentation"], height, width),
                bbox=[float(v) for v in rec["bbox"]],
                area=int(rec["area"]),
                predicted_iou=float(rec["predicted_iou"]),
                stability_score=float(rec["stability_score"]),
                crop_box=[float(v) for v in rec["crop_box"]],
                point_coords=[[float(v) for v in p] for p in rec["point_coords"]],
            )
        )
    image = SA1BImage(image_id=int(image_id), width=int(width), height=int(height), file_name=str(file_name))
    return SA1BFile(image=image, annotations=anns)


def _require(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} has type {type(value).__name__}")
    return value


def _numbers(value: Any, n: int | None, where: str) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise ValueError(f"{where}: expected a list of {n} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: expected numbers")
    return [float(v) for v in value]


def sa1b_from_dict(doc: Mapping[str, Any]) -> SA1BFile:
    """Validate and type an SA-1B JSON document (raises ``ValueError`` on schema errors)."""
    if not isinstance(doc, Mapping):
        raise ValueError("SA-1B document must be a JSON object")
    img = _require(doc, "image", dict, "document")
    image = SA1BImage(
        image_id=_require(img, "image_id", int, "image"),
        width=_require(img, "width", int, "image"),
        height=_require(img, "height", int, "image"),
        file_name=_require(img, "file_name", str, "image"),
    )
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"image: bad size {image.width}x{image.height}")
    anns = []
    for k, a in enumerate(_require(doc, "annotations", list, "document")):
        where = f"annotations[{k}]"
        if not isinstance(a, dict):
            raise ValueError(f"{where}: not an object")
        seg = _require(a, "segmentation", dict, where)
        if _numbers(seg.get("size"), 2, f"{where}.segmentation.size") != [image.height, image.width]:
            raise ValueError(f"{where}: segmentation size {seg.get('size')} differs from the image size")
        if not isinstance(seg.get("counts"), str):
            raise ValueError(f"{where}: segmentation counts must be a COCO RLE string")
        points = _require(a, "point_coords", list, where)
        anns.append(
            SA1BAnnotation(
                id=_require(a, "id", int, where),
                segmentation={"size": [image.height, image.width], "counts": seg["counts"]},
                bbox=_numbers(a.get("bbox"), 4, f"{where}.bbox"),
                area=_require(a, "area", int, where),
                predicted_iou=float(_require(a, "predicted_iou", (int, float), where)),
                stability_score=float(_require(a, "stability_score", (int, float), where)),
                crop_box=_numbers(a.get("crop_box"), 4, f"{where}.crop_box"),
                point_coords=[_numbers(p, 2, f"{where}.point_coords") for p in points],
            )
        )
    return SA1BFile(image=image, annotations=anns)


def write_sa1b(path: str | os.PathLike[str], sa1b: SA1BFile) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename): readers never see a partial file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sa1b.to_dict(), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_sa1b(path: str | os.PathLike[str]) -> SA1BFile:
    """Read and validate one SA-1B annotation JSON."""
    with open(path, encoding="utf-8") as f:
        return sa1b_from_dict(json.load(f))
