"""Robust image reading and writing (blurforge.imageio): the bad-input zoo, built in tmp_path."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from blurforge.imageio import (
    ImageReadError,
    decode_image_bytes,
    encode_image,
    find_images,
    read_image,
    sha256_bytes,
    write_bytes_atomic,
)
from conftest import photo


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return photo("astronaut", (120, 80))  # H=80, W=120, uint8


def _save(path, array_or_image, **kwargs):
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    im.save(path, **kwargs)
    return path


def _jpeg_error(a, b):
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()


# --- well-formed inputs ----------------------------------------------------------------------


def test_rgb_png_is_exact(tmp_path, rgb):
    img, info = read_image(_save(tmp_path / "a.png", rgb))
    assert img.dtype == np.float32 and img.shape == (80, 120, 3)
    assert np.array_equal(np.rint(img * 255).astype(np.uint8), rgb)  # RGB order, not BGR
    assert info == {"format": "PNG", "bit_depth": 8, "width": 120, "height": 80, "conversions": []}


def test_16_bit_png_keeps_full_precision(tmp_path):
    import cv2

    values = np.random.default_rng(0).integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    assert np.any(values % 257 != 0)  # not representable in 8 bits
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(values, cv2.COLOR_RGB2BGR))
    img, info = read_image(path)
    assert info["bit_depth"] == 16 and "16-bit" in info["conversions"]
    assert np.array_equal(np.rint(img.astype(np.float64) * 65535).astype(np.uint16), values)
    assert np.array_equal(img, values.astype(np.float32) / np.float32(65535))


def test_16_bit_gray_png(tmp_path):
    import cv2

    gray = np.random.default_rng(1).integers(0, 65536, (25, 35)).astype(np.uint16)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), gray)
    img, info = read_image(path)
    assert img.shape == (25, 35, 3) and info["bit_depth"] == 16
    assert {"16-bit", "gray-to-rgb"} <= set(info["conversions"])
    for c in range(3):
        assert np.array_equal(np.rint(img[..., c].astype(np.float64) * 65535).astype(np.uint16), gray)


def test_8_bit_gray_png(tmp_path, rgb):
    gray = rgb[..., 1]
    img, info = read_image(_save(tmp_path / "g.png", gray))
    assert img.shape == (80, 120, 3) and info["conversions"] == ["gray-to-rgb"]
    for c in range(3):
        assert np.array_equal(np.rint(img[..., c] * 255).astype(np.uint8), gray)


def test_rgba_drops_alpha_without_compositing(tmp_path, rgb):
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 60:] = 255  # half fully transparent: its colour must survive unchanged
    img, info = read_image(_save(tmp_path / "a.png", np.dstack([rgb, alpha])))
    assert info["conversions"] == ["alpha-dropped"]
    assert np.array_equal(np.rint(img * 255).astype(np.uint8), rgb)


def test_gray_alpha_png(tmp_path, rgb):
    la = Image.fromarray(rgb).convert("LA")
    img, info = read_image(_save(tmp_path / "la.png", la))
    assert set(info["conversions"]) == {"gray-to-rgb", "alpha-dropped"}
    expected = np.asarray(la)[..., 0]
    assert np.array_equal(np.rint(img[..., 2] * 255).astype(np.uint8), expected)


def test_palette_png(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P")
    img, info = read_image(_save(tmp_path / "p.png", pal))
    assert "palette-to-rgb" in info["conversions"]
    assert np.array_equal(np.rint(img * 255).astype(np.uint8), np.asarray(pal.convert("RGB")))


def test_cmyk_jpeg_has_correct_colours(tmp_path, rgb):
    path = _save(tmp_path / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=98)
    assert Image.open(path).mode == "CMYK"
    img, info = read_image(path)
    assert info["conversions"] == ["cmyk-to-rgb"] and img.shape == (80, 120, 3)
    assert _jpeg_error(img * 255, rgb) < 3.0  # inverted (Adobe) CMYK would be ~100 off


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "o.jpg", rgb, exif=exif, quality=98)
    img, info = read_image(path)
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert img.shape == viewer.shape
    assert (info["height"], info["width"]) == viewer.shape[:2]
    assert _jpeg_error(img * 255, viewer) < 2.0
    assert ("exif-rotated" in info["conversions"]) == (orientation != 1)
    if orientation == 6:  # the common phone case: stored landscape, shown portrait
        assert img.shape == (120, 80, 3)


def test_exif_orientation_in_png(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 8
    img, info = read_image(_save(tmp_path / "o.png", rgb, exif=exif))
    assert np.array_equal(np.rint(img * 255).astype(np.uint8), np.rot90(rgb))
    assert info["conversions"] == ["exif-rotated"]


# --- the bad-input zoo -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -2])
def test_truncated_files_raise(tmp_path, rgb, fmt, keep):
    full = _save(tmp_path / f"full.{fmt}", rgb).read_bytes()
    n = len(full) + keep if keep < 0 else int(len(full) * keep)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(full[:n])
    if fmt == "png" and keep == -2:
        # Only the IEND chunk's CRC is cut: all pixel data is there, decoded exactly.
        img, info = read_image(path)
        assert np.array_equal(np.rint(img * 255).astype(np.uint8), rgb)
        assert "pillow-fallback" in info["conversions"]
        return
    with pytest.raises(ImageReadError, match="truncated or corrupt") as e:
        read_image(path)
    assert str(path) in str(e.value) and e.value.path == str(path)


def test_text_saved_as_png_raises(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a recognised image") as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_garbage_after_valid_header_raises(tmp_path, rgb):
    data = bytearray(_save(tmp_path / "ok.png", rgb).read_bytes())
    data[100:] = bytes(len(data) - 100)
    path = tmp_path / "zeroed.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=str(path)):
        read_image(path)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(path)


def test_missing_path_raises(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_directory_raises(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path / "d.png")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_raises(tmp_path, rgb):
    path = _save(tmp_path / "secret.png", rgb)
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_error_message_names_path_reason_and_fix(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"GIF89a-but-not-really")
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and " — " in message


# --- writing -------------------------------------------------------------------------------


def test_png_8_bit_round_trip(rgb):
    img = rgb.astype(np.float32) / 255
    data = encode_image(img, bit_depth=8, fmt="png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_image_bytes(data), img)


def test_png_16_bit_round_trip():
    values = np.random.default_rng(2).integers(0, 65536, (16, 24, 3)).astype(np.uint16)
    img = values.astype(np.float32) / np.float32(65535)
    back = decode_image_bytes(encode_image(img, bit_depth=16))
    assert np.array_equal(back, img)


def test_encode_rounds_and_clips():
    img = np.array([[[-0.5, 0.5 / 255, 1.7]]], np.float32)
    back = decode_image_bytes(encode_image(img))
    assert np.array_equal(np.rint(back * 255), [[[0, 0, 255]]])  # 0.5 rounds half to even
    img = np.array([[[0.6 / 255, 1.4 / 255, 254.6 / 255]]], np.float32)
    assert np.array_equal(np.rint(decode_image_bytes(encode_image(img)) * 255), [[[1, 1, 255]]])


def test_jpeg_round_trip_and_quality(rgb):
    img = rgb.astype(np.float32) / 255
    high = encode_image(img, fmt="jpg", jpeg_quality=95)
    low = encode_image(img, fmt="jpg", jpeg_quality=30)
    assert high[:2] == b"\xff\xd8" and len(low) < len(high)
    assert _jpeg_error(decode_image_bytes(high) * 255, rgb) < 5.0  # 4:2:0 chroma on a small photo
    with pytest.raises(ValueError, match="8-bit"):
        encode_image(img, bit_depth=16, fmt="jpg")


def test_encoding_is_deterministic(rgb):
    img = rgb.astype(np.float32) / 255
    assert sha256_bytes(encode_image(img)) == sha256_bytes(encode_image(img.copy()))


def test_decode_image_bytes_errors_name_the_input():
    with pytest.raises(ImageReadError, match="<bytes>"):
        decode_image_bytes(b"not an image")


def test_write_bytes_atomic(tmp_path):
    target = tmp_path / "a" / "b" / "file.png"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.png"]  # no temp files left


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    for rel in ["b.PNG", "a.jpg", "sub/c.JpEg", "sub/deeper/d.webp", "notes.txt", "sub/e.png.bak"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    os.symlink(tmp_path / "gone.png", tmp_path / "sub" / "link.png")  # kept: read_image reports it
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "sub/link.png"]
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_image(tmp_path / "sub" / "link.png")
    with pytest.raises(NotADirectoryError):
        find_images(tmp_path / "a.jpg")


# --- the PNG writer (Sub filter + ISA-L igzip or libdeflate) ------------------------------------

EVERY_PNG_SETTING = [("isal", level) for level in range(4)] + [("libdeflate", level) for level in (0, 1, 6, 12)]


@pytest.mark.parametrize("bit_depth,dtype,top", [(8, np.uint8, 255), (16, np.uint16, 65535)])
@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (13, 1, 3), (37, 61, 3), (300, 500, 3)])
def test_png_writer_is_lossless_for_every_level_and_reader(shape, bit_depth, dtype, top):
    from PIL import Image

    rng = np.random.default_rng(sum(shape) + bit_depth)
    codes = rng.integers(0, top + 1, shape).astype(dtype)
    if shape[0] > 100:  # a smooth image with runs, where the compressors find long matches
        codes = np.cumsum(rng.integers(0, 2, shape), axis=1).astype(dtype)
    for compressor, level in EVERY_PNG_SETTING:
        data = encode_image(codes, bit_depth=bit_depth, png_level=level, png_compressor=compressor)
        cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH)
        assert cv.dtype == dtype and np.array_equal(cv, codes), (compressor, level)
        with Image.open(io.BytesIO(data)) as im:  # an independent decoder, which also checks the CRCs
            im.load()
            assert im.size == (shape[1], shape[0])
            if bit_depth == 8:
                assert np.array_equal(np.asarray(im), codes)


def test_integer_codes_encode_like_the_float_image(rgb):
    assert encode_image(rgb) == encode_image(rgb.astype(np.float32) / np.float32(255))
    sixteen = (rgb.astype(np.uint16) * 257)
    assert encode_image(sixteen, bit_depth=16) == encode_image(sixteen / np.float32(65535), bit_depth=16)
    with pytest.raises(ValueError, match="uint16"):
        encode_image(rgb, bit_depth=16)


def test_png_levels_trade_size_for_time_never_pixels(rgb):
    sizes = {level: len(encode_image(rgb, png_level=level, png_compressor="libdeflate")) for level in (0, 1, 9)}
    assert sizes[0] > sizes[1] >= sizes[9]  # 0 stores, the others compress
    assert sizes[0] >= rgb.size
    isal = len(encode_image(rgb))  # the default: ISA-L level 1
    assert isal < 0.8 * sizes[0] and isal < 1.15 * sizes[1]  # compresses about as well as libdeflate's level 1
    with pytest.raises(ValueError, match="--png-level"):
        encode_image(rgb, png_level=13, png_compressor="libdeflate")
    with pytest.raises(ValueError, match="--png-level"):
        encode_image(rgb, png_level=4)  # ISA-L has levels 0-3
    with pytest.raises(ValueError, match="--png-compressor"):
        encode_image(rgb, png_compressor="zlib")


def test_png_settings_name_the_encoder_and_check_the_level():
    from blurforge.imageio import png_settings

    s = png_settings()
    assert s["level"] == 1 and s["compressor"] == "isal" and "ISA-L" in s["encoder"]
    lib = png_settings(12, "libdeflate")
    assert lib["level"] == 12 and "libdeflate" in lib["encoder"]
    assert png_settings(0)["level"] == 0
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="--png-level"):
            png_settings(bad)
    with pytest.raises(ValueError, match="--png-level"):
        png_settings(13, "libdeflate")


def test_png_compression_off_the_gil_gives_the_packages_bytes(rgb, monkeypatch):
    # The zlib stream is made by libdeflate called through ctypes (so PNGs can be written on threads);
    # it must be byte for byte what the deflate package's own wrapper gives, at every level, and the
    # fallback (the wrapper itself) must write the same files.
    from concurrent.futures import ThreadPoolExecutor

    import deflate

    from blurforge import imageio

    noisy = np.random.default_rng(5).integers(0, 256, (64, 96, 3)).astype(np.uint8)
    for data in (rgb, noisy, np.zeros((3, 1000, 3), np.uint8)):
        flat = np.ascontiguousarray(data).reshape(-1)
        for level in range(13):
            assert imageio._zlib_compress(flat, level) == bytes(deflate.zlib_compress(flat.tobytes(), level))
    images = [rgb, noisy, rgb[::2], noisy[:, ::-1]]
    serial = [encode_image(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(encode_image, images * 4)) == serial * 4
    monkeypatch.setattr(imageio, "_libdeflate", lambda: None)
    assert [encode_image(im) for im in images] == serial
