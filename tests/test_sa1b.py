"""SA-1B annotation JSON: writer/reader round trip, pycocotools compatibility and schema validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segany.data.sa1b import read_sa1b, records_to_sa1b, sa1b_from_dict, write_sa1b
from segany.masks import encode_coco_rle, mask_to_rle


def make_records(output_mode: str) -> tuple[list[dict], np.ndarray]:
    masks = np.zeros((3, 12, 20), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 0:12, 10:20] = True
    masks[2, 7, 7] = True
    import torch

    rles = mask_to_rle(torch.from_numpy(masks))
    records = []
    for i, m in enumerate(masks):
        seg: object
        if output_mode == "binary_mask":
            seg = m
        elif output_mode == "uncompressed_rle":
            seg = rles[i]
        else:
            seg = encode_coco_rle(m)
        ys, xs = np.nonzero(m)
        records.append(
            {
                "segmentation": seg,
                "area": int(m.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                "predicted_iou": 0.9 - 0.1 * i,
                "point_coords": [[1.25 * i, 2.5]],
                "stability_score": 0.97,
                "crop_box": [0, 0, 20, 12],
            }
        )
    return records, masks


@pytest.mark.parametrize("output_mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_roundtrip_every_output_mode(tmp_path, output_mode):
    records, masks = make_records(output_mode)
    doc = records_to_sa1b(
        records, image_id=7, file_name="sa_7.jpg", height=12, width=20, first_annotation_id=100
    )
    path = write_sa1b(tmp_path / "sub" / "sa_7.json", doc)
    raw = json.loads(path.read_text())
    assert set(raw) == {"image", "annotations"}
    assert raw["image"] == {"image_id": 7, "width": 20, "height": 12, "file_name": "sa_7.jpg"}
    assert [a["id"] for a in raw["annotations"]] == [100, 101, 102]
    assert set(raw["annotations"][0]) == {
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "crop_box",
        "point_coords",
    }
    back = read_sa1b(path)
    assert back == doc
    np.testing.assert_array_equal(back.masks(), masks)
    for ann, m in zip(raw["annotations"], masks, strict=True):
        np.testing.assert_array_equal(
            coco_mask.decode(ann["segmentation"]).astype(bool), m
        )  # pycocotools reads it
        assert coco_mask.area(ann["segmentation"]) == ann["area"]
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp files


def test_rejects_malformed_documents():
    records, _ = make_records("coco_rle")
    good = records_to_sa1b(records, image_id=1, file_name="a.jpg", height=12, width=20).to_dict()
    assert sa1b_from_dict(good).image.width == 20
    bad_cases = []
    d = json.loads(json.dumps(good))
    del d["image"]["width"]
    bad_cases.append(d)
    d = json.loads(json.dumps(good))
    d["annotations"][0]["segmentation"]["size"] = [13, 20]
    bad_cases.append(d)
    d = json.loads(json.dumps(good))
    d["annotations"][1]["bbox"] = [1, 2, 3]
    bad_cases.append(d)
    d = json.loads(json.dumps(good))
    d["annotations"][2]["segmentation"]["counts"] = [1, 2]
    bad_cases.append(d)
    d = json.loads(json.dumps(good))
    d["annotations"][0]["id"] = "x"
    bad_cases.append(d)
    for bad in bad_cases:
        with pytest.raises(ValueError):
            sa1b_from_dict(bad)


def test_rejects_mask_of_wrong_size():
    records, _ = make_records("binary_mask")
    with pytest.raises(ValueError):
        records_to_sa1b(records, image_id=1, file_name="a.jpg", height=13, width=20)
