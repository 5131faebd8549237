"""Decode untrusted image files into arrays: the one place where segany turns bytes into pixels.

Every image that enters segany (CLI, predictor helpers, dataset readers, annotation server, batch jobs) goes
through :func:`load_image` (photos -> RGB) or :func:`load_mask` (label maps -> integer arrays), so that one
policy protects them all (reliability.md §2.5-2.6):

1. **Byte cap** (``max_bytes``) checked before the file is read.
2. **Format allowlist, sniffed from magic bytes** (the file extension is ignored): JPEG (including MPO, the
   multi-picture JPEG of phones), PNG, BMP, TIFF, WebP, GIF. Pillow is then opened with ``formats=[that one]``, so no
   other Pillow plugin (EPS, PSD, FITS, ICO, SVG via plugins, ...) ever sees the bytes.
3. **Header checks before any pixel is decoded**: width and height ≥ 1; ``width * height <= max_pixels``
   (Pillow's ``DecompressionBombWarning`` is turned into an error as well); aspect ratio ≤ ``max_aspect``
   (2048:1 by default: SAM resizes the longest side to 1024, so a more extreme image would get a short side of 0).
   Multi-frame files (GIF, animated WebP, multi-page TIFF, MPO) give their **first frame only**.
4. **EXIF orientation applied** (``ImageOps.exif_transpose``), so pixels come out the way viewers show them.
5. **Mode rule** for :func:`load_image` (always H×W×3 ``uint8``, C-contiguous):

   ============================  ===============================================================
   Pillow mode                   result
   ============================  ===============================================================
   RGB                           as is
   L, 1                          grey replicated to 3 channels (mode 1: 0 -> 0, 1 -> 255)
   P (palette)                   palette colours; with a transparent index, treated as RGBA
   RGBA, RGBa, LA, La, PA        **alpha-composited on ``background``** (black by default)
   CMYK, YCbCr                   Pillow's conversion to RGB (CMYK (255, 0, 0, 0) -> (0, 255, 255))
   I;16*, I (16/32-bit integer)  clipped to [0, 65535], then ``>> 8`` (65535 -> 255, 256 -> 1)
   F (32-bit float)              taken as intensity in [0, 1]: clipped, × 255, rounded; NaN -> 0
   anything else (LAB, HSV, ..)  refused with :class:`UnsupportedFormat`
   ============================  ===============================================================

   Compositing (rather than dropping alpha) is chosen because the colour under fully transparent pixels is
   arbitrary (often left-over garbage); a fixed background makes the result deterministic.
6. **Typed errors only**: every failure is an :class:`ImageError` (a ``ValueError``) subclass naming the file.
   A missing file is the exception: it raises the usual ``FileNotFoundError``.

``Image.LOAD_TRUNCATED_IMAGES`` is never touched: a truncated file is an error, not a partly grey image.
Running the decoder in a sandboxed worker with a timeout is the caller's job (the server and batch jobs).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_ASPECT",
    "MAX_BYTES",
    "MAX_PIXELS",
    "AspectRatioUnsupported",
    "CorruptImage",
    "EmptyImage",
    "ImageError",
    "ImageTooLarge",
    "UnsupportedFormat",
    "load_image",
    "load_mask",
    "sniff_format",
]

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
MAX_PIXELS = 50_000_000  # 50 MP: a 8000x6000 photo fits; far more than SAM's 1024 px ever needs
MAX_BYTES = 64 * 2**20  # 64 MiB
MAX_ASPECT = 2048  # beyond 2048:1, int(short * 1024 / long + 0.5) == 0 in ResizeLongestSide

# Pillow formats that are accepted under an allowed name (MPO is how Pillow opens multi-picture JPEGs).
_FORMAT_ALIASES = {"MPO": "JPEG"}

# Exceptions Pillow's plugins raise on malformed data; all of them mean "this file is broken".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


class ImageError(ValueError):
    """Base class of every decoding failure; ``str()`` names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class UnsupportedFormat(ImageError):
    """The bytes are not one of :data:`ALLOWED_FORMATS`, or use a pixel mode the policy does not cover."""


class CorruptImage(ImageError):
    """The format is allowed but the file cannot be decoded (truncated, damaged, inconsistent header)."""


class ImageTooLarge(ImageError):
    """More bytes than ``max_bytes`` or more pixels than ``max_pixels`` (decompression-bomb guard)."""


class EmptyImage(ImageError):
    """Zero bytes, or a header declaring a zero width or height."""


class AspectRatioUnsupported(ImageError):
    """Longest side more than ``max_aspect`` times the shortest: SAM's resize would produce a zero side."""


