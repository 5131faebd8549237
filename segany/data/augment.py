"""Training augmentations on :class:`~segany.data.sample.Sample` (numpy + OpenCV, no torch).

Every geometric operation moves the image, the masks and the ignore masks together with the same pixel grid,
so masks stay aligned with the image content. Randomness always comes from an explicit ``np.random.Generator``.

* :func:`resize_longest` / :func:`pad_to_square` / :func:`resize_and_pad`: SAM's input frame (longest side to
  ``size``, same rounding as ``ResizeLongestSide``; pad bottom/right).
* :func:`hflip`, :func:`large_scale_jitter` (scale 0.1-2.0 of the target size, random crop or pad back to it),
  :func:`color_jitter`.
* :func:`copy_paste`: paste real instances of one image onto another real image (Simple Copy-Paste, Ghiasi et al.
  2021), cutting the occluded parts out of the masks underneath.
* :class:`AugmentConfig` + :func:`augment_sample`: the pipeline the mixed dataset applies.

Padding uses SAM's pixel mean (124, 116, 104) by default: SAM normalises and *then* pads with 0, so a pad of the
mean colour normalises to ~0 and the model sees the same padding in training as at inference.
Resizing uses ``cv2.INTER_AREA`` when shrinking (no aliasing at scale 0.1) and ``INTER_LINEAR`` when enlarging;
masks are resized as 0/255 with the same interpolation and thresholded at 128.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from segany.data.sample import Sample

__all__ = [
    "SAM_PAD",
    "AugmentConfig",
    "augment_sample",
    "color_jitter",
    "copy_paste",
    "hflip",
    "large_scale_jitter",
    "longest_side_shape",
    "pad_to_square",
    "resize_and_pad",
    "resize_longest",
]

SAM_PAD: tuple[int, int, int] = (124, 116, 104)  # round(SAM pixel_mean)


def longest_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``size``, rounded as SAM's ``ResizeLongestSide`` does."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


Window = tuple[int, int, int, int]  # y0, x0, height, width of a crop in the resized frame


def _resize_stack(masks: np.ndarray, hw: tuple[int, int], interp: int, window: Window) -> np.ndarray:
    """Resize an (N, H, W) bool stack to ``hw`` and keep ``window`` of it, a few masks at a time.

    Chunking bounds the memory of a 2x jitter (N full-size masks at 2048² would be gigabytes), and OpenCV 5's
    INTER_AREA refuses more than 4 channels at non-integer scales.
    """
    y0, x0, h, w = window
    out = np.zeros((len(masks), h, w), dtype=bool)
    step = 4 if interp == cv2.INTER_AREA else 16
    for start in range(0, len(masks), step):
        chunk = masks[start : start + step].transpose(1, 2, 0).astype(np.uint8) * 255
        res = cv2.resize(chunk, (hw[1], hw[0]), interpolation=interp)
        if res.ndim == 2:  # cv2 drops a single channel axis
            res = res[:, :, None]
        out[start : start + res.shape[2]] = res[y0 : y0 + h, x0 : x0 + w].transpose(2, 0, 1) >= 128
    return out


def _resize(sample: Sample, hw: tuple[int, int], window: Window | None = None) -> Sample:
    """Resize to ``hw`` (then keep ``window``, default all) with one interpolation for image and masks."""
    window = window or (0, 0, *hw)
    if hw == (sample.height, sample.width) and window == (0, 0, *hw):
        return sample
    if min(hw) < 1:
        raise ValueError(f"{sample.source}: cannot resize {sample.height}x{sample.width} to {hw}")
    y0, x0, h, w = window
    shrink = hw[0] * hw[1] < sample.height * sample.width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    image = cv2.resize(sample.image, (hw[1], hw[0]), interpolation=interp)[y0 : y0 + h, x0 : x0 + w]
    masks = _resize_stack(sample.masks, hw, interp, window)
    ignore = None if sample.ignore is None else _resize_stack(sample.ignore, hw, interp, window) & ~masks
    return replace(sample, image=np.ascontiguousarray(image), masks=masks, ignore=ignore)


def resize_longest(sample: Sample, size: int = 1024) -> Sample:
    """Scale so that the longest side is ``size`` (aspect kept)."""
    return _resize(sample, longest_side_shape(sample.height, sample.width, size))


def pad_to_square(sample: Sample, size: int = 1024, fill: tuple[int, int, int] = SAM_PAD) -> Sample:
    """Pad bottom/right to ``size`` × ``size`` (masks and ignore with False)."""
    h, w = sample.height, sample.width
    if h > size or w > size:
        raise ValueError(f"{sample.source}: {h}x{w} is larger than the pad target {size}")
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = np.asarray(fill, dtype=np.uint8)
    image[:h, :w] = sample.image

    def pad(stack: np.ndarray) -> np.ndarray:
        out = np.zeros((len(stack), size, size), dtype=bool)
        out[:, :h, :w] = stack
        return out

    ignore = None if sample.ignore is None else pad(sample.ignore)
    return replace(sample, image=image, masks=pad(sample.masks), ignore=ignore)


def resize_and_pad(sample: Sample, size: int = 1024, fill: tuple[int, int, int] = SAM_PAD) -> Sample:
    """SAM's input frame: longest side to ``size``, then pad to a square."""
    return pad_to_square(resize_longest(sample, size), size, fill)


