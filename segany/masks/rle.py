"""Run-length encodings of binary masks: uncompressed RLE and COCO's compressed RLE string.

Both follow the COCO convention that SA-1B and the official automatic generator use: pixels are read in
column-major (Fortran) order and the runs alternate 0, 1, 0, ..., starting with a (possibly empty) run of zeros.
The compressed string is the LEB128-like code of ``pycocotools`` (``rleToString``/``rleFrString``), written here
in vectorised numpy so that encoding thousands of masks needs no per-run Python loop; it is byte-identical to
``pycocotools.mask.encode``/``frPyObjects`` (checked by the tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "area_from_rle",
    "coco_rle_to_counts",
    "counts_to_coco_string",
    "coco_string_to_counts",
    "decode_rle",
    "encode_coco_rle",
    "mask_to_rle",
    "masks_to_rle_counts",
    "rle_counts_to_mask",
    "rle_to_coco",
    "rle_to_mask",
]


def masks_to_rle_counts(masks: torch.Tensor) -> list[np.ndarray]:
    """Run lengths of a batch of binary masks, all masks at once.

    Arguments:
      masks: ``[B, H, W]`` bool tensor (any device).

    Returns:
      B int64 arrays of run lengths in column-major order, zeros first (a mask whose first pixel is set starts
      with a 0-length run), summing to ``H * W``.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [B, H, W], got shape {tuple(masks.shape)}")
    b, h, w = masks.shape
    n = h * w
    if b == 0:
        return []
    if n == 0:
        return [np.zeros(1, dtype=np.int64) for _ in range(b)]
    flat = masks.to(torch.bool).transpose(1, 2).reshape(b, n)  # B x (W*H), Fortran order
    change = flat[:, 1:] ^ flat[:, :-1]  # B x (n-1): True where pixel i+1 differs from pixel i
    if change.device.type == "cpu":
        where = np.flatnonzero(change.numpy()).astype(np.int64)
    else:
        where = change.reshape(-1).nonzero()[:, 0].cpu().numpy().astype(np.int64)
    rows, cuts = np.divmod(where, n - 1)
    cuts += 1
    first = flat[:, 0].cpu().numpy()
    per_mask = np.bincount(rows, minlength=b)
    # Each mask's boundaries are [0, cuts..., n] (plus a leading 0 when its first pixel is set, which gives the
    # 0-length first run); lay all masks' boundaries end to end and difference once.
    lead = first.astype(np.int64)
    block = per_mask + 2 + lead
    start = np.cumsum(block) - block
    bounds = np.empty(int(block.sum()), dtype=np.int64)
    bounds[start] = 0
    bounds[start + lead] = 0
    bounds[start + block - 1] = n
    rank = np.arange(rows.size) - (np.cumsum(per_mask) - per_mask)[rows]
    bounds[start[rows] + lead[rows] + 1 + rank] = cuts
    runs = np.diff(bounds)
    # Drop the differences that straddle two masks (between one block's end and the next block's start).
    keep = np.ones(runs.size, dtype=bool)
    keep[(start[1:] - 1)] = False
    runs = runs[keep]
    return np.split(runs, np.cumsum(block - 1)[:-1])


def mask_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed COCO RLEs (``{"size": [h, w], "counts": [int, ...]}``) of a ``[B, H, W]`` bool tensor."""
    h, w = int(masks.shape[-2]), int(masks.shape[-1])
    return [{"size": [h, w], "counts": c.tolist()} for c in masks_to_rle_counts(masks)]


def rle_counts_to_mask(counts: np.ndarray | list[int], h: int, w: int) -> np.ndarray:
    """Decode run lengths (column-major, zeros first) into an ``[h, w]`` bool array."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("RLE counts must be non-negative")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {h * w} for size {h}x{w}")
    values = (np.arange(runs.size) % 2).astype(bool)
    return np.repeat(values, runs).reshape(w, h).T


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode an uncompressed RLE dict into an ``[h, w]`` bool array."""
    h, w = rle["size"]
    return rle_counts_to_mask(rle["counts"], int(h), int(w))


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of set pixels of an uncompressed RLE (the sum of its odd runs)."""
    return int(np.asarray(rle["counts"], dtype=np.int64)[1::2].sum())


