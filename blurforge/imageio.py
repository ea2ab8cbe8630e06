"""Reading and writing images: robust decode to float32 RGB, encode to PNG/JPEG, atomic writes.

In memory an image is ``H×W×3 float32`` in [0, 1], RGB order, sRGB-encoded as stored in the
file (no colour management: ICC profiles are ignored). ``read_image`` either returns such an
array or raises ``ImageReadError`` naming the file, the reason and what to do — a bad input
never crashes a worker and never decodes to something silently wrong.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pathlib
import struct
import warnings
import zlib

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_EXIF_ORIENTATION = 0x0112
# Leading bytes of the formats we read: such a file that does not parse is damaged, not alien.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"RIFF", b"GIF8")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class ImageReadError(Exception):
    """An image file that cannot be read; the message names the path, the reason and a fix."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None, hint: str | None = None):
        self.path = str(path)
        self.reason = reason or ""
        if reason is None:  # ImageReadError("<path>: <reason> — <hint>") with a ready message
            super().__init__(self.path)
        else:
            super().__init__(f"{self.path}: {reason}" + (f" — {hint}" if hint else ""))


def find_images(directory: str | os.PathLike, skipped: list | None = None) -> list[pathlib.Path]:
    """All entries under ``directory`` (recursively) whose extension is in ``IMAGE_EXTENSIONS``
    (case-insensitive), sorted by path; folders are skipped, but broken links and unreadable
    files are kept so that ``read_image`` reports them instead of them silently vanishing.

    Folders below ``directory`` that hold a blurforge output (``run.json``, ``manifest/``,
    ``stats/``; :func:`blurforge.shards.is_output_dir`) are not entered — their pairs must not
    come back as new inputs — and are appended to ``skipped`` when a list is given. Symlinked
    folders are not followed. Raises ``NotADirectoryError`` if ``directory`` is not a folder."""
    from blurforge.shards import is_output_dir

    root = pathlib.Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory — pass the folder that holds the images")
    found = []
    for folder, dirs, files in os.walk(root):
        keep = []
        for d in sorted(dirs):
            path = pathlib.Path(folder, d)
            if os.path.islink(path):
                files.append(d)  # a link to a folder: listed like a file, dropped below unless it is broken
            elif is_output_dir(path):
                if skipped is not None:
                    skipped.append(path)
            else:
                keep.append(d)
        dirs[:] = keep
        found += [pathlib.Path(folder, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(p for p in found if not p.is_dir())


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Decode an image file to ``H×W×3 float32`` sRGB in [0, 1] (RGB order) plus an info dict.

    Returns ``(image_srgb, info)`` with ``info = {"format": "PNG" | "JPEG" | ... | None,
    "bit_depth": 8 | 16, "width": W, "height": H, "conversions": [...]}``; width and height
    are those after orientation, i.e. what an image viewer shows.

    How each kind of input is handled (``conversions`` records what was done):

    - 8-bit RGB: values / 255. 16-bit: values / 65535, full precision kept (``"16-bit"``).
    - Grayscale, 8 or 16-bit: replicated to three channels (``"gray-to-rgb"``).
    - RGBA / LA / palette with transparency: the alpha channel is dropped, colour kept as
      stored — **no compositing** onto a background (``"alpha-dropped"``).
    - Palette (``P``): expanded to RGB (``"palette-to-rgb"``).
    - CMYK / YCCK JPEG: decoded by Pillow, which honours Adobe's inverted-CMYK convention,
      and converted naively (no ICC) to RGB (``"cmyk-to-rgb"``).
    - EXIF orientation 2–8: applied, so the array is upright as a viewer shows it
      (``"exif-rotated"``). The orientation comes from Pillow's EXIF parser for every format.
    - Files OpenCV cannot decode but Pillow can, fully and without truncation (e.g. a PNG
      whose trailing IEND chunk is cut): decoded by Pillow (``"pillow-fallback"``; 16-bit RGB
      is then reduced to 8 bits by Pillow, reported by ``bit_depth``).

    Raises ``ImageReadError`` for: missing paths, directories, unreadable files (permissions),
    empty files, files that are not images (e.g. text saved as ``.png``), truncated or corrupt
    image data (any premature end is an error — never a partially grey image), float/HDR
    samples, and images too large for Pillow's decompression-bomb limit.
    """
    return _decode(_read_bytes(path), path)


def read_image_pixels(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``read_image`` without the conversion to float: the stored samples as ``H×W×3`` uint8 or
    uint16 (RGB, upright), divided by ``2**info["bit_depth"] - 1`` they are ``read_image``'s
    array. For readers that crop first (converting a crop is cheaper than the whole image)."""
    return _decode_pixels(_read_bytes(path), path)


def _decode(data: bytes, path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``read_image`` on bytes already read; ``path`` only names the input in errors."""
    rgb, info = _decode_pixels(data, path)
    return pixels_to_float(rgb, info["bit_depth"]), info


def pixels_to_float(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """``read_image``'s float32 values in [0, 1] of stored samples (``read_image_pixels``)."""
    return np.divide(pixels, np.float32(2**bit_depth - 1), dtype=np.float32)


def _decode_pixels(data: bytes, path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``read_image_pixels`` on bytes already read."""
    header = _sniff(path, data)
    conversions: list[str] = []
    if header is not None and header.mode in ("CMYK", "YCCK"):
        rgb = _decode_with_pillow(path, data)
        conversions.append("cmyk-to-rgb")
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
        try:
            rgb = cv2.imdecode(buf, flags)
        except cv2.error:
            rgb = None
        if rgb is None:
            if header is None and data.startswith(_SIGNATURES):
                raise ImageReadError(
                    path, "truncated or corrupt image data (the header cannot be parsed)",
                    "re-download or re-export the file, or remove it from the input folder",
                )
            if header is None:
                raise ImageReadError(
                    path, f"not a recognised image (first bytes {data[:16]!r})",
                    "is it really an image? re-export it, or remove it from the input folder",
                )
            rgb = _decode_with_pillow(path, data)
            conversions.append("pillow-fallback")
    if rgb.ndim == 2:  # defensive: every decode path above asks for 3 channels
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    elif rgb.shape[2] == 4:
        rgb = rgb[:, :, :3]
    if rgb.dtype == np.uint8:
        bit_depth = 8
    elif rgb.dtype == np.uint16:
        bit_depth = 16
        conversions.append("16-bit")
    else:
        raise ImageReadError(
            path, f"unsupported sample type {rgb.dtype} (float/HDR image?)",
            "convert it to an 8- or 16-bit PNG first",
        )
    if header is not None:
        mode = header.mode
        if mode in _GRAY_MODES:
            conversions.append("gray-to-rgb")
        if mode == "P":
            conversions.append("palette-to-rgb")
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in header.info):
            conversions.append("alpha-dropped")
        orientation = _orientation(header, data)
        if orientation != 1:
            rgb = _apply_orientation(rgb, orientation)
            conversions.append("exif-rotated")
    info = {
        "format": header.format if header is not None else None,
        "bit_depth": bit_depth,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "conversions": conversions,
    }
    return rgb, info


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(
                path, f"broken symbolic link (to {os.readlink(path)})", "fix or remove the link"
            ) from None
        raise ImageReadError(path, "no such file", "check the path (moved or deleted?)") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory", "pass an image file, not a folder") from None
    except PermissionError:
        raise ImageReadError(
            path, "permission denied", "make it readable (chmod) or run as a user who can read it"
        ) from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({e.strerror or e})", "check the disk and path") from None
    if not data:
        raise ImageReadError(
            path, "empty file (0 bytes)", "it was probably not written completely; re-export or remove it"
        )
    return data


def _sniff(path: str | os.PathLike, data: bytes) -> Image.Image | None:
    """Pillow's lazy header parse (format, mode, size, EXIF); None if Pillow does not know it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"image too large ({e})", "downscale it before use") from None
    except Exception:  # UnidentifiedImageError, or a header too broken to parse
        return None


def _decode_with_pillow(path: str | os.PathLike, data: bytes) -> np.ndarray:
    """Full decode with Pillow (which raises on truncated data) to uint8/uint16 ``H×W×3``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()
    except Exception as e:
        raise ImageReadError(
            path, f"truncated or corrupt image data ({type(e).__name__}: {e})",
            "re-download or re-export the file, or remove it from the input folder",
        ) from None
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        gray = np.asarray(im).astype(np.uint16)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "I":  # 32-bit integer gray; 16-bit files can open this way
        gray = np.asarray(im)
        if gray.size and gray.min() >= 0 and gray.max() <= 65535:
            return np.repeat(gray.astype(np.uint16)[:, :, None], 3, axis=2)
        return gray  # rejected by the caller as an unsupported sample type
    if im.mode == "F":
        return np.asarray(im)  # rejected by the caller as an unsupported sample type
    return np.asarray(im.convert("RGB"))


def _orientation(header: Image.Image, data: bytes) -> int:
    # Pillow parses a PNG's EXIF only by decoding the whole image: skip it if there is none.
    if header.format == "PNG" and b"eXIf" not in data:
        return 1
    try:
        value = int(header.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: keep the stored orientation
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels upright for EXIF orientation 1–8 (as ``ImageOps.exif_transpose``)."""
    ops = {
        2: lambda a: a[:, ::-1],                    # mirrored horizontally
        3: lambda a: a[::-1, ::-1],                 # rotated 180°
        4: lambda a: a[::-1, :],                    # mirrored vertically
        5: lambda a: a.transpose(1, 0, 2),          # transposed
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1], # rotate 90° clockwise to view
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: a.transpose(1, 0, 2)[::-1, :], # rotate 90° counter-clockwise to view
    }
    return np.ascontiguousarray(ops[orientation](image))


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (PNG/JPEG/...) to ``H×W×3 float32`` sRGB in [0, 1].

    Same rules as ``read_image``; errors name the input ``<bytes>``. For tests and re-hashing.
    """
    if not data:
        raise ImageReadError("<bytes>", "empty data (0 bytes)", "nothing to decode")
    return _decode(bytes(data), "<bytes>")[0]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


# PNG is written here (not by OpenCV/libpng): every row "Sub"-filtered (the byte difference to
# the same channel of the pixel on the left, vectorised) and the rows compressed as one zlib
# stream by a fast deflate library, called without the GIL so pairs can be encoded on threads:
# - "isal" (default): Intel ISA-L's igzip (the ``isal`` package), levels 0–3. On 1280×720 photos
#   and video frames level 1 is about 2× faster than libdeflate's level 1 with files about as
#   large (scripts/bench_synthesize.py prints both).
# - "libdeflate" (the ``deflate`` package), levels 0–12 (0 stores; 12 is the smallest/slowest).
#   libdeflate's compressor runs the same code on every CPU, so its bytes depend only on its
#   version; igzip picks code paths by CPU features, so identical bytes are promised only for the
#   same version on the same kind of machine. The pixels are identical everywhere.
# Both are lossless at every level and several times faster than cv2.imencode's PNG at its
# default (zlib level 1, RLE strategy).
PNG_COMPRESSORS = {"isal": range(0, 4), "libdeflate": range(0, 13)}  # name: its levels
DEFAULT_PNG_COMPRESSOR = "isal"
DEFAULT_PNG_LEVEL = 1  # the fastest level that compresses well, for either compressor


def png_settings(level: int | None = None, compressor: str | None = None) -> dict:
    """A job's PNG settings as recorded in its ``run.json``:
    ``{"compressor": C, "level": L, "encoder": "..."}``.

    The encoder string names the compressor's package and version: the bytes written depend on
    both (the pixels do not), so a job resumed with another version is refused rather than
    silently mixing two encodings. Raises ``ValueError`` for an unknown compressor or a level
    it does not have."""
    compressor = DEFAULT_PNG_COMPRESSOR if compressor is None else compressor
    level = DEFAULT_PNG_LEVEL if level is None else level
    _check_png(level, compressor)
    if compressor == "isal":
        import isal

        encoder = f"sub-filter + ISA-L igzip (isal {getattr(isal, '__version__', '?')})"
    else:
        import deflate

        encoder = f"sub-filter + libdeflate (deflate {getattr(deflate, '__version__', '?')})"
    return {"compressor": compressor, "level": int(level), "encoder": encoder}


def png_options(settings: dict | None) -> dict:
    """``encode_image`` keywords (``png_level``, ``png_compressor``) of a job's recorded PNG
    settings (``png_settings``; defaults for what is missing)."""
    settings = settings or {}
    return {"png_level": settings.get("level", DEFAULT_PNG_LEVEL),
            "png_compressor": settings.get("compressor", DEFAULT_PNG_COMPRESSOR)}


def _check_png(level, compressor: str) -> None:
    if compressor not in PNG_COMPRESSORS:
        raise ValueError(f"--png-compressor must be one of {', '.join(PNG_COMPRESSORS)}, got {compressor!r}")
    levels = PNG_COMPRESSORS[compressor]
    if isinstance(level, bool) or level not in levels:
        raise ValueError(f"--png-level must be an integer in {levels.start}..{levels.stop - 1} for "
                         f"--png-compressor {compressor}, got {level!r}")


def encode_image(
    image: np.ndarray,
    bit_depth: int = 8,
    fmt: str = "png",
    jpeg_quality: int | None = None,
    png_level: int = DEFAULT_PNG_LEVEL,
    png_compressor: str = DEFAULT_PNG_COMPRESSOR,
) -> bytes:
    """Encode an ``H×W×3`` RGB image to file bytes.

    ``image``: float sRGB in [0, 1] (clipped, rounded to nearest code), or integer codes
    already — ``uint8`` for ``bit_depth=8``, ``uint16`` for 16 — written as they are.
    ``fmt="png"`` with ``bit_depth`` 8 or 16, ``png_compressor`` (``"isal"`` or ``"libdeflate"``)
    and its ``png_level`` (see ``PNG_COMPRESSORS``; lossless at every level); ``fmt="jpg"``/``"jpeg"`` is 8-bit only, with
    ``jpeg_quality`` 1–100 (default 95). The output is deterministic for given library
    versions (``png_settings()``), so its SHA-256 identifies the content.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H×W×3, got shape {img.shape}")
    fmt = fmt.lower()
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if fmt in ("jpg", "jpeg"):
        if bit_depth != 8:
            raise ValueError("JPEG is 8-bit only: use bit_depth=8 or fmt='png'")
        quality = 95 if jpeg_quality is None else int(jpeg_quality)
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(quantise(img, 8), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode a {img.shape} image as JPEG")
        return encoded.tobytes()
    if fmt != "png":
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    if jpeg_quality is not None:
        raise ValueError("jpeg_quality is only meaningful with fmt='jpg'")
    _check_png(png_level, png_compressor)
    return _png_bytes(quantise(img, bit_depth), int(png_level), png_compressor)


def quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """``H×W×C`` codes for ``bit_depth``: float input clipped to [0, 1], scaled by 255 or 65535
    and rounded to nearest (ties to even); integer input of the matching dtype as it is."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    img = np.asarray(image)
    if img.dtype.kind in "ui":
        if img.dtype != dtype:
            raise ValueError(f"integer images must be {np.dtype(dtype).name} for bit_depth={bit_depth}, "
                             f"got {img.dtype} — pass float values in [0, 1] to convert")
        return img
    top = np.float32(255.0 if bit_depth == 8 else 65535.0)
    scaled = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False) * top
    return np.rint(scaled, out=scaled).astype(dtype)


def _png_bytes(codes: np.ndarray, level: int, compressor: str = DEFAULT_PNG_COMPRESSOR) -> bytes:
    """PNG file bytes (colour type 2, RGB; no interlace) of ``H×W×3`` uint8/uint16 ``codes``."""
    h, w, c = codes.shape
    if codes.dtype == np.uint16:
        rows = np.ascontiguousarray(codes, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
        depth, bpp = 16, 2 * c  # bytes per pixel: the Sub filter's distance
    else:
        rows = np.ascontiguousarray(codes).reshape(h, w * c)
        depth, bpp = 8, c
    filtered = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub: byte - the byte bpp to the left (mod 256), 0 before the row
    filtered[:, 1 : 1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp :])
    idat = _zlib_compress(filtered, level) if compressor == "libdeflate" else _isal_compress(filtered, level)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    return b"".join([_PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _zlib_compress(data: np.ndarray, level: int) -> bytes:
    """The zlib stream of the contiguous array ``data`` at libdeflate ``level``: the bytes of
    ``deflate.zlib_compress(data, level)``, computed without holding the GIL when the library
    can be called directly (``_libdeflate``), so PNGs can be encoded on threads."""
    lib = _libdeflate()
    if lib is None:
        import deflate

        return bytes(deflate.zlib_compress(data, level))
    compressor = lib.libdeflate_alloc_compressor(level)
    if not compressor:
        raise MemoryError(f"libdeflate could not allocate a level-{level} compressor")
    try:
        bound = lib.libdeflate_zlib_compress_bound(compressor, data.nbytes)
        out = np.empty(bound, np.uint8)
        n = lib.libdeflate_zlib_compress(compressor, data.ctypes.data, data.nbytes, out.ctypes.data, bound)
    finally:
        lib.libdeflate_free_compressor(compressor)
    if n == 0:
        raise RuntimeError(f"libdeflate failed to compress {data.nbytes} bytes")
    return out[:n].tobytes()


def _isal_compress(data: np.ndarray, level: int) -> bytes:
    """The zlib stream of the contiguous array ``data`` by ISA-L's igzip at ``level`` (0–3); the
    ``isal`` package releases the GIL while it compresses."""
    from isal import isal_zlib

    return isal_zlib.compress(data, level)


@functools.lru_cache(maxsize=None)
def _libdeflate():
    """libdeflate's compressor functions in the ``deflate`` package's extension module, called
    through ctypes (which releases the GIL for the call; the package's own wrapper keeps it), or
    None if the module does not export them (then ``deflate.zlib_compress`` is used: same bytes)."""
    import ctypes

    import deflate

    try:
        lib = ctypes.CDLL(deflate._deflate.__file__)
        lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
        lib.libdeflate_free_compressor.restype = None
        lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_zlib_compress_bound.restype = ctypes.c_size_t
        lib.libdeflate_zlib_compress_bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.libdeflate_zlib_compress.restype = ctypes.c_size_t
        lib.libdeflate_zlib_compress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                 ctypes.c_void_p, ctypes.c_size_t]
    except (AttributeError, OSError):
        return None
    return lib


def _chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))])


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then ``os.replace``;
    see :func:`blurforge.storage.write_local_atomic`). Readers see the old file or the new one,
    never a partial one; a killed process leaves at most a ``.<name>.*.tmp`` file behind, which
    the next run sweeps. (No fsync: this guards against kills, not power loss.)"""
    from blurforge.storage import write_local_atomic

    write_local_atomic(pathlib.Path(path), data)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the manifest's ``blur_sha256`` / ``sharp_sha256``)."""
    return hashlib.sha256(data).hexdigest()
