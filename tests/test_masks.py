"""Unit tests for segany.masks: literal tiny masks, plus agreement with pycocotools and the official helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from segany.masks import (
    area_from_rle,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    boxes_near_crop_edge,
    build_all_layer_point_grids,
    build_point_grid,
    coco_string_to_counts,
    counts_to_coco_string,
    decode_rle,
    encode_coco_rle,
    generate_crop_boxes,
    mask_to_rle,
    masks_to_boxes,
    masks_to_rle_counts,
    nms,
    remove_small_regions,
    rle_to_coco,
    rle_to_mask,
    stability_score,
)

amg = pytest.importorskip("segment_anything.utils.amg")


def random_masks(seed: int, n: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish blobs plus noise: long and short runs, masks starting with set and unset pixels.
    low = torch.rand(n, 1, max(h // 4, 1), max(w // 4, 1), generator=g)
    up = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return up > torch.rand(n, 1, 1, generator=g)


# RLE ---------------------------------------------------------------------------------------------------------


def test_rle_literal():
    m = torch.tensor([[[0, 1], [1, 1], [0, 0]]], dtype=torch.bool)  # 3 x 2; column-major: 0 1 0 | 1 1 0
    assert mask_to_rle(m) == [{"size": [3, 2], "counts": [1, 1, 1, 2, 1]}]
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    assert mask_to_rle(full)[0]["counts"] == [0, 4]  # a set first pixel starts with an empty run of zeros
    assert mask_to_rle(~full)[0]["counts"] == [4]


@pytest.mark.parametrize("seed", range(4))
def test_rle_matches_official_and_roundtrips(seed):
    h, w = 7 + 5 * seed, 13 - 2 * seed
    m = random_masks(seed, 6, h, w)
    m[0] = True
    m[1] = False
    ours = mask_to_rle(m)
    assert ours == amg.mask_to_rle_pytorch(m)
    for i, rle in enumerate(ours):
        np.testing.assert_array_equal(rle_to_mask(rle), m[i].numpy())
        assert area_from_rle(rle) == int(m[i].sum())


def test_rle_empty_batch_and_shape_check():
    assert masks_to_rle_counts(torch.zeros(0, 4, 4, dtype=torch.bool)) == []
    with pytest.raises(ValueError):
        masks_to_rle_counts(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})  # sums to 3, not 4


@pytest.mark.parametrize("seed", range(4))
def test_coco_string_byte_identical_to_pycocotools(seed):
    h, w = 30 + 17 * seed, 41 - 3 * seed
    m = random_masks(10 + seed, 5, h, w)
    m[0] = True
    m[1] = False
    for i, counts in enumerate(masks_to_rle_counts(m)):
        ref = coco_mask.encode(np.asfortranarray(m[i].numpy().astype(np.uint8)))
        ours = counts_to_coco_string(counts)
        assert ours == ref["counts"]
        np.testing.assert_array_equal(coco_string_to_counts(ref["counts"]), counts)
        assert rle_to_coco({"size": [h, w], "counts": counts.tolist()}) == {
            "size": [h, w],
            "counts": ref["counts"].decode("ascii"),
        }
        enc = encode_coco_rle(m[i].numpy())
        np.testing.assert_array_equal(decode_rle(enc), m[i].numpy())
        np.testing.assert_array_equal(
            coco_mask.decode({"size": [h, w], "counts": enc["counts"]}), m[i].numpy()
        )


def test_coco_string_large_and_negative_differences():
    # Runs far apart in size make the "difference to two runs back" negative and multi-group.
    counts = np.array([5, 100000, 3, 2, 70000, 1, 123456789, 0, 4], dtype=np.int64)
    h, w = 1, int(counts.sum())
    ref = coco_mask.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    assert counts_to_coco_string(counts) == ref["counts"]
    np.testing.assert_array_equal(coco_string_to_counts(ref["counts"]), counts)


def test_coco_string_rejects_garbage():
    with pytest.raises(ValueError):
        coco_string_to_counts(b"!!")
    with pytest.raises(ValueError):
        coco_string_to_counts(b"0P")  # last group has the continuation bit


# Boxes and NMS ------------------------------------------------------------------------------------------------


def test_masks_to_boxes_literal():
    m = torch.zeros(3, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True  # rows 1..2, cols 2..4
    m[1, 4, 5] = True
    boxes = masks_to_boxes(m)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[2, 1, 4, 2], [5, 4, 5, 4], [0, 0, 0, 0]]
    assert box_xyxy_to_xywh(boxes[0]).tolist() == [2, 1, 2, 1]  # inclusive: width = x1 - x0
    assert box_xywh_to_xyxy(box_xyxy_to_xywh(boxes)).tolist() == boxes.tolist()
    assert masks_to_boxes(torch.zeros(0, 5, 6, dtype=torch.bool)).shape == (0, 4)


def test_masks_to_boxes_matches_official():
    m = random_masks(3, 20, 31, 17)
    m[0] = False
    assert torch.equal(masks_to_boxes(m), amg.batched_mask_to_box(m))
    assert torch.equal(
        masks_to_boxes(m.reshape(4, 5, 31, 17)), amg.batched_mask_to_box(m.reshape(4, 5, 31, 17))
    )


def test_boxes_near_crop_edge_matches_official():
    g = torch.Generator().manual_seed(0)
    boxes = torch.randint(0, 120, (200, 4), generator=g)
    for crop in ([0, 0, 100, 80], [40, 30, 140, 120], [50, 0, 150, 80]):
        ours = boxes_near_crop_edge(boxes, crop, [0, 0, 150, 120])
        assert torch.equal(ours, amg.is_box_near_crop_edge(boxes, crop, [0, 0, 150, 120]))


def test_nms_literal_and_tie_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5])
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]
    # Equal scores keep input order.
    assert nms(boxes[2:], torch.ones(2), 0.7).tolist() == [0, 1]
    with pytest.raises(ValueError):
        nms(boxes, scores[:2], 0.7)


# Quality ------------------------------------------------------------------------------------------------------


def test_stability_score_literal_and_official():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])  # > 1: one pixel; > -1: three pixels
    assert stability_score(logits, 0.0, 1.0).tolist() == pytest.approx([1 / 3])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 20, 30, generator=g) * 3
    assert torch.equal(stability_score(x, 0.0, 1.0), amg.calculate_stability_score(x, 0.0, 1.0))
    assert torch.isnan(stability_score(torch.full((1, 2, 2), -5.0), 0.0, 1.0)).all()


def test_remove_small_regions_literal():
    m = np.zeros((8, 8), dtype=bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # one-pixel hole
    m[7, 7] = True  # one-pixel island
    filled, changed = remove_small_regions(m, 2, "holes")
    assert changed and filled[3, 3] and filled.sum() == m.sum() + 1
    cleaned, changed = remove_small_regions(m, 2, "islands")
    assert changed and not cleaned[7, 7] and cleaned.sum() == m.sum() - 1
    same, changed = remove_small_regions(m, 1, "islands")
    assert not changed and same is m
    only_small = np.zeros((8, 8), dtype=bool)
    only_small[0, 0] = only_small[5, 5] = only_small[5, 6] = True
    kept, _ = remove_small_regions(only_small, 10, "islands")  # every island small: keep the largest
    assert kept.sum() == 2 and kept[5, 5] and kept[5, 6]
    with pytest.raises(ValueError):
        remove_small_regions(m, 2, "blobs")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_official(mode):
    m = random_masks(5, 6, 40, 50)
    for i in range(m.shape[0]):
        mask = m[i].numpy()
        ours, changed = remove_small_regions(mask, 30, mode)
        ref, ref_changed = amg.remove_small_regions(mask, 30, mode)
        assert changed == ref_changed
        np.testing.assert_array_equal(ours, ref)


# Grids and crops ----------------------------------------------------------------------------------------------


def test_point_grid_literal_and_official():
    np.testing.assert_array_equal(
        build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    )
    for ours, ref in zip(
        build_all_layer_point_grids(32, 2, 2), amg.build_all_layer_point_grids(32, 2, 2), strict=True
    ):
        np.testing.assert_array_equal(ours, ref)
    assert [len(g) for g in build_all_layer_point_grids(9, 2, 2)] == [81, 16, 4]


@pytest.mark.parametrize("size", [(1500, 2250), (200, 300), (301, 199), (64, 64)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_crop_boxes_match_official(size, layers):
    assert generate_crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(size, layers, 512 / 1500)


def test_crop_boxes_count():
    boxes, layer_idx = generate_crop_boxes((1500, 2250), 2, 512 / 1500)
    assert len(boxes) == 21 and layer_idx.count(2) == 16 and boxes[0] == [0, 0, 2250, 1500]
