"""Coloured-mask overlays for people to look at.

Used by ``segany auto --overlay`` and ``segany segment``. Masks come in any of the forms the generator emits
(binary arrays, COCO RLE with string or bytes ``counts``, uncompressed RLE with a list of run lengths), so callers
never convert before drawing. Colours depend only on a mask's position in the list, so the same masks always
render to the same bytes.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# A mask as accepted by render_overlay: HxW bool/0-1 array, or an RLE dict {"size": [h, w], "counts": ...}.
MaskLike = np.ndarray | Mapping[str, Any]

_GOLDEN = 0.618033988749895


def mask_colors(n: int) -> np.ndarray:
    """Return ``n`` distinct, saturated RGB colours as ``uint8[n, 3]``.

    Hues step by the golden ratio so neighbouring indices get far-apart colours however many masks there are.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colors = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        hue = (0.1 + i * _GOLDEN) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75  # alternate brightness to separate hues that land close together
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors[i] = (round(r * 255), round(g * 255), round(b * 255))
    return colors


def decode_mask(mask: MaskLike, shape: tuple[int, int]) -> np.ndarray:
    """Turn one mask (binary array or COCO/uncompressed RLE dict) into a ``bool[H, W]`` array.

    Raises:
        ValueError: the mask's size does not match ``shape`` or the dict is not an RLE.
    """
    if isinstance(mask, Mapping):
        if "size" not in mask or "counts" not in mask:
            raise ValueError("an RLE mask needs 'size' and 'counts'")
        h, w = (int(v) for v in mask["size"])
        if (h, w) != shape:
            raise ValueError(f"mask size {(h, w)} does not match image size {shape}")
        from segany.masks.rle import decode_rle

        return decode_rle({"size": [h, w], "counts": mask["counts"]})
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise ValueError(f"mask shape {arr.shape} does not match image size {shape}")
    return arr.astype(bool, copy=False)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render_overlay(
    image_uint8: np.ndarray,
    masks: Sequence[MaskLike],
    alpha: float = 0.45,
    outlines: bool = True,
) -> np.ndarray:
    """Blend each mask's colour into the image and optionally outline it.

    Masks are painted largest first, so small masks stay visible on top of the large ones they sit in; ties keep
    list order. Colour ``i`` (see ``mask_colors``) goes to ``masks[i]``, whatever the painting order.

    Arguments:
        image_uint8: ``uint8[H, W, 3]`` RGB image (not modified).
        masks: binary ``[H, W]`` arrays and/or RLE dicts of the same size.
        alpha: opacity of the fill, in [0, 1].
        outlines: draw each mask's 1-pixel boundary in its colour at full opacity.

    Returns:
        ``uint8[H, W, 3]`` RGB overlay.
    """
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    shape = (image.shape[0], image.shape[1])
    decoded = [decode_mask(m, shape) for m in masks]
    colors = mask_colors(len(decoded)).astype(np.float32)
    out = image.astype(np.float32)
    order = sorted(range(len(decoded)), key=lambda i: -int(decoded[i].sum()))
    for i in order:
        m = decoded[i]
        out[m] = out[m] * (1.0 - alpha) + colors[i] * alpha
        if outlines:
            out[_boundary(m)] = colors[i]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_png(image_uint8: np.ndarray) -> bytes:
    """Encode an RGB ``uint8`` image as PNG bytes (deterministic: no timestamps or text chunks)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