def hflip(sample: Sample) -> Sample:
    """Mirror left-right."""
    return replace(
        sample,
        image=np.ascontiguousarray(sample.image[:, ::-1]),
        masks=np.ascontiguousarray(sample.masks[:, :, ::-1]),
        ignore=None if sample.ignore is None else np.ascontiguousarray(sample.ignore[:, :, ::-1]),
    )


def _drop_empty(sample: Sample) -> Sample:
    if len(sample.masks) == 0:
        return sample
    keep = np.asarray(sample.masks.any(axis=(1, 2)))
    return sample if keep.all() else sample.select(keep)


def large_scale_jitter(
    sample: Sample,
    rng: np.random.Generator,
    size: int = 1024,
    scale: tuple[float, float] = (0.1, 2.0),
    pad: bool = True,
    fill: tuple[int, int, int] = SAM_PAD,
) -> Sample:
    """Large-scale jitter: longest side to ``size × s`` with ``s ~ U(scale)``, then a random ``size`` crop.

    A larger-than-target result is cropped at a uniformly random offset; a smaller one is padded (bottom/right)
    back to ``size`` × ``size`` unless ``pad=False``. Masks cut away entirely by the crop are dropped.
    """
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must satisfy 0 < lo <= hi, got {scale}")
    s = float(rng.uniform(lo, hi))
    h, w = longest_side_shape(sample.height, sample.width, max(1, round(size * s)))
    h, w = max(h, 1), max(w, 1)
    y0 = int(rng.integers(0, h - size + 1)) if h > size else 0
    x0 = int(rng.integers(0, w - size + 1)) if w > size else 0
    out = _drop_empty(_resize(sample, (h, w), (y0, x0, min(h, size), min(w, size))))
    return pad_to_square(out, size, fill) if pad else out


def color_jitter(
    sample: Sample,
    rng: np.random.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.05,
) -> Sample:
    """Random brightness, contrast, saturation (factors in ``[1 - x, 1 + x]``) and hue (shift in ``[-hue, hue]``
    turns of the colour wheel), applied in that order; masks are untouched."""
    img = sample.image.astype(np.float32)
    if brightness:
        img *= rng.uniform(1 - brightness, 1 + brightness)
    if contrast:
        grey_mean = float((img @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
        img = (img - grey_mean) * rng.uniform(1 - contrast, 1 + contrast) + grey_mean
    if saturation:
        grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
        img = (img - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    out: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if hue:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)  # H in 0..255 for a full turn
        shift = int(round(rng.uniform(-hue, hue) * 256))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + shift) % 256).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return replace(sample, image=out)


