"""Uniform blur in linear light, and the RSBlur realism stage.

The pipeline for one pair (DESIGN §3)::

    sharp_srgb --srgb_to_linear--> sharp_lin --convolve(kernel)--> blurry_lin
               --apply_realism--> blurry_lin --linear_to_srgb--> blurry_srgb

``render_uniform`` runs all of it. Images are ``H×W×3 float32`` in [0, 1]; a kernel is a
2-D float array (the PSF, normally non-negative and summing to 1) whose centre is the pixel
``(kh // 2, kw // 2)``, the same centre ``scipy.ndimage.convolve`` uses.

Realism follows RSBlur (Rim et al., ECCV 2022): parameters are sampled by ``sample_realism``
into a plain JSON-able dict (it goes into the manifest row) and applied by ``apply_realism``;
the noise realisation is drawn from the ``rng`` passed in, so ``(seed, params)`` re-renders a
sample exactly. The noise itself is RSBlur's camera pipeline (``blurforge.camera``);
``frames_realism`` is the same stage for frame-averaged pairs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from blurforge.camera import DEFAULT_NOISE_PRESET, NOISE_PRESETS, camera_noise, sample_camera_noise

# Kernels with fewer taps than this go through cv2.filter2D's direct (spatial) loop, which is
# exact and fast for them; larger ones go through our own DFT (cv2 switches to a DFT itself
# from 50 taps on, but a slower, tiled one).
_DIRECT_MAX_TAPS = 49

_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# sRGB transfer functions (IEC 61966-2-1)
# ---------------------------------------------------------------------------------------------


def srgb_to_linear(x_srgb: np.ndarray) -> np.ndarray:
    """The sRGB EOTF: encoded values in [0, 1] → linear light in [0, 1], float32, same shape.

    ``x / 12.92`` for ``x <= 0.04045``, else ``((x + 0.055) / 1.055) ** 2.4``. Computed in
    float32 (max error vs float64 ≈ 3e-7). The input is not modified.

    An image whose every value is an 8-bit code ``k / 255`` (what ``read_image`` gives for
    8-bit files) is converted through a 256-entry table of this same function: the result is
    bit-identical to the formula's, about four times faster. A ``uint8`` array is taken as the
    codes ``k`` themselves (``read_image_pixels`` of an 8-bit file) and goes straight to the table.
    """
    if isinstance(x_srgb, np.ndarray) and x_srgb.dtype == np.uint8:  # 8-bit codes k: the table of k / 255
        codes = _lut_plane(np.ascontiguousarray(x_srgb))
        return cv2.LUT(codes, _srgb_to_linear_table()).reshape(x_srgb.shape)
    x = np.asarray(x_srgb, dtype=_F32)
    codes = _as_8bit_codes(x)
    if codes is not None:
        return cv2.LUT(codes, _srgb_to_linear_table()).reshape(x.shape)
    out = np.empty(x.shape, dtype=_F32)
    _map_row_blocks(_srgb_to_linear_block, x, out)
    return out


def _srgb_to_linear_block(x: np.ndarray, out: np.ndarray) -> None:
    np.multiply(x, _F32(1.0 / 1.055), out=out)
    out += _F32(0.055 / 1.055)
    np.maximum(out, _F32(0.0), out=out)  # x < -0.055 would give NaN; it takes the branch below
    np.power(out, _F32(2.4), out=out)
    np.divide(x, _F32(12.92), out=out, where=x <= _F32(0.04045))


@functools.lru_cache(maxsize=None)
def _srgb_to_linear_table() -> np.ndarray:
    """``(256,) float32``: the EOTF of ``k / 255`` for every 8-bit code ``k``, by the formula."""
    x = np.arange(256, dtype=_F32) / _F32(255)
    out = np.empty_like(x)
    _srgb_to_linear_block(x, out)
    return out


@functools.lru_cache(maxsize=None)
def _code_values() -> np.ndarray:
    """``(256,) float32``: ``k / 255`` exactly as ``read_image`` computes it."""
    return np.divide(np.arange(256, dtype=np.uint8), _F32(255), dtype=_F32)


def _lut_plane(x: np.ndarray) -> np.ndarray:
    """A contiguous ``x`` as the 2-D array ``cv2.LUT`` and ``cv2.convertScaleAbs`` take: one row
    per pixel of up to 4 channels, else a single row."""
    return x.reshape(-1, x.shape[-1]) if x.ndim and x.shape[-1] <= 4 else x.reshape(1, -1)


# Below this many values the plain formula is as fast as looking for 8-bit codes.
_MIN_TABLE_SIZE = 4096


def _as_8bit_codes(x: np.ndarray) -> np.ndarray | None:
    """The uint8 codes ``k`` if every value of ``x`` is exactly ``k / 255``, else None.

    A strided sample is checked first so that general float images pay almost nothing; then
    ``k = round(255 x)`` for all values and ``k / 255 == x`` is verified everywhere."""
    if x.size < _MIN_TABLE_SIZE or x.ndim < 2:
        return None
    flat = x.reshape(-1) if x.flags.c_contiguous else None
    if flat is None:
        return None
    sample = flat[:: max(1, flat.size // 997)]
    k = np.rint(sample * _F32(255))
    if not (k.min() >= 0 and k.max() <= 255 and np.array_equal(_code_values()[k.astype(np.intp)], sample)):
        return None
    plane = _lut_plane(x)
    codes = cv2.convertScaleAbs(plane, alpha=255.0)  # round-to-nearest, saturated to 0..255
    if not np.array_equal(cv2.LUT(codes, _code_values()), plane):  # (cv2.compare misses NaN)
        return None  # NaN, negative or in-between values somewhere
    return codes


def linear_to_srgb(x_lin: np.ndarray) -> np.ndarray:
    """The sRGB OETF: linear light → encoded values, float32, same shape.

    The input is first clipped to [0, 1] (the output is display-ready), then ``12.92 * x`` for
    ``x <= 0.0031308``, else ``1.055 * x ** (1 / 2.4) - 0.055``. The input is not modified.
    """
    x = np.asarray(x_lin, dtype=_F32)
    out = np.empty(x.shape, dtype=_F32)
    _map_row_blocks(_linear_to_srgb_block, x, out)
    return out


def _linear_to_srgb_block(x: np.ndarray, out: np.ndarray) -> None:
    np.clip(x, _F32(0.0), _F32(1.0), out=out)
    low = out <= _F32(0.0031308)
    low_values = out[low] * _F32(12.92)
    np.power(out, _F32(1.0 / 2.4), out=out)
    out *= _F32(1.055)
    out -= _F32(0.055)
    out[low] = low_values


# ---------------------------------------------------------------------------------------------
# Linear light straight to 8-bit codes, exactly
# ---------------------------------------------------------------------------------------------

CODE_CURVES = ("srgb", "gamma2.2", "linear")

# A float32's bits shifted right by this index cells of 2^-8 relative width (exponent + 8
# mantissa bits): narrower than the gap between any two neighbouring code thresholds of the
# curves above (≥ 0.39% near code 255 for "linear", 0.87% for gamma 2.2 and sRGB), so a cell
# holds at most one threshold (checked when a table is built).
_CELL_SHIFT = 15


def linear_to_codes(x_lin: np.ndarray, curve: str = "srgb") -> np.ndarray:
    """Linear light → 8-bit codes ``round(255 · curve(clip(x, 0, 1)))``, exactly, as ``uint8``.

    ``curve``: ``"srgb"`` (the OETF of ``linear_to_srgb``), ``"gamma2.2"`` (``x^(1/2.2)``) or
    ``"linear"``. ``x_lin``: float32 (other dtypes are converted to float32 first), any shape.

    The code of ``x`` is the number of thresholds ``T_k = curve⁻¹((k - ½) / 255)``, k = 1…255,
    that ``x`` reaches (round half up of the exact real value). The thresholds are computed once
    in 60-digit decimal arithmetic and rounded up to float32, so the result is the exact one for
    every float32 input, identical on every machine. It is found through a table over the float's
    bits (``_code_table``): about 3× faster than ``linear_to_srgb`` + ``quantise``, whose float32
    power differs from the exact code by one in ~1e-5 of the values.
    NaN gives an unspecified code.
    """
    x = np.ascontiguousarray(x_lin, dtype=_F32)
    low, threshold = _code_table(curve)
    out = np.empty(x.shape, np.uint8)
    _map_row_blocks(functools.partial(_codes_block, low=low, threshold=threshold), x, out)
    return out


def _codes_block(x: np.ndarray, out: np.ndarray, low: np.ndarray, threshold: np.ndarray) -> None:
    step = max(1, _CODES_CHUNK // max(1, x[0].size)) if x.ndim > 1 else len(x)
    for y in range(0, len(x), step):  # a few rows at a time: the temporaries stay in the CPU cache
        xs = x[y : y + step]
        cell = np.right_shift(xs.view(np.uint32), _CELL_SHIFT, dtype=np.intp)  # (indexing is fastest with intp)
        codes = low[cell]
        codes += threshold[cell] <= xs  # the one threshold of the cell, if x reaches it
        out[y : y + step] = codes


_CODES_CHUNK = 1 << 15  # values per step of _codes_block (8 rows of 1280×3: 1.6× faster than whole images)


@functools.lru_cache(maxsize=None)
def _code_table(curve: str) -> tuple[np.ndarray, np.ndarray]:
    """``(low, threshold)`` per cell of float32 bit patterns (``bits >> _CELL_SHIFT``):
    ``low`` (uint8) the code of the cell's smallest value, ``threshold`` (float32) the next
    code's threshold when it lies inside the cell, else NaN (no value reaches it). Negative
    values: code 0; above 1, +inf: 255."""
    thresholds = _code_thresholds(curve)
    n = 1 << (32 - _CELL_SHIFT)
    bits = np.arange(n, dtype=np.uint64) << np.uint64(_CELL_SHIFT)
    first = bits.astype(np.uint32).view(_F32)
    last = (bits + np.uint64((1 << _CELL_SHIFT) - 1)).astype(np.uint32).view(_F32)
    with np.errstate(invalid="ignore"):
        low = np.searchsorted(thresholds, first, side="right")
        high = np.searchsorted(thresholds, last, side="right")
    negative = bits >= np.uint64(1 << 31)
    above = ~negative & (bits >= np.uint64(0x7F800000))  # +inf and NaN patterns
    low[negative], high[negative] = 0, 0
    low[above], high[above] = 255, 255
    if np.any(high - low > 1):
        raise AssertionError(f"{curve}: two code thresholds in one table cell — lower _CELL_SHIFT")
    threshold = np.full(n, np.nan, dtype=_F32)
    inside = high > low
    threshold[inside] = thresholds[low[inside]]
    return low.astype(np.uint8), threshold


def _code_thresholds(curve: str) -> np.ndarray:
    """``(255,) float32``: the smallest float32 ``x`` with ``curve(x) ≥ (k - ½) / 255``, k = 1…255."""
    from decimal import Decimal, localcontext

    if curve not in CODE_CURVES:
        raise ValueError(f"curve must be one of {', '.join(CODE_CURVES)}, got {curve!r}")
    out = np.empty(255, dtype=_F32)
    with localcontext() as ctx:
        ctx.prec = 60

        def inverse(c: Decimal) -> Decimal:  # the decoding curve: code value → linear
            if curve == "linear":
                return c
            if curve == "gamma2.2":
                return c ** Decimal("2.2")
            if c <= Decimal("0.04045"):
                return c / Decimal("12.92")
            return ((c + Decimal("0.055")) / Decimal("1.055")) ** Decimal("2.4")

        for k in range(1, 256):
            t = inverse(Decimal(2 * k - 1) / Decimal(510))
            v = np.float32(float(t))  # nearest, then step to the smallest float32 >= t
            while Decimal(float(v)) < t:
                v = np.nextafter(v, _F32(np.inf), dtype=_F32)
            while Decimal(float(below := np.nextafter(v, _F32(-np.inf), dtype=_F32))) >= t:
                v = below
            out[k - 1] = v
    return out


def _n_threads(n_items: int) -> int:
    """Threads for ``n_items`` independent pieces: OpenCV's budget (``cv2.setNumThreads``)."""
    return max(1, min(n_items, cv2.getNumThreads()))