# COCO compressed RLE -------------------------------------------------------------------------------------------
# Each value is written as 5-bit groups, least significant first, with 0x20 as "more follows" and the sign taken
# from bit 0x10 of the last group; every character is offset by 48. From the fourth run on (index > 2, a quirk
# of pycocotools kept for byte compatibility), a run is stored as the difference to the run two places before.

_MAX_GROUPS = 13  # ceil(64 / 5): enough for any int64 difference


def counts_to_coco_string(counts: np.ndarray | list[int]) -> bytes:
    """Compress run lengths into pycocotools' RLE byte string."""
    runs = np.asarray(counts, dtype=np.int64)
    x = runs.copy()
    if runs.size > 3:
        x[3:] -= runs[1:-2]
    groups = np.zeros((x.size, _MAX_GROUPS), dtype=np.uint8)
    used = np.zeros((x.size, _MAX_GROUPS), dtype=bool)
    active = np.ones(x.size, dtype=bool)
    for k in range(_MAX_GROUPS):
        if not active.any():
            break
        c = (x & 0x1F).astype(np.uint8)
        x = x >> 5  # arithmetic shift, as in C for a signed long
        more = np.where((c & 0x10) != 0, x != -1, x != 0)
        groups[:, k] = np.where(more, c | 0x20, c) + 48
        used[:, k] = active
        active = active & more
    return groups[used].tobytes()


def coco_string_to_counts(s: bytes | str) -> np.ndarray:
    """Decompress pycocotools' RLE byte string into run lengths (int64)."""
    raw = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = raw.astype(np.int64) - 48
    if c.min() < 0 or c.max() > 0x3F:
        raise ValueError("not a COCO RLE string: characters outside '0'..'o'")
    last = (c & 0x20) == 0
    if not last[-1]:
        raise ValueError("truncated COCO RLE string")
    value_id = np.concatenate([[0], np.cumsum(last)[:-1]])
    first_of_value = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    k = np.arange(c.size) - first_of_value[value_id]  # group index within its value
    x = np.add.reduceat((c & 0x1F) << (5 * k), first_of_value)
    n_groups = np.flatnonzero(last) - first_of_value + 1
    negative = (c[last] & 0x10) != 0
    x[negative] |= np.left_shift(np.int64(-1), 5 * n_groups[negative])
    # Undo the differences to the run two places before (indices > 2): separate running sums for odd and even.
    runs = x.copy()
    if runs.size > 3:
        runs[1::2] = np.cumsum(x[1::2])
        runs[0] = x[0]
        runs[2::2] = np.cumsum(x[2::2])
    return runs


def rle_to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE dict -> COCO RLE dict with a str ``counts`` (JSON-serialisable, as the official AMG)."""
    h, w = rle["size"]
    return {"size": [int(h), int(w)], "counts": counts_to_coco_string(rle["counts"]).decode("ascii")}


def coco_rle_to_counts(rle: dict[str, Any]) -> np.ndarray:
    """Run lengths of a COCO RLE dict whose ``counts`` is a compressed str/bytes or an uncompressed list."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return coco_string_to_counts(counts)
    return np.asarray(counts, dtype=np.int64)


def encode_coco_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Encode one ``[h, w]`` binary mask as a COCO RLE dict with a str ``counts``."""
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if t.dim() != 2:
        raise ValueError(f"mask must be [h, w], got shape {tuple(t.shape)}")
    (counts,) = masks_to_rle_counts(t.to(torch.bool)[None])
    h, w = t.shape
    return {"size": [int(h), int(w)], "counts": counts_to_coco_string(counts).decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE dict (compressed or uncompressed counts) into an ``[h, w]`` bool array."""
    h, w = rle["size"]
    return rle_counts_to_mask(coco_rle_to_counts(rle), int(h), int(w))