def copy_paste(
    dst: Sample,
    src: Sample,
    rng: np.random.Generator,
    max_objects: int | None = None,
    min_area: int = 1,
) -> Sample:
    """Paste a random non-empty subset of ``src``'s instances (their pixels and masks) onto ``dst``.

    Both samples must already share one size (apply :func:`large_scale_jitter` to each first, as Simple
    Copy-Paste does). ``dst``'s masks and ignore masks lose the pasted pixels (they are now occluded); a ``dst``
    mask left with fewer than ``min_area`` pixels is dropped. Pasted masks come after the remaining ``dst`` masks.
    """
    if (src.height, src.width) != (dst.height, dst.width):
        raise ValueError(
            f"copy_paste needs equal sizes, got {dst.height}x{dst.width} and {src.height}x{src.width}"
        )
    if len(src.masks) == 0:
        return dst
    n = len(src.masks)
    k = int(rng.integers(1, min(n, max_objects or n) + 1))
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    pasted = src.select(chosen)
    alpha = np.asarray(pasted.masks.any(axis=0))

    image = np.where(alpha[:, :, None], src.image, dst.image)
    kept_masks = dst.masks & ~alpha
    keep = kept_masks.sum(axis=(1, 2)) >= min_area  # (also right for a dst with no masks left)
    below = dst.select(keep)
    below_masks = kept_masks[keep]
    below_ignore = None if below.ignore is None else below.ignore & ~alpha

    masks = np.concatenate([below_masks, pasted.masks])
    if below_ignore is None and pasted.ignore is None:
        ignore = None
    else:
        ignore = np.concatenate(
            [
                below_ignore if below_ignore is not None else np.zeros_like(below_masks),
                pasted.ignore if pasted.ignore is not None else np.zeros_like(pasted.masks),
            ]
        )
    cats = None
    if below.category_ids is not None and pasted.category_ids is not None:
        cats = np.concatenate([below.category_ids, pasted.category_ids])
    return Sample(
        image=image, masks=masks, ignore=ignore, category_ids=cats, source=f"{dst.source}+{src.source}"
    )


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment_sample` does. ``lsj_scale=None`` means plain resize-and-pad (no jitter)."""

    size: int = 1024
    lsj_scale: tuple[float, float] | None = (0.1, 2.0)
    hflip_p: float = 0.5
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.05
    copy_paste_p: float = 0.5
    copy_paste_max_objects: int | None = None

    def __post_init__(self) -> None:
        for name in ("hflip_p", "color_jitter_p", "copy_paste_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")


def _geometry(sample: Sample, rng: np.random.Generator, cfg: AugmentConfig) -> Sample:
    if cfg.lsj_scale is None:
        out = resize_and_pad(sample, cfg.size)
    else:
        out = large_scale_jitter(sample, rng, cfg.size, cfg.lsj_scale)
    return hflip(out) if rng.random() < cfg.hflip_p else out


def augment_sample(
    sample: Sample,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    partner: Sample | Callable[[], Sample] | None = None,
) -> Sample:
    """Geometry (LSJ or resize-and-pad, then flip), copy-paste from ``partner`` (given its own geometry draw)
    with probability ``copy_paste_p``, then colour jitter. Output is ``size`` × ``size``, without empty masks.

    ``partner`` may be a function returning the sample, so that it is only loaded when the paste happens.
    """
    out = _geometry(sample, rng, cfg)
    if partner is not None and rng.random() < cfg.copy_paste_p:
        other = partner() if callable(partner) else partner
        if len(other.masks):
            out = copy_paste(out, _geometry(other, rng, cfg), rng, cfg.copy_paste_max_objects)
    if rng.random() < cfg.color_jitter_p:
        out = color_jitter(out, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    return _drop_empty(out)  # tiny objects can vanish when shrunk