def _map_row_blocks(fn, x: np.ndarray, out: np.ndarray, min_rows: int = 64) -> None:
    """``fn(x[rows], out[rows])`` over blocks of rows, on threads for big images (numpy
    ufuncs release the GIL, so this uses the cores cv2 would)."""
    rows = x.shape[0] if x.ndim else 1
    n = _n_threads(max(1, rows // min_rows)) if x.ndim else 1
    if n == 1:
        fn(x, out)
        return
    bounds = np.linspace(0, rows, n + 1).astype(int)
    blocks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda s: fn(x[s], out[s]), blocks))


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    k = np.asarray(kernel, dtype=_F32)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"kernel must be a non-empty 2-D array, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("kernel contains NaN or inf values")
    return k


def convolve(image_lin: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True 2-D convolution of every channel with ``kernel``, reflected borders, same size.

    ``out[y, x] = Σ_{i,j} image[y - i + kh//2, x - j + kw//2] · kernel[i, j]`` — exactly what
    ``scipy.ndimage.convolve(image[..., c], kernel, mode="reflect")`` computes (half-sample
    symmetric borders, ``d c b a | a b c d``, = ``cv2.BORDER_REFLECT``; never zero padding).

    Args:
        image_lin: ``H×W×C`` or ``H×W`` float array (linear light, but any values work).
        kernel: ``kh×kw`` float array, centre ``(kh//2, kw//2)``; odd or even sizes; it is
            not normalised here. All-zero border rows/columns are cropped off first.

    Returns:
        float32 array of the input's shape.

    Backend: kernels with < 50 taps use ``cv2.filter2D`` on the flipped kernel (filter2D is a
    correlation); larger ones a product of spectra (``cv2.dft``, real-packed) over each
    channel reflect-padded by the kernel support and grown to a fast DFT size; the kernel's
    spectrum is computed once per call (only its first ``kh`` rows are non-zero, which
    ``cv2.dft`` exploits). Channels run on up to ``cv2.getNumThreads()`` threads (set
    ``cv2.setNumThreads(1)`` in process pools).
    """
    img = np.asarray(image_lin, dtype=_F32)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image must be H×W or H×W×C with H, W > 0, got shape {img.shape}")
    if img.ndim == 2:
        planes = [img]
    elif img.shape[2] <= 4:
        planes = list(cv2.split(img))  # contiguous planes, one pass
    else:
        planes = [np.ascontiguousarray(img[..., c]) for c in range(img.shape[2])]
    results = convolve_planes(planes, kernel)
    if img.ndim == 2:
        return np.ascontiguousarray(results[0])
    if img.shape[2] <= 4:
        return cv2.merge(results).reshape(img.shape)
    return np.stack(results, axis=-1)


def convolve_planes(planes: Sequence[np.ndarray], kernel: np.ndarray) -> list[np.ndarray]:
    """``convolve`` of each ``H×W`` plane (all one size), as a list of float32 planes: for
    callers that work channel by channel, without splitting and merging ``H×W×C`` arrays."""
    k = _check_kernel(kernel)
    planes = [np.ascontiguousarray(p, dtype=_F32) for p in planes]
    h, w = planes[0].shape
    if any(p.shape != (h, w) for p in planes) or h == 0 or w == 0:
        raise ValueError(f"planes must be non-empty H×W arrays of one size, got {[p.shape for p in planes]}")
    k, centre = _crop_to_support(k)
    kh, kw = k.shape
    if k.size <= _DIRECT_MAX_TAPS and h > kh and w > kw:
        return [_convolve_direct(src, k, centre) for src in planes]
    fh = cv2.getOptimalDFTSize(h + kh - 1)
    fw = cv2.getOptimalDFTSize(w + kw - 1)
    kpad = np.zeros((fh, fw), dtype=_F32)
    kpad[:kh, :kw] = k
    kspec = cv2.dft(kpad, nonzeroRows=kh)

    def one_plane(src: np.ndarray) -> np.ndarray:
        return _convolve_plane_dft(src, k, centre, kspec)

    n_threads = _n_threads(len(planes))
    if n_threads == 1:
        return [one_plane(src) for src in planes]
    with ThreadPoolExecutor(n_threads) as pool:  # cv2 releases the GIL
        return list(pool.map(one_plane, planes))


def _crop_to_support(k: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The smallest window of ``k`` holding its non-zero taps and its centre ``(kh//2, kw//2)``,
    and the centre's position in it. Convolving with the window about that centre is the same
    convolution; short blurs in big (e.g. 63×63) kernels get much cheaper, and a centred delta
    becomes 1×1 (an exact copy)."""
    cy, cx = k.shape[0] // 2, k.shape[1] // 2
    rows = np.flatnonzero(k.any(axis=1))
    cols = np.flatnonzero(k.any(axis=0))
    if rows.size == 0:  # all-zero kernel: keep one zero tap
        return np.zeros((1, 1), _F32), (0, 0)
    y0, y1 = min(rows[0], cy), max(rows[-1], cy)
    x0, x1 = min(cols[0], cx), max(cols[-1], cx)
    return k[y0 : y1 + 1, x0 : x1 + 1], (int(cy - y0), int(cx - x0))


def _convolve_direct(plane: np.ndarray, k: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    kh, kw = k.shape
    cy, cx = centre
    # filter2D: dst(y) = Σ_i src(y + i - anchor) · kf[i]; with kf = flipped k this equals
    # Σ_u src(y - u + (kh - 1 - anchor)) · k[u], so anchor = kh - 1 - cy centres it at cy.
    anchor = (kw - 1 - cx, kh - 1 - cy)
    return cv2.filter2D(
        np.ascontiguousarray(plane), cv2.CV_32F, np.ascontiguousarray(k[::-1, ::-1]),
        anchor=anchor, borderType=cv2.BORDER_REFLECT,
    )


def _convolve_plane_dft(
    plane: np.ndarray, k: np.ndarray, centre: tuple[int, int], kspec: np.ndarray
) -> np.ndarray:
    """One ``H×W`` plane; ``kspec`` is the DFT of ``k`` zero-padded to the DFT size ``fh×fw``."""
    h, w = plane.shape
    kh, kw = k.shape
    fh, fw = kspec.shape
    # out[y] = Σ_u img[y - u + cy] k[u]. Linear convolution of the padded plane p
    # (p[m] = img[m - top]) gives full[n] = Σ_u p[n - u] k[u], so out[y] = full[y + cy + top]
    # = full[y + kh - 1] with top = kh - 1 - cy rows above (and cy below). Rows past that
    # (up to the DFT size) only wrap around into full[n < kh - 1], which is cropped away, so
    # they may hold anything: keep reflecting.
    top, left = kh - 1 - centre[0], kw - 1 - centre[1]
    # BORDER_REFLECT is numpy's "symmetric" (d c b a | a b c d), also for borders wider than the plane
    p = cv2.copyMakeBorder(plane, top, fh - h - top, left, fw - w - left, cv2.BORDER_REFLECT)
    spec = cv2.dft(p)
    cv2.mulSpectrums(spec, kspec, 0, c=spec)
    full = cv2.idft(spec, flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT)
    return full[kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]


# ---------------------------------------------------------------------------------------------
# Realism (RSBlur)
# ---------------------------------------------------------------------------------------------

NOISE_MODELS = ("none", "rsblur")


def check_noise_options(noise: str, noise_preset: str) -> None:
    """Raise a ValueError naming the option and its choices unless both are known."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"--noise {noise!r}: choose one of {', '.join(NOISE_MODELS)}")
    if noise_preset not in NOISE_PRESETS:
        raise ValueError(f"--noise-preset {noise_preset!r}: choose one of {', '.join(NOISE_PRESETS)} "
                         "(the camera and noise levels of RSBlur's pipeline)")


def sample_realism(
    rng: np.random.Generator,
    noise: str = "none",
    saturation: bool = False,
    jpeg_quality: int | tuple[int, int] | None = None,
    noise_preset: str = DEFAULT_NOISE_PRESET,
) -> dict:
    """Sample the realism parameters of one sample (RSBlur); a JSON-able dict.

    Args:
        rng: the sample's generator (draws happen only for the enabled parts, in the order
            saturation, noise, JPEG).
        noise: ``"none"`` or ``"rsblur"`` (RSBlur's camera pipeline, ``blurforge.camera``:
            Poisson–Gaussian noise on a Bayer mosaic between an inverse and a forward ISP).
        saturation: add RSBlur's saturation term.
        jpeg_quality: None (lossless output), an int in 1..100, or an inclusive ``(lo, hi)``
            range to draw from. Only recorded here: the caller applies it when encoding.
        noise_preset: ``"realblur"`` (default) or ``"rsblur"`` — the camera and noise levels
            (``blurforge.camera.NOISE_PRESETS``); ignored without noise.

    Returns:
        ``{"saturation_a": a | None, "noise": str, "jpeg_quality": int | None}`` with
        ``a ~ U(0.25, 1.75)``, and with ``noise="rsblur"`` also the camera-noise parameters of
        ``camera.sample_camera_noise``: ``noise_preset, camera, bayer, wb_red_gain,
        wb_blue_gain, noise_k`` (shot-noise scale) and ``noise_sigma`` (read-noise std).
    """
    check_noise_options(noise, noise_preset)
    params: dict = {"saturation_a": None, "noise": noise, "jpeg_quality": None}
    if saturation:
        params["saturation_a"] = float(rng.uniform(0.25, 1.75))
    if noise == "rsblur":
        params.update(sample_camera_noise(rng, noise_preset))
    if jpeg_quality is not None:
        if isinstance(jpeg_quality, (tuple, list)):
            lo, hi = (int(q) for q in jpeg_quality)
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"jpeg_quality range must satisfy 1 <= lo <= hi <= 100, got {jpeg_quality}")
            params["jpeg_quality"] = int(rng.integers(lo, hi + 1))
        else:
            q = int(jpeg_quality)
            if not 1 <= q <= 100:
                raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
            params["jpeg_quality"] = q
    return params


def apply_realism(
    blurry_lin: np.ndarray,
    sharp_lin: np.ndarray,
    kernel: np.ndarray,
    params: dict | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply sampled realism parameters to a blurred linear image; returns a new array.

    Pure: the inputs are not modified and, for the same ``params`` and the same ``rng``
    state, the output is identical.

    1. Saturation (if ``params["saturation_a"]`` is set): ``B += a · M_sat`` with
       ``M_sat = kernel ⊛ (sharp_lin >= 1)`` per channel (the blurred trail of the clipped
       highlights, which in the real scene were brighter than 1), then clip to [0, 1].
    2. Noise (if ``params["noise"] == "rsblur"``): ``blurforge.camera.camera_noise`` — linear
       sRGB → camera RGB → Bayer mosaic ÷ WB gains → ``poisson(m/k)·k + σ·N(0, 1)`` → × WB
       gains → demosaic → linear sRGB, clipped to [0, 1]. Pixel-channels saturated after
       step 1 (``B >= 1``) stay at 1, as in RSBlur (a clipped sensor value carries no noise).
       Rows written before the camera pipeline (params with ``noise_s_var``) re-render with
       their own per-pixel model, see ``_legacy_pixel_noise``.
    3. JPEG (``params["jpeg_quality"]``) is not applied here: the caller encodes with it.

    Shapes: ``blurry_lin``, ``sharp_lin``: ``H×W×C`` float in [0, 1]; returns float32
    ``H×W×C``. ``params=None`` (or all parts disabled) returns a float32 copy.
    """
    m_sat = None
    if params and params.get("saturation_a") is not None:
        clipped = np.asarray(sharp_lin) >= 1.0
        if clipped.any():
            m_sat = convolve(clipped.astype(_F32), kernel)
    return _realism(blurry_lin, m_sat, params, rng)


def _realism(blurry_lin: np.ndarray, m_sat: np.ndarray | None, params: dict | None,
             rng: np.random.Generator) -> np.ndarray:
    """Saturation ``B += a · m_sat`` (``m_sat`` None: nothing clipped) then noise; see
    ``apply_realism``."""
    out = np.array(blurry_lin, dtype=_F32, copy=True)
    if not params:
        return out
    a = params.get("saturation_a")
    if a is not None:
        if m_sat is not None:
            out += _F32(a) * m_sat
        np.clip(out, 0.0, 1.0, out=out)
    noise = params.get("noise", "none")
    if noise == "rsblur":
        saturated = out >= 1.0
        np.clip(out, 0.0, 1.0, out=out)
        if "noise_s_var" in params:
            out = _legacy_pixel_noise(out, params, rng)
        else:
            out = camera_noise(out, params, rng)
        out[saturated] = 1.0
    elif noise not in ("none", None):
        raise ValueError(f"unknown noise model {noise!r} in realism params (expected one of {NOISE_MODELS})")
    return out


def _legacy_pixel_noise(out: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """The per-pixel noise of rows written before the camera pipeline, kept so they re-render
    bit for bit: ``poisson(B/k)·k + sqrt(s)·N(0, 1)`` per pixel and channel in linear RGB,
    clipped, with ``s = params["noise_s_var"]``. It read RSBlur's β2 as a variance — a read-noise
    std of ≈5.4e-3 instead of ≈2.9e-5 — so shadows got ~10 codes of noise; new rows never use it."""
    k, s = float(params["noise_k"]), float(params["noise_s_var"])
    if not (k > 0 and s >= 0):
        raise ValueError(f"noise_k must be > 0 and noise_s_var >= 0, got {k}, {s}")
    counts = rng.poisson(out.astype(np.float64) / k)
    gauss = rng.standard_normal(out.shape, dtype=_F32)
    out = counts.astype(_F32) * _F32(k)
    out += gauss * _F32(math.sqrt(s))
    return np.clip(out, 0.0, 1.0, out=out)


def frames_realism(
    avg_lin: np.ndarray, window_frames: list[np.ndarray], config: dict | None, seed: int
) -> tuple[np.ndarray, dict | None]:
    """The realism stage for a frame-averaged blurry image (``blurforge frames``).

    Args:
        avg_lin: ``H×W×3 float32`` average of the window in linear signal space.
        window_frames: the window's original frames, ``H×W×3 uint8`` each.
        config: ``{"noise": "none"|"rsblur", "noise_preset": ..., "saturation": bool}``; None or
            empty (or nothing enabled) returns ``(avg_lin, None)`` untouched.
        seed: the pair's seed. Parameters are drawn from ``default_rng([seed, 1])`` (as
            ``sample_realism``), the noise from ``default_rng([seed, 2])``; so the row's
            ``seed`` and ``params["realism"]`` re-render it from the average.

    Saturation: ``B += a · M_sat`` with ``M_sat`` the per-channel fraction of the window's
    frames that are clipped (code 255) at each pixel — the frame-averaging counterpart of
    ``K ⊛ (S >= 1)``. (RSBlur's training code adds ``a · mask`` to its averaged images from a
    precomputed mask file; with ``--interpolate`` only the original frames enter the mask.)
    Noise: the camera pipeline, as ``apply_realism``.

    Returns ``(blurry_lin, params)``: ``H×W×3 float32`` in [0, 1] and the sampled dict.
    """
    if not config or (config.get("noise", "none") == "none" and not config.get("saturation")):
        return avg_lin, None
    params = sample_realism(np.random.default_rng([seed, 1]), noise=config.get("noise", "none"),
                            saturation=bool(config.get("saturation")),
                            noise_preset=config.get("noise_preset") or DEFAULT_NOISE_PRESET)
    m_sat = None
    if params["saturation_a"] is not None:
        acc = np.zeros(avg_lin.shape, dtype=_F32)
        for f in window_frames:
            acc += f == 255
        if acc.any():
            m_sat = acc * _F32(1.0 / len(window_frames))
    return _realism(avg_lin, m_sat, params, np.random.default_rng([seed, 2])), params


# ---------------------------------------------------------------------------------------------
# Entry point for the synthesize worker
# ---------------------------------------------------------------------------------------------


def render_uniform(
    sharp_srgb: np.ndarray,
    kernel: np.ndarray,
    realism_params: dict | None,
    rng: np.random.Generator,
    codes: bool = False,
) -> np.ndarray:
    """Blur a sharp sRGB image with one PSF in linear light; returns ``blurry_srgb``.

    ``sharp_srgb``: ``H×W×3`` float in [0, 1], or ``uint8`` codes. ``kernel``: the PSF,
    ``kh×kw``, non-negative, summing to 1 (checked to 1e-3). ``realism_params``: from
    ``sample_realism`` or None. ``rng`` supplies only the noise realisation (untouched without
    noise), so the output is a deterministic function of the inputs and the generator's state.

    Returns ``H×W×3 float32`` in [0, 1] (sRGB-encoded; JPEG, if any, is the caller's), or with
    ``codes=True`` its exactly rounded 8-bit codes (``to_output``).
    """
    k = _check_kernel(kernel)
    if k.min() < 0 or abs(float(k.sum(dtype=np.float64)) - 1.0) > 1e-3:
        raise ValueError(
            f"kernel must be non-negative and sum to 1 (min {k.min():.3g}, sum "
            f"{float(k.sum(dtype=np.float64)):.6f}) — normalise it with k / k.sum()"
        )
    sharp = np.asarray(sharp_srgb)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp_srgb must be H×W×3, got shape {sharp.shape}")
    if codes and not realism_params and sharp.dtype == np.uint8:
        # 8-bit in, 8-bit out: colour plane by plane, without splitting and merging float images
        # (the same values as below: one table, one convolution per plane, exact codes)
        blurred = convolve_planes([srgb_to_linear(p) for p in cv2.split(sharp)], k)
        return cv2.merge([linear_to_codes(p, "srgb") for p in blurred])
    sharp_lin = srgb_to_linear(sharp)
    blurry_lin = convolve(sharp_lin, k)
    if realism_params:
        blurry_lin = apply_realism(blurry_lin, sharp_lin, k, realism_params, rng)
    return to_output(blurry_lin, codes)


# A row's params["quantiser"]: how its 8-bit blurry image was rounded. "exact": linear_to_codes
# (rows since this key); absent: the float32 OETF then round(255·x), which differs from the exact
# code in about 1 value in 100,000 (older rows and 16-bit outputs; re-rendered the same way).
EXACT_QUANTISER = "exact"


def exact_codes(params: dict) -> bool:
    """Whether a row's blurry image is the exact 8-bit codes (``params["quantiser"]``)."""
    return params.get("quantiser") == EXACT_QUANTISER


def to_output(blurry_lin: np.ndarray, codes: bool) -> np.ndarray:
    """A rendered image's output: float32 sRGB in [0, 1] (``linear_to_srgb``; files then round
    ``255·x`` or ``65535·x``), or with ``codes`` the uint8 codes ``round(255 · sRGB(x))`` exactly
    (``linear_to_codes``: about 4× faster than the float OETF and rounding; 8-bit outputs)."""
    return linear_to_codes(blurry_lin, "srgb") if codes else linear_to_srgb(blurry_lin)
