"""Plain ``images/`` + ``masks/`` folders: the GrabCut and Berkeley benchmarks, and the format for your own data.

Folder format (this is the documented format for evaluating or fine-tuning on your own images)::

    <root>/images/<stem>.<ext>      .jpg .jpeg .png .bmp .tif .tiff .webp .gif, any letter case
    <root>/masks/<stem>.png         the object of image <stem>
    <root>/masks/<stem>_<k>.png     object k (k = 0, 1, 2, ...) of image <stem>, for several objects per image

Masks are matched to images by file stem; mask files may be ``.png``, ``.bmp``, ``.tif``/``.tiff`` or ``.gif``
(lossless formats only: JPEG artefacts would invent foreground). A ``<stem>_<k>`` file belongs to image
``<stem>_<k>`` if such an image exists, otherwise to image ``<stem>``. Masks are in the displayed (EXIF-applied)
orientation of their image and must have its size.

Two ways to read a mask file (``kind``):

* ``"binary"`` (default): one object per file. 0 = background, 128 = **ignore** (neither object nor background:
  GrabCut's uncertain band), any other non-zero value = object. So 0/1, 0/255 and 0/128/255 files all work.
* ``"labels"``: each ``<stem>.png`` is an instance-id map (8-bit, 16-bit or palette PNG): 0 = background, each
  other value = one object; ``ignore_label`` (e.g. 255) marks pixels ignored for every object.

GrabCut (``masks/`` 0/128/255, images with mixed ``.jpg``/``.JPG``/``.bmp``) and Berkeley (0/255) are both this
format with ``kind="binary"``: :class:`MaskFolder` reads them directly. Both are evaluation-only data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

from segany.data.sample import Sample
from segany.images import load_image, load_mask

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIXES", "MaskFolder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")
_INSTANCE = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)$")


def _index(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in suffixes or not p.is_file():
            continue
        if p.stem in out:
            raise ValueError(f"two {what} files share the stem {p.stem!r}: {out[p.stem].name}, {p.name}")
        out[p.stem] = p
    return out


class MaskFolder:
    """Map-style dataset over an ``images/`` + ``masks/`` folder (format in the module docstring).

    Arguments:
      root: the dataset folder.
      kind: ``"binary"`` (one object per mask file) or ``"labels"`` (instance-id maps).
      ignore_value: in binary masks, the value meaning "ignore" (128); None to treat it as object.
      ignore_label: in label maps, a value meaning "ignore for all objects" (None: no such value).
      skip_unlabeled: leave out images without any mask file instead of raising.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        kind: Literal["binary", "labels"] = "binary",
        images: str = "images",
        masks: str = "masks",
        ignore_value: int | None = 128,
        ignore_label: int | None = None,
        skip_unlabeled: bool = False,
    ) -> None:
        if kind not in ("binary", "labels"):
            raise ValueError(f"kind must be 'binary' or 'labels', got {kind!r}")
        self.root = Path(root)
        self.kind = kind
        self.ignore_value = ignore_value
        self.ignore_label = ignore_label
        image_files = _index(self.root / images, IMAGE_SUFFIXES, "image")
        mask_files = _index(self.root / masks, MASK_SUFFIXES, "mask")

        per_image: dict[str, list[tuple[int, Path]]] = {}
        orphans = []
        for mstem, path in mask_files.items():
            if mstem in image_files:
                per_image.setdefault(mstem, []).append((-1, path))
                continue
            m = _INSTANCE.match(mstem)
            if m and m["stem"] in image_files:
                per_image.setdefault(m["stem"], []).append((int(m["k"]), path))
            else:
                orphans.append(path.name)
        if orphans:
            raise ValueError(f"{self.root}: mask files with no matching image: {orphans[:5]}")
        if kind == "labels":
            several = [s for s, lst in per_image.items() if len(lst) > 1 or lst[0][0] != -1]
            if several:
                raise ValueError(
                    f"{self.root}: kind='labels' expects one <stem>.png per image, see {several[:3]}"
                )
        unlabeled = sorted(set(image_files) - set(per_image))
        if unlabeled and not skip_unlabeled:
            raise ValueError(
                f"{self.root}: images without masks: {unlabeled[:5]} (skip_unlabeled=True to skip)"
            )

        self.stems = sorted(per_image)
        self.image_paths = {s: image_files[s] for s in self.stems}
        self.mask_paths = {s: [p for _, p in sorted(per_image[s], key=lambda kp: kp[0])] for s in self.stems}

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> Sample:
        stem = self.stems[index]
        image = load_image(self.image_paths[stem])
        files = [(p, load_mask(p)) for p in self.mask_paths[stem]]
        for p, arr in files:
            if arr.shape != image.shape[:2]:
                raise ValueError(f"{p}: mask shape {arr.shape} differs from its image {image.shape[:2]}")
        if self.kind == "binary":
            values = np.stack([arr for _, arr in files])
            ignore = (
                values == self.ignore_value if self.ignore_value is not None else np.zeros(values.shape, bool)
            )
            masks = (values != 0) & ~ignore
        else:
            labels = files[0][1]
            ids = np.unique(labels)
            ids = ids[(ids != 0) & (ids != (-1 if self.ignore_label is None else self.ignore_label))]
            masks = labels[None] == ids[:, None, None]
            band = (
                labels == self.ignore_label if self.ignore_label is not None else np.zeros(labels.shape, bool)
            )
            ignore = np.broadcast_to(band, masks.shape).copy()
        return Sample(
            image=image,
            masks=masks,
            ignore=ignore if ignore.any() else None,
            source=f"{self.root.name}/{stem}",
        )
