"""Image files of the annotation server: validation through the shared decoder, storage, and safe lookup.

Files are only ever found from a database row: ``(storage, rel_path)`` where ``rel_path`` was produced by the
server itself (a content hash for uploads, the server's own directory scan for IMAGE_DIR). Lookup still
re-checks containment and refuses symlinks, so a link planted in a media folder cannot serve outside files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segany.images import ALLOWED_FORMATS, load_image, sniff_format

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff",
        "WEBP": "image/webp", "GIF": "image/gif"}  # fmt: skip
SCAN_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray
    sha256: str
    mime: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def decode(data: bytes, *, max_pixels: int, max_bytes: int, name: str) -> DecodedImage:
    """Validate and decode untrusted bytes. Raises ``segany.images.ImageError`` subclasses on any bad input."""
    rgb = load_image(data, max_pixels=max_pixels, max_bytes=max_bytes, name=name)
    fmt = sniff_format(data)
    if fmt not in ALLOWED_FORMATS:  # load_image already refused it; kept so the mime can never be guessed
        raise RuntimeError(f"decoded an image of unknown format {fmt!r}")
    return DecodedImage(rgb, hashlib.sha256(data).hexdigest(), MIME[fmt])


def display_name(name: str) -> str:
    """The file name as shown in the page: control characters removed, length capped. Still rendered as text."""
    cleaned = "".join(ch for ch in name if ch.isprintable())
    return cleaned[-255:] or "image"


def resolve(root: Path, rel_path: str) -> Path | None:
    """``root/rel_path`` if it is a regular file inside ``root`` reached without symlinks, else None."""
    root = root.resolve()
    candidate = root / rel_path
    # Check every component for links: the containment check alone would accept a link to a file inside root.
    p = candidate
    while p != root and p != p.parent:
        if p.is_symlink():
            return None
        p = p.parent
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


def scan_dir(root: Path, skip: Path | None = None) -> Iterator[str]:
    """Relative paths of image files under ``root`` (sorted, no symlinks, no hidden entries, ``skip`` excluded)."""
    root = root.resolve()
    skip_real = skip.resolve() if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (here / d).is_symlink() and (here / d).resolve() != skip_real
        )  # fmt: skip
        for fn in sorted(filenames):
            p = here / fn
            if fn.startswith(".") or p.is_symlink() or p.suffix.lower() not in SCAN_SUFFIXES:
                continue
            yield p.relative_to(root).as_posix()


def store_upload(media_dir: Path, sha256: str, data: bytes) -> str:
    """Write uploaded bytes under their content hash (atomic, fsynced); returns the ``rel_path``."""
    media_dir.mkdir(parents=True, exist_ok=True)
    final = media_dir / sha256
    if not final.exists():
        tmp = media_dir / f".{sha256}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    return sha256