def sniff_format(data: bytes) -> str | None:
    """Name of the allowed format whose magic bytes start ``data`` (Pillow's format name), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    max_aspect: float = MAX_ASPECT,
    background: tuple[int, int, int] = (0, 0, 0),
    apply_exif: bool = True,
    name: str | None = None,
) -> np.ndarray:
    """Decode a photo into RGB under the module's policy.

    Arguments:
      source: a file path, or the file's bytes.
      max_pixels: cap on width × height read from the header, before decoding. At most
        ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's own bomb guard fires above it and is an error here).
      max_bytes: cap on the file size.
      max_aspect: cap on long side / short side.
      background: RGB colour that transparent pixels are composited onto.
      apply_exif: rotate/flip by the EXIF orientation tag. Leave True except to reproduce annotations that were
        made on the stored (unrotated) pixels.
      name: how errors refer to ``bytes`` input (defaults to ``"<bytes>"``; paths name themselves).

    Returns:
      ``uint8`` array of shape (H, W, 3), C-contiguous, in the displayed orientation.

    Raises:
      UnsupportedFormat, CorruptImage, ImageTooLarge, EmptyImage, AspectRatioUnsupported (all ``ImageError``);
      FileNotFoundError for a missing path.
    """
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three ints in [0, 255], got {background!r}")
    img, label = _open(source, max_pixels, max_bytes, max_aspect, apply_exif, name)
    try:
        return np.ascontiguousarray(_to_rgb(img, background, label))
    finally:
        img.close()


def load_mask(
    source: str | Path | bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    apply_exif: bool = True,
    name: str | None = None,
) -> np.ndarray:
    """Decode a label map or binary mask file into a 2-D integer array, keeping the stored values.

    Same allowlist and limits as :func:`load_image` (no aspect cap: masks are not resized by SAM on their own).
    Values: L -> ``uint8``; 1 -> ``uint8`` 0/255; P -> ``uint8`` palette *indices* (how VOC-style label maps are
    stored); I;16* and I -> ``uint16`` (an I image with values outside [0, 65535] is refused); LA -> its L band;
    RGB/RGBA only when the three colour bands are equal (grey saved as colour), else refused, because colour-coded
    label maps have no unambiguous integer meaning.

    Returns:
      ``uint8`` or ``uint16`` array of shape (H, W), C-contiguous.
    """
    img, label = _open(source, max_pixels, max_bytes, float("inf"), apply_exif, name)
    try:
        return np.ascontiguousarray(_to_labels(img, label))
    finally:
        img.close()


def _open(
    source: str | Path | bytes,
    max_pixels: int,
    max_bytes: int,
    max_aspect: float,
    apply_exif: bool,
    name: str | None,
) -> tuple[Image.Image, str]:
    """Read, sniff, check the header, decode frame 0 and orient it; return the loaded image and its label."""
    if max_pixels < 1 or max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        raise ValueError(
            f"max_pixels must be in [1, PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}], got {max_pixels}"
        )
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")

    data, label = _read(source, max_bytes, name)
    if not data:
        raise EmptyImage(label, "file is empty (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UnsupportedFormat(
            label,
            f"not an allowed image format ({', '.join(ALLOWED_FORMATS)}); file starts with {data[:8]!r}",
        )

    with warnings.catch_warnings():
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; here any bomb signal is fatal.
        # (catch_warnings is process-global, not thread-safe; should a concurrent thread undo this filter, the
        # header check below still refuses the image, because max_pixels <= MAX_IMAGE_PIXELS.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageTooLarge(label, f"decompression bomb guard: {e}") from e
        except Image.UnidentifiedImageError as e:  # its message only names the BytesIO object
            raise CorruptImage(label, f"starts like {fmt} but its header is invalid") from e
        except _DECODE_ERRORS as e:
            raise CorruptImage(label, f"cannot read {fmt} header: {e}") from e

        try:
            real_fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
            if real_fmt != fmt:  # cannot happen with formats=[fmt]; kept so the allowlist never depends on it
                raise UnsupportedFormat(label, f"opened as {img.format}, expected {fmt}")
            width, height = img.size
            if width < 1 or height < 1:
                raise EmptyImage(label, f"header declares a {width}x{height} image")
            if width * height > max_pixels:
                raise ImageTooLarge(
                    label, f"{width}x{height} = {width * height} pixels exceeds the cap of {max_pixels}"
                )
            if max(width, height) > max_aspect * min(width, height):
                raise AspectRatioUnsupported(
                    label,
                    f"{width}x{height} has aspect ratio {max(width, height) / min(width, height):.0f}:1, "
                    f"above the cap of {max_aspect:g}:1",
                )
            try:
                img.load()  # frame 0 only: no seek() anywhere
                if apply_exif:
                    ImageOps.exif_transpose(img, in_place=True)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
                raise ImageTooLarge(label, f"decompression bomb guard: {e}") from e
            except _DECODE_ERRORS as e:
                raise CorruptImage(label, f"cannot decode {fmt} data: {e}") from e
        except BaseException:
            img.close()
            raise
    return img, label


def _read(source: str | Path | bytes, max_bytes: int, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        label = name or "<bytes>"
        if len(data) > max_bytes:
            raise ImageTooLarge(label, f"{len(data)} bytes exceeds the cap of {max_bytes}")
        return data, label
    if not isinstance(source, str | Path):
        raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")
    path = Path(source)
    label = name or str(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageTooLarge(label, f"{size} bytes exceeds the cap of {max_bytes}")
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)  # the file may grow between stat and read
    if len(data) > max_bytes:
        raise ImageTooLarge(label, f"more than {max_bytes} bytes")
    return data, label


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Blend straight (non-premultiplied) RGBA uint8 onto a solid colour, with integer rounding."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    bg = np.asarray(background, dtype=np.uint32)
    return ((rgb * alpha + bg * (255 - alpha) + 127) // 255).astype(np.uint8)


def _to_rgb(img: Image.Image, background: tuple[int, int, int], label: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        if "transparency" in img.info:
            return _composite(np.asarray(img.convert("RGBA")), background)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite(np.asarray(img.convert("RGBA")), background)
    if mode in ("CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode == "I" or mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        f = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    raise UnsupportedFormat(label, f"pixel mode {mode!r} is not covered by segany's colour policy")


def _to_labels(img: Image.Image, label: str) -> np.ndarray:
    mode = img.mode
    if mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(img.getchannel("L"), dtype=np.uint8)
    if mode == "I" or mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise UnsupportedFormat(label, f"label values {wide.min()}..{wide.max()} do not fit in uint16")
        return wide.astype(np.uint16)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise UnsupportedFormat(
                label, "colour-coded mask: save label maps as greyscale (L), palette (P) or 16-bit PNG"
            )
        return np.asarray(rgb[..., 0], dtype=np.uint8)
    raise UnsupportedFormat(label, f"pixel mode {mode!r} is not supported for masks")
