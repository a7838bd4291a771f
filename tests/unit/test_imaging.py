import functools
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from shared.errors import InvalidImage
from shared.imaging import (
    THUMBNAIL_SIDE,
    content_id,
    decode_image,
    make_thumbnail,
    prepare_image,
    rendition,
    safe_filename,
    sniff_format,
    strip_jpeg_metadata,
    to_model_input,
)
from tests.images import encode, make_photo, photo_bytes

ROOT = Path(__file__).resolve().parents[2]
REAL_PHOTOS = sorted((ROOT / "tests" / "data").glob("*.jpg")) + sorted(
    (ROOT / "shared" / "models" / "calibration").glob("*.jpg")
)


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
    assert rendition(small, decode_image(small)) == small  # Pillow writes no metadata: nothing to strip
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


# --- prepare_image: what a worker keeps of an upload ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_prepare_image_gives_model_input_and_rendition(fmt: str) -> None:
    prepared = prepare_image(photo_bytes(30, fmt, size=(1400, 900)), 224)
    assert prepared.pixels.shape == (224, 224, 3) and prepared.pixels.dtype == np.uint8
    assert (prepared.format, prepared.width, prepared.height) == (fmt, 1400, 900)
    thumb = Image.open(io.BytesIO(prepared.rendition))
    assert thumb.format == "JPEG" and thumb.size == (THUMBNAIL_SIDE, 329)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, I am a text file named cat.jpg\n", photo_bytes(2)[:4000], _png_header_only(20000, 20000)],
    ids=["empty", "text", "truncated", "pixel-bomb"],
)
def test_prepare_image_rejects_what_decode_image_rejects(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data)
    with pytest.raises(InvalidImage):
        prepare_image(data, 224)


def _enlarged(path: Path, fmt: str, scale: int = 10, **options: object) -> bytes:
    img = Image.open(path).convert("RGB")
    big = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
    if fmt == "RGBA":  # a real alpha ramp: the white background must show through the same way
        big.putalpha(Image.linear_gradient("L").resize(big.size))
        fmt = "PNG"
    return encode(big, fmt, **options)


@functools.cache
def _real_photo_cases() -> tuple[tuple[str, bytes], ...]:
    """The real photos as they are (small), and enlarged so that prepare_image's early reduction happens."""
    cases = [(path.name, path.read_bytes()) for path in REAL_PHOTOS]
    for path in REAL_PHOTOS[:3]:
        cases += [
            (f"{path.name} x10 JPEG", _enlarged(path, "JPEG", quality=92)),
            (f"{path.name} x10 PNG", _enlarged(path, "PNG", compress_level=1)),
            (f"{path.name} x10 RGBA PNG", _enlarged(path, "RGBA", compress_level=1)),
            (f"{path.name} x10 JPEG rotated", _enlarged(path, "JPEG", quality=92, exif=_orientation_exif(6))),
        ]
    return tuple(cases)


@pytest.mark.parametrize("side", [224, 256])
def test_prepare_image_embeds_like_decode_image_on_real_photos(side: int) -> None:
    """Measured: identical on the photos as they are and on enlarged JPEGs (the draft decode does the
    shrinking); on enlarged PNGs mean |difference| 0.2-0.5 and at most 6 levels on a pixel."""
    assert len(REAL_PHOTOS) >= 40
    for name, data in _real_photo_cases():
        decoded = decode_image(data)
        today = to_model_input(decoded.image, side).astype(np.int16)
        prepared = prepare_image(data, side)
        assert (prepared.width, prepared.height, prepared.format) == (decoded.width, decoded.height, decoded.format)
        difference = np.abs(today - prepared.pixels)
        assert difference.mean() < 1.0 and difference.max() <= 16, name
        old = Image.open(io.BytesIO(rendition(data, decoded)))
        new = Image.open(io.BytesIO(prepared.rendition))
        assert old.size == new.size, name


def test_prepare_image_applies_exif_orientation() -> None:
    img = Image.new("RGB", (2000, 1000), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 1000, 1000))  # left half blue
    prepared = prepare_image(encode(img, "JPEG", exif=_orientation_exif(6), quality=95), 224)
    assert (prepared.width, prepared.height) == (1000, 2000)
    assert prepared.pixels[10, 112, 2] > 200 and prepared.pixels[10, 112, 0] < 60  # blue on top once upright
    thumb = Image.open(io.BytesIO(prepared.rendition))
    assert thumb.size == (256, 512) and not thumb.getexif()
    top = thumb.getpixel((128, 10))
    assert top[2] > 200 and top[0] < 60


