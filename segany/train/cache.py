"""A compact, pickle-free pack of training samples, pre-resized to the model's input size.

Why: the readers decode full-size JPEGs and PNG label maps and rasterise polygons on every access; a training
run touches each image hundreds of times. Packing once (images re-encoded as JPEG at <= ``image_size`` on the
long side, masks as COCO RLE) makes each access a small JPEG decode plus RLE decode, keeps every data-loader
worker's memory small, and gives one file (tens of MB for all of ``shared/data``'s training folders) that can
travel to a GPU machine without the raw data.

BSDS500 yields one sample per (image, annotator); the pack merges the annotators' regions of one image into one
entry, so the image is stored and sampled once.

A pack made by `pack_sources` also records each entry's training folder (its *origin*) and how many items that
folder's reader had, so a run reading the pack instead of the folders keeps the config's per-folder sampling
weights (`PackedSamples.of_origin`, `sampling_size`) — otherwise a pack is one uniformly sampled source.

File format (``numpy.savez``, loaded with ``allow_pickle=False``): ``jpeg`` uint8 blob + ``jpeg_off`` int64
offsets; ``rle`` uint8 blob of concatenated RLE count strings + ``rle_off``; ``mask_image`` int64 image index per
mask; ``sizes`` int64 ``[n_images, 2]`` (H, W); ``sources`` a newline-joined utf-8 blob; ``meta`` JSON; from
`pack_sources` also ``origins`` (newline-joined, one per image) and ``meta["origin_items"]``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segany.data.sample import Sample, drop_large_masks

if TYPE_CHECKING:
    from segany.data.mixed import SampleSource

FORMAT = "segany-pack-v1"


def _resize_longest(sample: Sample, long_side: int) -> Sample:
    import cv2

    h, w = sample.height, sample.width
    scale = long_side / max(h, w)
    if scale >= 1.0:
        return sample
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    image = cv2.resize(sample.image, (nw, nh), interpolation=cv2.INTER_AREA)
    masks = np.zeros((len(sample.masks), nh, nw), dtype=bool)
    for i, m in enumerate(sample.masks):
        masks[i] = cv2.resize(m.astype(np.uint8) * 255, (nw, nh), interpolation=cv2.INTER_AREA) >= 128
    return Sample(image=image, masks=masks, source=sample.source)


def _group_key(source: str) -> str:
    # "bsds500/train/100075#2" -> one entry per image, whatever the annotator
    return source.split("#", 1)[0]


def pack_samples(
    samples: Iterable[Sample],
    path: str | Path,
    long_side: int,
    max_mask_fraction: float = 0.9,
    min_mask_pixels: int = 16,
    jpeg_quality: int = 92,
) -> dict[str, int]:
    """Resize, filter and pack ``samples`` into ``path`` (written atomically). Returns counts.

    Masks covering more than ``max_mask_fraction`` of the image (paper: 90 %) or fewer than ``min_mask_pixels``
    pixels after resizing are dropped; images left without masks are skipped.
    """
    return _pack(
        (("", s) for s in samples), {}, path, long_side, max_mask_fraction, min_mask_pixels, jpeg_quality
    )


def pack_sources(
    sources: Sequence[tuple[str, SampleSource]],
    path: str | Path,
    long_side: int,
    max_mask_fraction: float = 0.9,
    min_mask_pixels: int = 16,
    jpeg_quality: int = 92,
    validation_fraction: float = 0.0,
) -> dict[str, int]:
    """`pack_samples` over named training folders ``(origin, reader)``, remembering each entry's origin.

    With ``validation_fraction > 0`` the images of the validation split (`segany.data.split.is_validation`) are
    left out, and the pack records the fraction so that evaluations can check they read the held-out part.
    """
    from segany.data.split import is_validation

    names = [name for name, _ in sources]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"origins must be distinct, non-empty names; got {names}")
    tagged = (
        (name, sample)
        for name, reader in sources
        for sample in (reader[i] for i in range(len(reader)))
        if not (validation_fraction > 0 and is_validation(sample.source, validation_fraction))
    )
    items = {name: len(reader) for name, reader in sources}
    return _pack(
        tagged, items, path, long_side, max_mask_fraction, min_mask_pixels, jpeg_quality, validation_fraction
    )


def _pack(
    tagged: Iterable[tuple[str, Sample]],
    origin_items: dict[str, int],
    path: str | Path,
    long_side: int,
    max_mask_fraction: float,
    min_mask_pixels: int,
    jpeg_quality: int,
    validation_fraction: float = 0.0,
) -> dict[str, int]:
    import cv2
    from pycocotools import mask as mask_utils

    jpegs: list[bytes] = []
    rles: list[bytes] = []
    mask_image: list[int] = []
    sizes: list[tuple[int, int]] = []
    sources: list[str] = []
    origins: list[str] = []
    index: dict[str, int] = {}
    for origin, sample in tagged:
        s = drop_large_masks(_resize_longest(sample, long_side), max_mask_fraction)
        if len(s.masks) == 0:
            continue
        keep = s.masks.reshape(len(s.masks), -1).sum(1) >= min_mask_pixels
        s = s.select(keep)
        if len(s.masks) == 0:
            continue
        key = _group_key(s.source)
        if key not in index or sizes[index[key]] != (s.height, s.width):
            ok, buf = cv2.imencode(".jpg", s.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise ValueError(f"{s.source}: JPEG encoding failed")
            index[key] = len(jpegs)
            jpegs.append(buf.tobytes())
            sizes.append((s.height, s.width))
            sources.append(key)
            origins.append(origin)
        encoded = mask_utils.encode(np.asfortranarray(s.masks.transpose(1, 2, 0).astype(np.uint8)))
        for r in encoded:
            rles.append(r["counts"])
            mask_image.append(index[key])
    if not jpegs:
        raise ValueError("no sample with a usable mask to pack")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    meta: dict[str, object] = {
        "format": FORMAT,
        "long_side": long_side,
        "max_mask_fraction": max_mask_fraction,
        "validation_fraction": validation_fraction,
    }
    arrays: dict[str, np.ndarray] = {
        "jpeg": np.frombuffer(b"".join(jpegs), dtype=np.uint8),
        "jpeg_off": np.cumsum([0] + [len(b) for b in jpegs]).astype(np.int64),
        "rle": np.frombuffer(b"".join(rles), dtype=np.uint8),
        "rle_off": np.cumsum([0] + [len(b) for b in rles]).astype(np.int64),
        "mask_image": np.asarray(mask_image, dtype=np.int64),
        "sizes": np.asarray(sizes, dtype=np.int64),
        "sources": np.frombuffer("\n".join(sources).encode(), dtype=np.uint8),
    }
    if origin_items:
        meta["origin_items"] = origin_items
        arrays["origins"] = np.frombuffer("\n".join(origins).encode(), dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp, allow_pickle=False, **arrays)
    tmp.replace(path)
    return {"images": len(jpegs), "masks": len(rles)}


def decode_rle_counts(counts: bytes, height: int, width: int) -> np.ndarray:
    """Decode a COCO compressed-RLE count string into an ``(H, W)`` bool mask, in numpy alone.

    Why not pycocotools: a pack must be readable where only numpy and OpenCV are installed (a GPU machine
    that cannot fetch packages). The format (pycocotools' ``rleFrString``): each count is a little-endian group
    of 5-bit chunks stored as ``chr(48 + chunk | 0x20 if more)``, the last chunk's bit 0x10 sign-extends, and
    counts from the fourth on are stored as the difference to the count two places before. Runs alternate
    0 / 1 starting with 0 over the column-major (Fortran-order) pixels.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros((height, width), dtype=bool)
    more = (c & 0x20) != 0
    ends = np.flatnonzero(~more)  # last chunk of each count
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(len(c)) - starts[group]  # chunk position inside its count
    vals = np.zeros(len(ends), dtype=np.int64)
    np.add.at(vals, group, (c & 0x1F) << (5 * k))
    neg = (c[ends] & 0x10) != 0
    vals[neg] -= np.int64(1) << (5 * (k[ends][neg] + 1))  # sign extension of the last chunk
    # delta coding: x[m] += x[m - 2] for m > 2, i.e. running sums along each parity from index 1 and 2
    out = vals.copy()
    out[1::2] = np.cumsum(vals[1::2])
    if len(vals) > 2:
        out[2::2] = np.cumsum(vals[2::2])
    if (out < 0).any() or out.sum() != height * width:
        raise ValueError(f"corrupt RLE: counts sum to {out.sum()}, expected {height * width}")
    flat = np.repeat(np.arange(len(out)) % 2 == 1, out)
    return flat.reshape(width, height).T


def read_pack_meta(path: str | Path) -> dict[str, Any]:
    """A pack's ``meta`` record alone (the npz members are read lazily: no image or mask data is loaded)."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta: dict[str, Any] = json.loads(z["meta"].tobytes().decode())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return meta


class PackedSamples:
    """Map-style dataset over a pack: ``[i] -> Sample`` (image at pack resolution, all its masks)."""

    def __init__(self, path: str | Path, origin: str | None = None) -> None:
        """``origin``: only the entries packed from that training folder (a `pack_sources` pack)."""
        self.path = Path(path)
        self.meta = read_pack_meta(self.path)
        with np.load(self.path, allow_pickle=False) as z:
            self._jpeg, self._jpeg_off = z["jpeg"], z["jpeg_off"]
            self._rle, self._rle_off = z["rle"], z["rle_off"]
            mask_image = z["mask_image"]
            self.sizes = z["sizes"]
            self.sources = z["sources"].tobytes().decode().split("\n")
            self._origins = (
                np.asarray(z["origins"].tobytes().decode().split("\n")) if "origins" in z.files else None
            )
        order = np.argsort(mask_image, kind="stable")
        bounds = np.searchsorted(mask_image[order], np.arange(len(self.sizes) + 1))
        self._masks_of = [order[bounds[i] : bounds[i + 1]] for i in range(len(self.sizes))]
        self.origin: str | None = None
        self.origin_items: dict[str, int] = dict(self.meta.get("origin_items", {}))
        self._entries = np.arange(len(self.sizes))
        if origin is not None:
            self._entries = self.of_origin(origin)._entries
            self.origin = origin

    def of_origin(self, origin: str) -> PackedSamples:
        """The entries packed from one training folder, sharing this pack's loaded data (no second read)."""
        if self._origins is None:
            raise ValueError(
                f"{self.path}: this pack does not record its folders; re-pack it with `segany train --pack`"
            )
        if origin not in self.origin_items:
            raise ValueError(
                f"{self.path}: no folder {origin!r} in this pack; it has {sorted(self.origin_items)}"
            )
        view = copy.copy(self)
        view.origin = origin
        view._entries = np.flatnonzero(self._origins == origin)
        return view

    @property
    def long_side(self) -> int:
        return int(self.meta["long_side"])

    @property
    def sampling_size(self) -> int:
        """The item count a folder source would have had: ``weight * sampling_size`` is this source's share.

        It differs from ``len`` where packing merged items (BSDS500's annotators of one image).
        """
        return self.origin_items[self.origin] if self.origin is not None else len(self)

    def __len__(self) -> int:
        return len(self._entries)

    def num_masks(self, index: int) -> int:
        return len(self._masks_of[self._entries[index]])

    def __getitem__(self, index: int) -> Sample:
        import cv2

        if not 0 <= index < len(self):
            raise IndexError(index)
        index = int(self._entries[index])
        buf = self._jpeg[self._jpeg_off[index] : self._jpeg_off[index + 1]]
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError(f"pack entry {index} ({self.sources[index]}): corrupt JPEG")
        image = decoded[:, :, ::-1].copy()
        h, w = (int(v) for v in self.sizes[index])
        masks = np.stack(
            [
                decode_rle_counts(self._rle[self._rle_off[j] : self._rle_off[j + 1]].tobytes(), h, w)
                for j in self._masks_of[index]
            ]
        )
        return Sample(image=image, masks=masks, source=self.sources[index])
