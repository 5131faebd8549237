"""segany.images: the decode policy, checked on real files written by Pillow (and a few crafted ones)."""

from __future__ import annotations

import io
import random
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from segany.images import (
    AspectRatioUnsupported,
    CorruptImage,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    UnsupportedFormat,
    load_image,
    load_mask,
    sniff_format,
)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with a distinct top-left marker."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 90 + seed)], -1)
    rgb[: h // 4, : w // 4] = (255, 255, 255)
    return rgb.astype(np.uint8)


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` × ``height`` (CRC fixed so only the size is a lie)."""
    data = bytearray(encode(Image.new("RGB", (4, 3)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- files that are not images, or are broken ------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(EmptyImage, match="empty.jpg"):
        load_image(p)


def test_text_file_renamed_png(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("hello, this is not a picture\n")
    with pytest.raises(UnsupportedFormat, match="notes.png"):
        load_image(p)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode(Image.fromarray(photo()), "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage, match="cut.jpg"):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["TGA", "ICO", "PCX", "PPM", "EPS"])
def test_formats_outside_allowlist_are_refused_whatever_the_name(tmp_path: Path, fmt: str) -> None:
    data = encode(Image.fromarray(photo(16, 16)), fmt)
    assert sniff_format(data) is None
    p = tmp_path / "disguised.jpg"
    p.write_bytes(data)
    with pytest.raises(UnsupportedFormat):
        load_image(p)


def test_jpeg_named_png_is_sniffed(tmp_path: Path) -> None:
    p = tmp_path / "really_a_jpeg.png"
    p.write_bytes(encode(Image.fromarray(photo()), "JPEG", quality=95))
    out = load_image(p)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - photo()).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "GIF", "JPEG"])
def test_each_allowed_format_decodes(fmt: str) -> None:
    img = photo()
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    out = load_image(encode(Image.fromarray(img), fmt, **kw))
    assert out.shape == img.shape and out.dtype == np.uint8
    tol = {"JPEG": 4, "GIF": 20}.get(fmt, 0)  # GIF quantises to 256 colours
    assert np.abs(out.astype(int) - img).mean() <= tol


def test_zero_dimension_header_is_corrupt() -> None:
    # Pillow refuses a 0-wide IHDR itself; it must surface as a typed error, never a bare OSError.
    with pytest.raises(CorruptImage):
        load_image(png_with_size(0, 3))


def test_corruption_sweep_only_typed_errors() -> None:
    """Truncations and byte flips give a valid image or an ImageError, nothing else (reliability T08)."""
    rng = random.Random(0)
    seeds = [
        encode(Image.fromarray(photo(32, 40)), "JPEG", quality=80),
        encode(Image.fromarray(photo(32, 40)), "PNG"),
        encode(Image.fromarray(photo(32, 40)), "WEBP", quality=80),
    ]
    cases = []
    for data in seeds:
        cases += [data[: len(data) * k // 16] for k in range(16)]
        for _ in range(12):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            cases.append(bytes(flipped))
    outcomes = {"ok": 0, "typed": 0}
    for case in cases:
        try:
            out = load_image(case)
        except ImageError:
            outcomes["typed"] += 1
        else:
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            outcomes["ok"] += 1
    assert outcomes["typed"] >= 16 * 3  # every truncation of at least 15/16 must fail


# --- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(30000, 30000), (10000, 10000), (8000, 8000)])
def test_decompression_bomb_refused_before_decoding(size: tuple[int, int]) -> None:
    # 30000² trips Pillow's hard error, 10000² its warning (made an error here), 8000² segany's own 50 MP cap.
    bomb = png_with_size(*size)
    assert len(bomb) < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLarge, match=r"pixels"):
        load_image(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50 * 1024


def test_gif_frame_descriptor_bomb() -> None:
    data = bytearray(encode(Image.new("P", (4, 3)), "GIF"))
    at = data.index(b",")  # image descriptor: x, y, w, h (little-endian u16)
    data[at + 5 : at + 9] = struct.pack("<HH", 30000, 30000)
    with pytest.raises(ImageTooLarge):
        load_image(bytes(data))


def test_pixel_cap_is_inclusive() -> None:
    assert load_image(encode(Image.new("RGB", (10, 10)), "PNG"), max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageTooLarge):
        load_image(encode(Image.new("RGB", (101, 1)), "PNG"), max_pixels=100)


def test_byte_cap(tmp_path: Path) -> None:
    data = encode(Image.fromarray(photo()), "PNG")
    p = tmp_path / "big.png"
    p.write_bytes(data)
    with pytest.raises(ImageTooLarge, match="big.png"):
        load_image(p, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLarge, match="upload.png"):
        load_image(data, max_bytes=len(data) - 1, name="upload.png")
    assert load_image(p, max_bytes=len(data)).shape == (48, 64, 3)


def test_max_pixels_above_pillow_guard_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(encode(Image.new("RGB", (2, 2)), "PNG"), max_pixels=10**10)


@pytest.mark.parametrize(
    ("w", "h", "ok"), [(2048, 1, True), (1, 2048, True), (2049, 1, False), (1, 3000, False)]
)
def test_extreme_aspect_ratio(w: int, h: int, ok: bool) -> None:
    data = encode(Image.new("L", (w, h), 200), "PNG")
    if ok:
        assert load_image(data).shape == (h, w, 3)
        # ResizeLongestSide's rounding keeps the short side >= 1 exactly up to 2048:1.
        assert int(min(w, h) * 1024 / max(w, h) + 0.5) >= 1
    else:
        with pytest.raises(AspectRatioUnsupported, match="aspect"):
            load_image(data)


def test_one_pixel_image() -> None:
    out = load_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert out.tolist() == [[[1, 2, 3]]]


def test_first_frame_of_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue())[0, 0].tolist() == [255, 0, 0]


def test_mpo_phone_jpeg_gives_first_picture() -> None:
    pictures = [Image.new("RGB", (16, 16), (250, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 250))]
    buf = io.BytesIO()
    pictures[0].save(buf, "MPO", save_all=True, append_images=pictures[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    px = load_image(buf.getvalue())[8, 8].astype(int)
    assert px[0] > 240 and px[2] < 10


# --- orientation -----------------------------------------------------------------------------------------

# For each EXIF orientation, the operation that turns the displayed image into the stored pixels.
_STORE = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", list(range(1, 9)))
def test_exif_orientation_applied(orientation: int) -> None:
    shown = photo(48, 64)
    stored = np.ascontiguousarray(_STORE[orientation](shown))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data)
    assert out.shape == shown.shape
    assert np.abs(out.astype(int) - shown).mean() < 3
    assert out[:8, :12].min() > 230  # the white marker is back in the top-left corner
    raw = load_image(data, apply_exif=False)
    assert raw.shape == stored.shape


# --- colour modes ----------------------------------------------------------------------------------------


def test_grayscale_replicated() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = load_image(encode(Image.fromarray(grey, "L"), "PNG"))
    assert out.shape == (8, 8, 3)
    assert (out == grey[:, :, None]).all()


def test_bilevel_mode_1() -> None:
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    out = load_image(encode(img, "PNG"))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_16bit_png_scaled_by_shift() -> None:
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_integer_tiff_clipped() -> None:
    values = np.array([[-5, 70000, 512]], dtype=np.int32)
    out = load_image(encode(Image.fromarray(values, "I"), "TIFF"))
    assert out[0, :, 0].tolist() == [0, 255, 2]


def test_float_tiff_is_unit_intensity() -> None:
    values = np.array([[0.0, 0.5, 1.0, 7.0, -1.0]], dtype=np.float32)
    out = load_image(encode(Image.fromarray(values, "F"), "TIFF"))
    assert out[0, :, 1].tolist() == [0, 128, 255, 255, 0]


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    px = load_image(data)[8, 8].astype(int)
    assert abs(px[0] - 0) <= 3 and abs(px[1] - 255) <= 3 and abs(px[2] - 255) <= 3


def test_rgba_png_composited_on_background() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: background
    rgba[0, 2] = (200, 100, 50, 128)  # half
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    out = load_image(data)
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [100, 50, 25]
    white = load_image(data, background=(255, 255, 255))
    assert white[0, 1].tolist() == [255, 255, 255]
    assert white[0, 2].tolist() == [227, 177, 152]


def test_la_and_palette_transparency() -> None:
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], dtype=np.uint8), "LA")
    assert load_image(encode(la, "PNG"))[0].tolist() == [[90, 90, 90], [0, 0, 0]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    assert load_image(encode(pal, "PNG"))[0].tolist() == [[10, 20, 30], [40, 50, 60]]
    assert load_image(encode(pal, "PNG", transparency=1))[0].tolist() == [[10, 20, 30], [0, 0, 0]]


def test_unsupported_mode_refused() -> None:
    data = encode(Image.new("LAB", (4, 4)), "TIFF")
    with pytest.raises(UnsupportedFormat, match="LAB"):
        load_image(data)


# --- masks -----------------------------------------------------------------------------------------------


def test_load_mask_keeps_values() -> None:
    labels = np.array([[0, 1, 300], [65535, 7, 0]], dtype=np.uint16)
    out = load_mask(encode(Image.fromarray(labels), "PNG"))
    assert out.dtype == np.uint16 and (out == labels).all()
    pal = Image.fromarray(np.array([[0, 3], [255, 1]], dtype=np.uint8))
    pal.putpalette(list(range(256)) * 3)
    assert pal.mode == "P"
    out = load_mask(encode(pal, "PNG"))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 3], [255, 1]]
    grey_rgb = np.repeat(np.array([[0, 128, 255]], dtype=np.uint8)[:, :, None], 3, axis=2)
    assert load_mask(encode(Image.fromarray(grey_rgb), "PNG")).tolist() == [[0, 128, 255]]


def test_load_mask_refuses_colour_coding() -> None:
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(UnsupportedFormat, match="colour-coded"):
        load_mask(encode(Image.fromarray(colour), "PNG"))