def test_transparency_is_flattened_onto_white_in_both_paths() -> None:
    img = Image.new("P", (600, 600), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(img).rectangle((0, 0, 599, 299), fill=1)  # red top half, transparent bottom half
    data = encode(img, "GIF", transparency=0)
    prepared = prepare_image(data, 224)
    assert tuple(prepared.pixels[200, 112]) == (255, 255, 255)
    assert prepared.pixels[20, 112, 0] > 240 and prepared.pixels[20, 112, 1] < 20
    assert decode_image(data).image.getpixel((300, 500)) == (255, 255, 255)


def test_16_bit_png_scales_by_the_whole_image_maximum() -> None:
    # Tall enough to be converted in several bands: each must use the image's maximum, not its own.
    ramp = np.repeat(np.arange(1200, dtype=np.uint16)[:, None] * 50, 900, axis=1)
    data = encode(Image.fromarray(ramp), "PNG")
    for grey in (np.asarray(decode_image(data).image)[..., 0], prepare_image(data, 224).pixels[..., 0]):
        rows = grey.mean(axis=1)
        assert rows[0] < 5 and rows[-1] > 245
        assert rows[len(rows) // 4] == pytest.approx(64, abs=4)
        assert np.all(np.diff(rows) >= -1)


_PEAK_SCRIPT = """
import sys
from pathlib import Path
from shared.imaging import prepare_image

def status(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
prepare_image(Path(sys.argv[2]).read_bytes(), 224)  # Pillow's plugins and codecs load on first use: not measured
Path("/proc/self/clear_refs").write_text("5")  # restarts VmHWM from the current RSS
before = status("VmRSS")
prepare_image(data, 224)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_prepare_image_peak_memory_is_about_one_decode(tmp_path: Path) -> None:
    img = Image.new("RGBA", (5000, 5000), (10, 20, 30, 255))
    ImageDraw.Draw(img).ellipse((600, 600, 4400, 3800), fill=(200, 100, 50, 128))
    path, warm_up = tmp_path / "big.png", tmp_path / "small.png"
    img.save(path, format="PNG")
    warm_up.write_bytes(photo_bytes(48, "PNG"))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), str(warm_up)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    one_decode = 5000 * 5000 * 4  # Pillow holds RGB and RGBA alike at 4 bytes a pixel
    # Measured ~1.1x: the decode plus ~10 MB of reduced working copy and resizes. decode_image, to_model_input
    # and rendition took ~5x before this change (whole-image conversions and compositing), and take ~2x now.
    assert int(done.stdout) < 1.25 * one_decode


# --- renditions carry no metadata ----------------------------------------------------------------------

_COMMENT = b"a note with a street address"
_XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>secret-xmp-location</rdf:RDF></x:xmpmeta>'
_TRAILER = b"TRAILING-GARBAGE" * 64  # 1 KB after the end-of-image marker
_SECRETS = (b"Exif\x00\x00", b"SecretCam", b"http://ns.adobe.com/xap/1.0/", b"secret-xmp", _COMMENT, b"TRAILING")


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.34), 3: "E", 4: (13.0, 24.0, 56.78)})
    return exif.tobytes()


@functools.cache  # one profile: each new one carries its creation time
def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _tagged_jpeg(size: tuple[int, int] = (320, 240), **options: object) -> bytes:
    """A phone-style JPEG: EXIF with GPS, XMP, a comment, an ICC profile, and junk after its end."""
    meta = {"exif": _gps_exif(), "xmp": _XMP, "comment": _COMMENT, "icc_profile": _srgb_profile()}
    data = encode(make_photo(40, size), "JPEG", quality=90, **meta, **options)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the GPS tags really are in there
    return data + _TRAILER


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _assert_clean(jpeg: bytes) -> None:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and not img.getexif()
    assert not {"exif", "xmp", "comment"} & img.info.keys()
    for secret in _SECRETS:
        assert secret not in jpeg
    assert jpeg.endswith(b"\xff\xd9")


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"restart_marker_blocks": 1}])
def test_small_jpeg_rendition_is_the_upload_without_metadata(options: dict) -> None:
    data = _tagged_jpeg(**options)
    for served in (prepare_image(data, 224).rendition, rendition(data, decode_image(data))):
        _assert_clean(served)
        assert np.array_equal(_pixels(served), _pixels(data))  # not re-encoded: the same pixels
        assert Image.open(io.BytesIO(served)).info["icc_profile"] == _srgb_profile()
        assert len(served) < len(data)


def test_metadata_between_progressive_scans_is_dropped_too() -> None:
    data = encode(make_photo(41), "JPEG", quality=90, progressive=True)
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    # Its text holds FF D9: a filter that copied up to the first FF D9 after SOS would cut the file here.
    payload = _COMMENT + b" \xff\xd9 " + _COMMENT
    comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    tagged = data[:second_scan] + comment + data[second_scan:]
    assert np.array_equal(_pixels(tagged), _pixels(data))
    stripped = strip_jpeg_metadata(tagged)
    assert stripped == data


def test_jfif_thumbnail_is_dropped_and_adobe_colour_transform_kept() -> None:
    rgb = encode(make_photo(42), "JPEG", quality=90, keep_rgb=True)  # stored as RGB, said so in APP14
    assert b"Adobe" in rgb
    stripped = strip_jpeg_metadata(rgb)
    assert stripped is not None and b"Adobe" in stripped
    assert np.array_equal(_pixels(stripped), _pixels(rgb))

    plain = encode(make_photo(43), "JPEG", quality=90)
    app0_end = 4 + int.from_bytes(plain[4:6], "big")
    thumbnail = b"\x02\x01" + bytes(range(6))  # a 2x1 RGB thumbnail inside APP0
    jfif = plain[6:18] + thumbnail  # "JFIF\0", version, units, densities
    with_thumb = plain[:2] + b"\xff\xe0" + (len(jfif) + 2).to_bytes(2, "big") + jfif + plain[app0_end:]
    assert np.array_equal(_pixels(with_thumb), _pixels(plain))
    assert strip_jpeg_metadata(with_thumb) == plain


def test_fill_bytes_before_markers_are_understood() -> None:
    data = encode(make_photo(44), "JPEG", quality=90)
    dqt = data.index(b"\xff\xdb")
    padded = data[:dqt] + b"\xff" * 5 + data[dqt:]
    stripped = strip_jpeg_metadata(padded)
    assert stripped is not None and np.array_equal(_pixels(stripped), _pixels(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],  # truncated in the scan
        lambda d: d[:200],  # truncated in the headers
        lambda d: d[:20] + b"junk" + d[20:],  # bytes between segments
        lambda d: d[:4] + b"\xff\xff" + d[6:],  # a length running past the end
        lambda d: d[: d.index(b"\xff\xda")] + b"\xff\xd9",  # no scan at all
        lambda d: b"\xff\xd8\xff",
        lambda d: b"not a jpeg",
    ],
)
def test_malformed_jpegs_are_not_walked(damage) -> None:
    assert strip_jpeg_metadata(damage(_tagged_jpeg())) is None


def test_jpeg_the_filter_rejects_but_pillow_decodes_is_re_encoded() -> None:
    data = _tagged_jpeg()
    junk = data[:20] + b"junk" + data[20:]  # after APP0: libjpeg skips it with a warning, the filter refuses it
    assert strip_jpeg_metadata(junk) is None
    for served in (prepare_image(junk, 224).rendition, rendition(junk, decode_image(junk))):
        _assert_clean(served)
        assert np.abs(_pixels(served).astype(np.int16) - _pixels(data)).mean() < 3


def test_strip_never_raises_on_damaged_input() -> None:
    data = _tagged_jpeg()
    rng = np.random.default_rng(0)
    for _ in range(300):
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), int(rng.integers(1, 8))):
            damaged[at] = int(rng.integers(0, 256))
        stripped = strip_jpeg_metadata(bytes(damaged))
        assert stripped is None or not stripped.endswith(_TRAILER)


@pytest.mark.parametrize("kind", ["large JPEG", "rotated JPEG", "PNG"])
def test_re_encoded_renditions_carry_no_metadata(kind: str) -> None:
    if kind == "PNG":
        data = encode(make_photo(45, (800, 600)), "PNG", exif=_gps_exif(), icc_profile=_srgb_profile())
    else:
        data = _tagged_jpeg((1200, 900) if kind == "large JPEG" else (320, 240))
        if kind == "rotated JPEG":
            exif = Image.Exif()
            exif.load(_gps_exif())
            exif[0x0112] = 6
            data = encode(make_photo(46), "JPEG", exif=exif.tobytes(), comment=_COMMENT, xmp=_XMP)
    for served in (prepare_image(data, 224).rendition, rendition(data, decode_image(data))):
        _assert_clean(served)
        assert max(Image.open(io.BytesIO(served)).size) <= THUMBNAIL_SIDE
        if kind != "rotated JPEG":  # colours stay right: an RGB profile is kept
            assert Image.open(io.BytesIO(served)).info["icc_profile"] == _srgb_profile()


def test_cmyk_profile_is_not_put_on_the_rgb_rendition() -> None:
    fake_cmyk_profile = bytes(16) + b"CMYK" + bytes(108)
    data = encode(make_photo(47).convert("CMYK"), "JPEG", icc_profile=fake_cmyk_profile)
    for served in (prepare_image(data, 224).rendition, rendition(data, decode_image(data))):
        assert "icc_profile" not in Image.open(io.BytesIO(served)).info


def test_a_progressive_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    from shared.imaging import MAX_JPEG_SCANS

    out = io.BytesIO()
    Image.new("L", (128, 128), 90).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    sos, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    bomb = data[:eoi] + data[sos:eoi] * (MAX_JPEG_SCANS + 5) + b"\xff\xd9"
    with pytest.raises(InvalidImage, match="scans"):
        prepare_image(bomb, 64)
    assert prepare_image(data, 64).format == "JPEG"  # an ordinary progressive file is fine


def test_an_inflating_colour_profile_is_not_stored() -> None:
    """A 2 KB PNG whose compressed ICC profile inflates to 1 MiB must not give a 1 MiB rendition."""
    profile = bytearray(1024 * 1024)
    profile[16:20] = b"RGB "
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(out, "PNG", icc_profile=bytes(profile))
    assert len(out.getvalue()) < 10_000
    prepared = prepare_image(out.getvalue(), 32)
    assert len(prepared.rendition) < 10_000
    assert "icc_profile" not in Image.open(io.BytesIO(prepared.rendition)).info
