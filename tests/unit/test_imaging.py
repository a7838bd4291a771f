import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.errors import InvalidImage
from shared.imaging import (
    content_id,
    decode_image,
    make_thumbnail,
    rendition,
    safe_filename,
    sniff_format,
    to_model_input,
)
from tests.images import encode, make_photo, photo_bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    decoded = decode_image(photo_bytes(1, fmt))
    assert decoded.format == fmt
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (320, 240)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixel = decode_image(buf.getvalue()).image.getpixel((10, 10))
    assert pixel[0] > 200 and pixel[2] < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file named cat.jpg\n", "allowed format"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "allowed format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "allowed format"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImage, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_rejected() -> None:
    data = photo_bytes(2)
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims to be width x height (the decompression-bomb shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_bomb_is_rejected_before_decoding() -> None:
    data = _png_header_only(20000, 20000)
    assert len(data) < 200
    with pytest.raises(InvalidImage, match=r"too many pixels|over the limit"):
        decode_image(data)
    with pytest.raises(InvalidImage):
        decode_image(_png_header_only(3000, 3000), max_pixels=1_000_000)


def test_cmyk_jpeg_and_16_bit_png_work() -> None:
    cmyk = make_photo(3).convert("CMYK")
    assert decode_image(encode(cmyk, "JPEG")).image.mode == "RGB"
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    png16 = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(png16)).mode.startswith("I;16")
    decoded = decode_image(png16).image
    values = np.asarray(decoded)[..., 0]
    # A naive convert() clips 16-bit data to white; scaled, the ramp stays a ramp.
    assert values.min() < 10 and values.max() > 240


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 100, 100))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert (decoded.width, decoded.height) == (100, 200)
    top = decoded.image.getpixel((50, 10))
    assert top[2] > 200 and top[0] < 60  # the blue half is on top once upright


def test_large_jpeg_uses_draft_mode_but_stays_big_enough() -> None:
    data = photo_bytes(4, size=(2400, 1800))
    decoded = decode_image(data, draft_side=512)
    assert (decoded.width, decoded.height) == (2400, 1800)  # the original's size is what we report
    assert min(decoded.image.size) >= 512 and decoded.image.size[0] < 2400


def test_model_input_and_thumbnail_shapes() -> None:
    img = decode_image(photo_bytes(5, size=(1024, 600))).image
    arr = to_model_input(img, 224)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    thumb = Image.open(io.BytesIO(make_thumbnail(img)))
    assert max(thumb.size) == 512 and thumb.format == "JPEG"


def test_sniff_format_is_header_only() -> None:
    assert sniff_format(photo_bytes(6, "PNG")) == "PNG"
    with pytest.raises(InvalidImage):
        sniff_format(b"GIF89a-but-not-really")


def test_content_id_and_filenames() -> None:
    data = photo_bytes(7)
    assert content_id(data) == content_id(bytes(data)) and len(content_id(data)) == 32
    assert content_id(data) != content_id(photo_bytes(8))
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\cat.jpg") == "cat.jpg"
    assert safe_filename("a\x00b\nc.png") == "abc.png"
    assert safe_filename("") == "upload"
    assert len(safe_filename("x" * 1000)) == 255


def test_rendition_keeps_small_upright_jpegs_and_shrinks_the_rest() -> None:
    small = photo_bytes(20, size=(320, 240))
    assert rendition(small, decode_image(small)) == small
    big = photo_bytes(21, size=(1200, 800))
    out = Image.open(io.BytesIO(rendition(big, decode_image(big))))
    assert max(out.size) == 512
    png = photo_bytes(22, "PNG")
    assert Image.open(io.BytesIO(rendition(png, decode_image(png)))).format == "JPEG"
    rotated = encode(make_photo(23), "JPEG", exif=_orientation_exif(6))
    assert rendition(rotated, decode_image(rotated)) != rotated


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()
