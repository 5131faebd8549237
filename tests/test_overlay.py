"""Overlay rendering: colours land where the masks are, every mask form renders the same, output is stable."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from segany.masks.rle import mask_to_rle
from segany.overlay import decode_mask, encode_png, mask_colors, render_overlay


def _image(h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _masks(h: int = 24, w: int = 32) -> list[np.ndarray]:
    big = np.zeros((h, w), bool)
    big[2:20, 3:28] = True
    small = np.zeros((h, w), bool)
    small[8:12, 10:15] = True  # inside big: must stay visible on top
    return [small, big]


def _coco(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed(m: np.ndarray) -> dict:
    (rle,) = mask_to_rle(torch.from_numpy(m)[None])
    return rle


def test_fill_blends_colour_inside_and_leaves_outside_untouched() -> None:
    img = _image()
    small, big = _masks()
    out = render_overlay(img, [small, big], alpha=0.5, outlines=False)
    colors = mask_colors(2).astype(np.float64)
    assert out.dtype == np.uint8 and out.shape == img.shape
    outside = ~(small | big)
    np.testing.assert_array_equal(out[outside], img[outside])
    # big is painted first (larger), small on top of it: a pixel of small has both blends applied in that order
    y, x = 10, 12
    expect = (img[y, x] * 0.5 + colors[1] * 0.5) * 0.5 + colors[0] * 0.5
    np.testing.assert_allclose(out[y, x], np.rint(expect), atol=1)
    y, x = 3, 4  # only in big
    np.testing.assert_allclose(out[y, x], np.rint(img[y, x] * 0.5 + colors[1] * 0.5), atol=1)
    assert not np.array_equal(out[small], img[small])


def test_outlines_are_drawn_at_full_colour_on_the_boundary_only() -> None:
    img = np.zeros((16, 16, 3), np.uint8)
    m = np.zeros((16, 16), bool)
    m[4:12, 4:12] = True
    out = render_overlay(img, [m], alpha=0.0, outlines=True)
    color = mask_colors(1)[0]
    np.testing.assert_array_equal(out[4, 4:12], np.tile(color, (8, 1)))  # top edge
    np.testing.assert_array_equal(out[11, 4:12], np.tile(color, (8, 1)))  # bottom edge
    np.testing.assert_array_equal(out[5:11, 5:11], 0)  # interior untouched with alpha 0
    np.testing.assert_array_equal(out[~m], 0)
    # a mask touching the image border is outlined along the border too
    full = np.ones((16, 16), bool)
    out = render_overlay(img, [full], alpha=0.0, outlines=True)
    np.testing.assert_array_equal(out[0, :], np.tile(color, (16, 1)))


def test_alpha_zero_without_outlines_is_identity() -> None:
    img = _image()
    np.testing.assert_array_equal(render_overlay(img, _masks(), alpha=0.0, outlines=False), img)
    np.testing.assert_array_equal(render_overlay(img, [], alpha=0.5), img)


@pytest.mark.parametrize("form", ["coco_str", "coco_bytes", "uncompressed"])
def test_rle_forms_render_like_binary_masks(form: str) -> None:
    img = _image()
    masks = _masks()
    if form == "coco_str":
        encoded = [_coco(m) for m in masks]
    elif form == "coco_bytes":
        encoded = [{**_coco(m), "counts": _coco(m)["counts"].encode()} for m in masks]
    else:
        encoded = [_uncompressed(m) for m in masks]
    for e, m in zip(encoded, masks, strict=True):
        np.testing.assert_array_equal(decode_mask(e, m.shape), m)
    np.testing.assert_array_equal(render_overlay(img, encoded), render_overlay(img, masks))


def test_bad_inputs_raise_value_error() -> None:
    img = _image()
    small, _ = _masks()
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(img.astype(np.float32), [small])
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(img[..., 0], [small])
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(img, [small[:-1]])
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(img, [{"size": [3, 3], "counts": "9"}])
    with pytest.raises(ValueError, match="size"):
        render_overlay(img, [{"counts": "9"}])
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(img, [small], alpha=1.5)


def test_colours_are_distinct_and_png_is_deterministic() -> None:
    colors = mask_colors(64)
    assert len({tuple(c) for c in colors}) == 64
    img = _image()
    a = encode_png(render_overlay(img, _masks()))
    b = encode_png(render_overlay(img.copy(), _masks()))
    assert a == b
    decoded = np.asarray(Image.open(io.BytesIO(a)))
    np.testing.assert_array_equal(decoded, render_overlay(img, _masks()))
