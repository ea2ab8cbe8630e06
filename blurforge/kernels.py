"""Boracchi–Foi camera-shake kernels: trajectories, PSFs and the Parquet kernel bank.

Model (Boracchi & Foi, IEEE TIP 21(8) 2012, ``createTrajectory.m`` / ``createPSFs.m``; DESIGN §2):
a trajectory is ``num_steps`` samples of a complex random walk whose steps all have length
``L / (num_steps - 1)``, so its total length is exactly ``L``. Its PSF is the bilinear splat of
the samples, each weighted by its overlap with the exposure window ``[0, T * num_steps]``; the
raw PSF sums to ``T`` (kept as ``raw_sum``) and is normalised to sum 1.

Departures from the MATLAB code, on purpose:

* every kernel is shifted so that its (exposure-weighted) centroid lies exactly on the centre
  pixel ``(size - 1) / 2``; the bilinear splat preserves the first moment, so the kernel's
  centroid is the centre and blurry/sharp pairs stay aligned;
* a trajectory that does not fit the ``working_size x working_size`` window (default ``size``;
  bilinear needs the samples in ``[0, working_size - 1)``) is rejected and redrawn from the same
  per-kernel generator: the length ``L`` is drawn once per kernel, the shape parameters and the
  walk are redrawn; ``resamples`` counts the rejected attempts. Rejection removes long, straight
  walks preferentially; with ``working_size > size`` a walk that fits the working window but not
  ``size x size`` is kept and stored at the smallest odd size that holds it (``size`` per row),
  so the stored kernel is always the whole PSF;
* each row records the kernel's shape (``extent_width``, ``extent_height``: bounding box of the
  non-zero taps; ``radius_of_gyration`` about its centroid), see :func:`kernel_shape_stats`.

Randomness. Kernel ``i`` is ``kernel_id = f"k{i:08d}"`` and draws everything from
``np.random.default_rng(seed_for(run_seed, kernel_id))`` (its ``seed`` column) in a fixed order:
``length``, then per attempt the five shape parameters, ``2 x (num_steps - 1)`` normals and
``2 x (num_steps - 1)`` uniforms. A kernel therefore depends only on ``(run_seed, kernel_id)``,
not on workers, chunking or order, and :func:`render_kernel` re-renders it from its row.

Speed. The recurrence is sequential in time but independent across trajectories: it runs on
arrays of shape ``(2, batch)`` per time step, and the splat is ``np.bincount`` over flattened
``(kernel, pixel)`` indices. The walk's arithmetic is ``+ - * / sqrt`` on float64 and
``cos``/``sin`` are evaluated kernel by kernel (no BLAS, no reductions across kernels), so a
kernel rendered alone equals the same kernel rendered in any batch, bit for bit.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from blurforge.seeding import seed_for

SCHEMA_VERSION = "1"

#: Columns of a kernel bank; one row per kernel. ``kernel`` is row-major, ``size x size``, sums
#: to 1 and is centred on its centroid; ``size`` is per row (kernels of long trajectories may be
#: larger than the bank's ``--size`` when it was made with a larger ``--working-size``).
BANK_SCHEMA = pa.schema(
    [
        pa.field("kernel_id", pa.string(), nullable=False),
        pa.field("size", pa.int32(), nullable=False),
        pa.field("kernel", pa.list_(pa.float32()), nullable=False),
        pa.field("length", pa.float64(), nullable=False),  # total trajectory length L (px)
        pa.field("anxiety", pa.float64(), nullable=False),
        pa.field("exposure", pa.float64(), nullable=False),  # T in (0, 1]
        pa.field("raw_sum", pa.float64(), nullable=False),  # sum of the PSF before normalising (~T)
        pa.field("n_shakes", pa.int32(), nullable=False),  # abrupt shakes in the accepted walk
        pa.field("resamples", pa.int32(), nullable=False),  # rejected attempts before it fitted
        pa.field("seed", pa.int64(), nullable=False),  # seed_for(run_seed, kernel_id)
        pa.field("centripetal", pa.float64(), nullable=False),
        pa.field("gaussian_term", pa.float64(), nullable=False),
        pa.field("freq_big_shakes", pa.float64(), nullable=False),
        pa.field("angle", pa.float64(), nullable=False),  # initial direction, degrees
        pa.field("num_steps", pa.int32(), nullable=False),
        # Added later: banks without them still read (computed on read, see KernelBank).
        pa.field("working_size", pa.int32(), nullable=False),  # window the trajectory had to fit (px)
        pa.field("extent_width", pa.int32(), nullable=False),  # bounding box of the non-zero taps (px)
        pa.field("extent_height", pa.int32(), nullable=False),
        pa.field("radius_of_gyration", pa.float64(), nullable=False),  # about the kernel's centroid (px)
    ]
)

#: Columns a bank may lack (written before they existed); KernelBank fills them in on read.
DERIVED_COLUMNS = ("working_size", "extent_width", "extent_height", "radius_of_gyration")

#: Parameters drawn again at every attempt; with ``length`` they define a trajectory.
SHAPE_PARAMS = ("centripetal", "gaussian_term", "freq_big_shakes", "angle", "anxiety")
TRAJECTORY_PARAMS = ("length",) + SHAPE_PARAMS

# Performance knobs; none of them changes a kernel.
_TIME_BLOCK = 64  # time steps per block of the vectorised walk
_TILE = 64  # kernels per tile when transposing between (kernel, time) and (time, kernel)
_SPLAT_BATCH = 16  # kernels splatted together
_MAX_CHUNK = 8192  # kernels per work unit by default


class TrajectoryDoesNotFitError(ValueError):
    """A kernel found no trajectory that fits its window within the allowed attempts."""


def kernel_id(index: int) -> str:
    """The stable id of the ``index``-th kernel of a bank: ``k00000042``."""
    return f"k{index:08d}"


# --------------------------------------------------------------------------- samplers


def sample_length(rng: np.random.Generator, length_min: float, length_max: float) -> float:
    """Total trajectory length ``L ~ U[length_min, length_max]`` (pixels)."""
    return float(rng.uniform(length_min, length_max))


def sample_shape_params(rng: np.random.Generator) -> dict:
    """The five shape parameters of ``createTrajectory.m`` (U ~ Uniform(0, 1))."""
    u = rng.random(5)
    return {
        "centripetal": 0.7 * float(u[0]),  # pull back towards the start
        "gaussian_term": 10.0 * float(u[1]),  # strength of the random acceleration
        "freq_big_shakes": 0.2 * float(u[2]),  # abrupt shakes happen w.p. freq * anxiety
        "angle": 360.0 * float(u[3]),  # initial direction of motion, degrees
        "anxiety": 0.1 * float(u[4]),  # overall amount of shake; 0 gives a straight line
    }


def sample_trajectory_params(rng: np.random.Generator, length_min: float, length_max: float) -> dict:
    """All parameters of one trajectory: ``length`` then the shape parameters."""
    length = sample_length(rng, length_min, length_max)
    return {"length": length, **sample_shape_params(rng)}


def sample_walk_draws(
    rng: np.random.Generator, num_steps: int, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The random numbers of one walk: ``normals (2, num_steps - 1)`` (real, imaginary
    acceleration) and ``uniforms (2, num_steps - 1)`` (shake test, shake angle); written into
    ``out`` (two contiguous float64 arrays of that shape) when given."""
    if out is None:
        out = (np.empty((2, num_steps - 1)), np.empty((2, num_steps - 1)))
    normals, uniforms = out
    rng.standard_normal(out=normals)
    rng.random(out=uniforms)
    return normals, uniforms


# --------------------------------------------------------------------------- pure builders


def trajectories(
    params: dict, normals: np.ndarray, uniforms: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the Boracchi–Foi random walk for a batch of trajectories.

    Args:
        params: each of ``TRAJECTORY_PARAMS`` as a scalar or an array of shape ``(B,)``.
        normals: ``(B, 2, num_steps - 1)`` standard normals (see :func:`sample_walk_draws`).
        uniforms: ``(B, 2, num_steps - 1)`` uniforms in [0, 1).
        out: optional ``(B, num_steps)`` complex128 array to write the positions into.

    Returns:
        ``positions (B, num_steps)`` complex128 (real = column, imaginary = row, starting at 0)
        and ``n_shakes (B,)`` int, the number of abrupt shakes of each walk.
    """
    normals = np.asarray(normals, dtype=np.float64)
    uniforms = np.asarray(uniforms, dtype=np.float64)
    batch, two, n_moves = normals.shape
    if two != 2 or uniforms.shape != normals.shape or n_moves < 1:
        raise ValueError(
            f"normals and uniforms must both be (B, 2, num_steps - 1); got {normals.shape}, {uniforms.shape}"
        )
    p = {name: np.broadcast_to(np.asarray(params[name], dtype=np.float64), (batch,)) for name in TRAJECTORY_PARAMS}
    if np.any(p["length"] < 0):
        raise ValueError(f"trajectory lengths must be >= 0; got {p['length'].min()}")
    still = p["length"] == 0  # a zero-length trajectory is a point: walk with unit steps, then drop them
    step = np.where(still, 1.0, p["length"]) / n_moves  # every step has this length: the total is L
    anxiety = p["anxiety"]

    # Abrupt shakes: nextDir = 2 v exp(i (pi + U - 0.5)), i.e. v + nextDir = v * rot with
    # rot = 1 + 2 exp(i theta), and rot = 1 without a shake. Shakes are rare (p <= 0.02): keep
    # them as a list of (time, kernel, rot) sorted by time. cos/sin are evaluated kernel by
    # kernel, so a kernel's values never depend on the rest of the batch.
    shake = uniforms[:, 0, :] < (p["freq_big_shakes"] * anxiety)[:, None]
    shake_t, shake_b = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
    shake_re, shake_im = [np.zeros(0)], [np.zeros(0)]
    for b in range(batch):
        moves = np.flatnonzero(shake[b])
        if moves.size:
            theta = np.pi + (uniforms[b, 1, moves] - 0.5)
            shake_t.append(moves)
            shake_b.append(np.full(moves.size, b))
            shake_re.append(1.0 + 2.0 * np.cos(theta))
            shake_im.append(2.0 * np.sin(theta))
    shake_t = np.concatenate(shake_t)
    order = np.argsort(shake_t, kind="stable")
    shake_t, shake_b = shake_t[order], np.concatenate(shake_b)[order]
    shake_re, shake_im = np.concatenate(shake_re)[order], np.concatenate(shake_im)[order]

    # dv = anxiety * (gaussian_term * (N + iN) - centripetal * x) * step, split in two terms.
    noise_scale = anxiety * p["gaussian_term"] * step
    pull = anxiety * p["centripetal"] * step

    # Initial velocity as in createTrajectory.m: direction `angle`, magnitude `anxiety` (any
    # magnitude when anxiety == 0: nothing perturbs it and the first normalisation rescales it).
    radians = [math.radians(a) for a in p["angle"]]
    v = np.array([[math.cos(r) for r in radians], [math.sin(r) for r in radians]])  # (re/im, batch)
    v *= np.where(anxiety > 0, anxiety, 1.0)

    # The walk runs over blocks of time steps, on (time, re/im, batch) buffers that stay in
    # cache; re and im share each array, which halves the number of numpy calls per step.
    positions = np.empty((batch, n_moves + 1), dtype=np.complex128) if out is None else out
    if positions.shape != (batch, n_moves + 1) or positions.dtype != np.complex128 or not positions.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous complex128 array of shape {(batch, n_moves + 1)}")
    positions[:, 0] = 0
    as_pairs = positions.view(np.float64).reshape(batch, n_moves + 1, 2)  # (re, im) of each sample
    block = min(n_moves, _TIME_BLOCK)
    rot_re = np.ones((block, batch))  # Re(rot), for both parts of v
    rot_im = np.zeros((block, 2, batch))  # (-Im(rot), +Im(rot)), against (v_im, v_re)
    noise = np.empty((block, 2, batch))
    x = np.zeros((block + 1, 2, batch))
    u, tmp, norm = np.empty((2, batch)), np.empty((2, batch)), np.empty(batch)
    for t0 in range(0, n_moves, block):
        t1 = min(t0 + block, n_moves)
        for b0 in range(0, batch, _TILE):  # transpose tile by tile (TLB-friendly)
            b1 = b0 + _TILE
            tile = normals[b0:b1, :, t0:t1].transpose(2, 1, 0)
            np.multiply(tile, noise_scale[b0:b1], out=noise[: t1 - t0, :, b0:b1])
        lo, hi = np.searchsorted(shake_t, [t0, t1])
        when, who = shake_t[lo:hi] - t0, shake_b[lo:hi]
        rot_re[when, who] = shake_re[lo:hi]
        rot_im[when, 0, who], rot_im[when, 1, who] = -shake_im[lo:hi], shake_im[lo:hi]
        for t in range(t1 - t0):
            # u = v * rot + noise - pull * x   (= v + dv)
            np.multiply(v, rot_re[t], out=u)
            u += np.multiply(v[::-1], rot_im[t], out=tmp)
            u += noise[t]
            u -= np.multiply(pull, x[t], out=tmp)
            # v = u / |u| * step
            np.multiply(u, u, out=tmp)
            np.add(tmp[0], tmp[1], out=norm)
            np.sqrt(norm, out=norm)
            np.divide(step, norm, out=norm)
            np.multiply(u, norm, out=v)
            np.add(x[t], v, out=x[t + 1])
        rot_re[when, who], rot_im[when, 0, who], rot_im[when, 1, who] = 1.0, 0.0, 0.0
        for b0 in range(0, batch, _TILE):
            b1 = b0 + _TILE
            as_pairs[b0:b1, t0 + 1 : t1 + 1] = x[1 : t1 - t0 + 1, :, b0:b1].transpose(2, 0, 1)
        x[0] = x[t1 - t0]
    positions[still] = 0
    return positions, shake.sum(axis=1)


def exposure_weights(num_steps: int, exposure: float) -> np.ndarray:
    """Weight of each sample: the overlap of ``[t, t + 1]`` with ``[0, exposure * num_steps]``.

    Returns ``(n_exposed,)`` float64, the weights of the exposed prefix of the trajectory
    (later samples weigh 0); they sum to ``exposure * num_steps``.
    """
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"exposure must be in (0, 1]; got {exposure}")
    end = exposure * num_steps
    n_exposed = min(num_steps, math.ceil(end))
    return np.clip(end - np.arange(n_exposed, dtype=np.float64), 0.0, 1.0)


def psf_from_trajectory(
    positions: np.ndarray, size: int, exposure: float = 1.0, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre trajectories on their centroid and splat them into ``size x size`` PSFs.

    Args:
        positions: ``(B, num_steps)`` complex (real = column, imaginary = row), any origin.
        size: odd kernel size.
        exposure: the exposure ``T`` in (0, 1]; samples after ``T * num_steps`` do not count.
        out: optional ``(B, size, size)`` array (e.g. float32) to write the kernels into.

    Returns:
        ``kernels (B, size, size)`` (float64, or ``out``) summing to 1, ``raw_sum (B,)`` (the
        PSF's sum before normalising: ``T`` up to rounding) and ``fits (B,)`` bool. A
        trajectory that leaves the window (bilinear splatting needs every exposed sample in
        ``[0, size - 1)``) gets an all-zero kernel, ``raw_sum`` NaN and ``fits`` False.
    """
    _check_size(size)
    positions = np.atleast_2d(positions)
    kernels = np.empty((positions.shape[0], size, size)) if out is None else out  # every row is written
    if kernels.shape != (positions.shape[0], size, size):
        raise ValueError(f"out must have shape {(positions.shape[0], size, size)}; got {kernels.shape}")
    raw_sum, fits, _ = _splat_psfs(positions, size, size, exposure, kernels)
    return kernels, raw_sum, fits


def splat_psfs(
    positions: np.ndarray, size: int, working_size: int, exposure: float = 1.0
) -> tuple[list, np.ndarray, np.ndarray]:
    """Like :func:`psf_from_trajectory`, but a trajectory only has to fit a ``working_size``
    window (odd, ``>= size``), and each PSF is stored at its own size: ``size``, or the smallest
    larger odd size that holds it, centred on the centroid pixel. Cropping the working window
    to that size drops only zeros, so the stored kernel is the whole PSF.

    Returns ``kernels`` (a list of ``(s, s)`` float64 arrays summing to 1, None where the
    trajectory does not fit), ``raw_sum (B,)`` and ``fits (B,)``.
    """
    _check_size(size)
    positions = np.atleast_2d(positions)
    out = np.empty((positions.shape[0], size, size))
    raw_sum, fits, larger = _splat_psfs(positions, size, working_size, exposure, out)
    kernels = [larger.get(i, out[i]) if ok else None for i, ok in enumerate(fits)]
    return kernels, raw_sum, fits


def _splat_psfs(
    positions: np.ndarray, size: int, working_size: int, exposure: float, out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Centre each trajectory on the centre pixel of a ``working_size`` window, test that it
    fits there, and splat it. PSFs that fit the central ``size x size`` window are written to
    ``out[i]`` (those that do not fit at all get zeros there); larger ones are returned as
    ``{i: (s, s) float64}``, ``s`` the smallest odd size holding them.

    Positions, fractions and sums are computed the same way whatever the window sizes (only
    integer pixel indices are shifted), so ``working_size == size`` is the plain fixed-window
    splat, and a kernel's values do not depend on which other kernels share its batch.
    """
    _check_size(working_size)
    if working_size < size:
        raise ValueError(f"working_size ({working_size}) must be >= size ({size})")
    batch, num_steps = positions.shape
    w = exposure_weights(num_steps, exposure)
    n_exposed, w_sum, full_exposure = w.size, w.sum(), bool(np.all(w == 1))
    weights = None if full_exposure else w
    centre = (working_size - 1) / 2.0
    mid, half = (working_size - 1) // 2, (size - 1) // 2  # centre pixel; reach of a size x size window
    raw_sum = np.full(batch, np.nan)
    fits = np.zeros(batch, dtype=bool)
    larger: dict[int, np.ndarray] = {}

    # A few kernels at a time, so that the temporaries stay in cache.
    for start in range(0, batch, _SPLAT_BATCH):
        part = np.arange(start, min(start + _SPLAT_BATCH, batch))
        cols, rows = positions.real[part, :n_exposed], positions.imag[part, :n_exposed]
        # Shift so that the weighted centroid lands exactly on the centre pixel.
        weighted = (cols, rows) if full_exposure else (cols * w, rows * w)
        cols = cols + (centre - weighted[0].sum(axis=1) / w_sum)[:, None]
        rows = rows + (centre - weighted[1].sum(axis=1) / w_sum)[:, None]
        lo_c, hi_c, lo_r, hi_r = cols.min(axis=1), cols.max(axis=1), rows.min(axis=1), rows.max(axis=1)
        ok = (lo_c >= 0) & (hi_c < working_size - 1) & (lo_r >= 0) & (hi_r < working_size - 1)
        fits[part] = ok
        if working_size == size:
            small = ok
        else:  # pixels touched: floor(lowest) .. floor(highest) + 1 on each axis
            reach = np.maximum.reduce([mid - np.floor(lo_c), np.floor(hi_c) + 1 - mid,
                                       mid - np.floor(lo_r), np.floor(hi_r) + 1 - mid]).astype(np.intp)
            small = ok & (reach <= half)
        out[part[~small]] = 0
        if small.any():
            sel = slice(None) if small.all() else small
            raw = _splat(cols[sel], rows[sel], weights, size, mid - half)
            sums = raw.sum(axis=1)
            raw /= sums[:, None]
            raw_sum[part[sel]] = sums / num_steps
            out[part[sel]] = raw.reshape(-1, size, size)
        for j in np.flatnonzero(ok & ~small):  # long trajectories: one at a time, in their own window
            r = int(reach[j])
            raw = _splat(cols[j : j + 1], rows[j : j + 1], weights, 2 * r + 1, mid - r)
            sums = raw.sum(axis=1)
            raw /= sums[:, None]
            raw_sum[part[j]] = sums[0] / num_steps
            larger[int(part[j])] = raw.reshape(2 * r + 1, 2 * r + 1)
    return raw_sum, fits, larger


def _splat(cols: np.ndarray, rows: np.ndarray, w: np.ndarray | None, size: int, offset: int = 0) -> np.ndarray:
    """Bilinear splat of ``(b, n)`` sample positions (all in ``[offset, offset + size - 1)``)
    with sample weights ``w (n,)`` (None: all 1) into ``(b, size * size)`` float64; pixel
    ``(offset, offset)`` of the positions' frame is pixel ``(0, 0)`` of the kernels.

    One ``np.bincount`` per corner over the upper-left pixels, each shifted onto its corner
    (right: +1, down: +size in the flattened kernels; never across a kernel's edge).
    """
    b, n = cols.shape
    c0, r0 = np.floor(cols), np.floor(rows)
    fc, fr = cols - c0, rows - r0
    if offset:  # integers, exact in float64; the fractions above are unchanged
        c0 -= offset
        r0 -= offset
    r0 *= size
    r0 += c0
    r0 += (np.arange(b) * float(size * size))[:, None]  # integers, exact in float64
    upper_left = r0.astype(np.intp).reshape(-1)  # in the flattened batch of kernels
    gc = 1.0 - fc  # weight of the left column
    gr = 1.0 - fr  # weight of the upper row
    if w is not None:  # times the sample's exposure weight
        gr *= w
        fr *= w
    bins = b * size * size
    out = np.bincount(upper_left, (gc * gr).reshape(-1), minlength=bins)
    for shift, weight in ((1, fc * gr), (size, gc * fr), (size + 1, fc * fr)):
        out[shift:] += np.bincount(upper_left, weight.reshape(-1), minlength=bins)[:-shift]
    return out.reshape(b, size * size)


# --------------------------------------------------------------------------- one kernel


def _draw_attempt(
    rng: np.random.Generator,
    attempt: int,
    length_range: tuple[float, float],
    num_steps: int,
    overrides: dict,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Draw attempt ``attempt`` (0, 1, ...) of a kernel from its generator: this order of draws
    is the bank's contract. ``overrides`` replace drawn values (the draws are still made)."""
    params = sample_trajectory_params(rng, *length_range) if attempt == 0 else sample_shape_params(rng)
    params.update({k: v for k, v in overrides.items() if k in params})
    normals, uniforms = sample_walk_draws(rng, num_steps, out)
    return params, normals, uniforms


def render_kernel(row: dict) -> np.ndarray:
    """Re-render one kernel exactly from its bank row (or any dict with the same keys).

    Needs ``seed, resamples, size, exposure, num_steps`` and the trajectory parameters
    (``length, centripetal, gaussian_term, freq_big_shakes, angle, anxiety``), and
    ``working_size`` when it differs from ``size`` (banks written before it existed did not);
    the rejected attempts are redrawn and skipped so the generator reaches the accepted walk.

    Returns:
        ``(size, size)`` float32, equal to the bank's stored kernel.
    """
    missing = [k for k in ("seed", "resamples", "size", "exposure", "num_steps", *TRAJECTORY_PARAMS) if k not in row]
    if missing:
        raise KeyError(f"render_kernel: row lacks {missing}; pass a row of a kernel bank")
    size = int(row["size"])
    working_size = int(row.get("working_size") or size)
    rng = np.random.default_rng(int(row["seed"]))
    for attempt in range(int(row["resamples"]) + 1):  # replay the draws; the values come from the row
        _, normals, uniforms = _draw_attempt(rng, attempt, (0.0, 1.0), int(row["num_steps"]), {})
    params = {k: float(row[k]) for k in TRAJECTORY_PARAMS}
    positions, _ = trajectories(params, normals[None], uniforms[None])
    # The stored size is at least the size of the window the PSF needs, so splatting with
    # ``size`` as the smallest size gives the stored layout whether or not the kernel was larger.
    kernels, _, fits = splat_psfs(positions, size, working_size, float(row["exposure"]))
    if not fits[0] or kernels[0].shape != (size, size):
        raise ValueError(
            f"kernel {row.get('kernel_id', '?')}: its trajectory does not fit a {size}x{size} kernel in a "
            f"{working_size}x{working_size} working window; the row is not from a kernel bank or was edited"
        )
    return kernels[0].astype(np.float32)


def border_reach(kernel: np.ndarray) -> dict:
    """How far a convolution with ``kernel`` reads past each side of the image, in pixels.

    With ``blur(y, x) = sum_{i,j} image[y - i + kh // 2, x - j + kw // 2] * kernel[i, j]`` (the
    convention of :func:`blurforge.blur.convolve`), output row ``y`` reads image rows
    ``y - (i1 - kh // 2) .. y + (kh // 2 - i0)``, where ``i0 .. i1`` are the kernel's rows with
    non-zero taps. So the first ``top = i1 - kh // 2`` and the last ``bottom = kh // 2 - i0``
    output rows read outside the image (likewise ``left``/``right`` with the columns); the
    output is the full convolution of real content only once those are cropped. Returns
    ``{"top", "left", "bottom", "right"}`` (ints >= 0; all 0 for an all-zero kernel).
    """
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise ValueError(f"kernel must be 2-D, got shape {k.shape}")
    rows, cols = np.flatnonzero(k.any(axis=1)), np.flatnonzero(k.any(axis=0))
    if rows.size == 0:
        return {"top": 0, "left": 0, "bottom": 0, "right": 0}
    cy, cx = k.shape[0] // 2, k.shape[1] // 2
    return {"top": max(0, int(rows[-1]) - cy), "left": max(0, int(cols[-1]) - cx),
            "bottom": max(0, cy - int(rows[0])), "right": max(0, cx - int(cols[0]))}


def kernel_shape_stats(kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape of each kernel: ``extent_width``, ``extent_height`` (px: the bounding box of its
    non-zero taps) and ``radius_of_gyration`` (px: ``sqrt(sum k |p - c|^2 / sum k)`` about the
    kernel's own centroid ``c``).

    ``kernels``: ``(b, s, s)`` non-negative (any dtype; computed in float64 kernel by kernel,
    so a kernel's values do not depend on the rest of the batch). Returns three ``(b,)`` arrays
    (int32, int32, float64); an all-zero kernel gets 0, 0 and NaN.
    """
    kernels = np.asarray(kernels)
    if kernels.ndim != 3:
        raise ValueError(f"kernels must be (b, s, s); got shape {kernels.shape}")
    b, sh, sw = kernels.shape
    width, height, rg = np.zeros(b, np.int32), np.zeros(b, np.int32), np.full(b, np.nan)
    ys, xs = np.arange(sh, dtype=np.float64), np.arange(sw, dtype=np.float64)
    for start in range(0, b, 256):  # marginals of a few hundred kernels at a time
        block = kernels[start : start + 256]
        by_row = block.sum(axis=2, dtype=np.float64)  # (n, sh): mass of each row
        by_col = block.sum(axis=1, dtype=np.float64)
        # a row (column) has a non-zero tap iff its mass is positive: the taps are >= 0
        for marginal, extent in ((by_row, height), (by_col, width)):
            hit = marginal > 0
            first = np.argmax(hit, axis=1)
            last = marginal.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1)
            extent[start : start + len(block)] = np.where(hit.any(axis=1), last - first + 1, 0)
        mass = by_row.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = (by_row * ys).sum(axis=1) / mass
            cx = (by_col * xs).sum(axis=1) / mass
            spread = ((by_row * (ys - cy[:, None]) ** 2).sum(axis=1) + (by_col * (xs - cx[:, None]) ** 2).sum(axis=1))
            rg[start : start + len(block)] = np.sqrt(spread / mass)
    return width, height, rg


# --------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class _Chunk:
    """Everything a worker needs to render kernels ``start .. stop - 1`` (picklable)."""

    start: int
    stop: int
    seed: int
    size: int
    length_min: float
    length_max: float
    exposure: float
    num_steps: int
    overrides: tuple  # ((name, value), ...)
    max_attempts: int
    batch_size: int
    working_size: int  # trajectories must fit this window; kernels larger than size keep their own size
    kernels_file: str | None = None  # write the kernels into this file (all kernels, float32) instead


def _render_chunk(chunk: _Chunk) -> pa.RecordBatch:
    """Render kernels ``chunk.start .. chunk.stop - 1`` as a record batch of the bank's columns
    (all but ``kernel`` when the kernels go to ``chunk.kernels_file``).

    Trajectories are walked ``batch_size`` at a time. A kernel whose attempt is rejected gets
    its next attempt in the next batch, beside fresh kernels; once no fresh kernel is left, the
    remaining ones get several attempts per batch. A kernel's attempts are always consecutive
    draws of its own generator and the first that fits is kept, so the result equals retrying
    each kernel alone, one attempt at a time. Kernels that need more than ``size x size`` (only
    with ``working_size > size``) are kept apart and stored at their own size.
    """
    n, size = chunk.stop - chunk.start, chunk.size
    ids = [kernel_id(i) for i in range(chunk.start, chunk.stop)]
    seeds = np.array([seed_for(chunk.seed, k) for k in ids], dtype=np.int64)
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    overrides = dict(chunk.overrides)
    length_range = (chunk.length_min, chunk.length_max)

    if chunk.kernels_file is None:
        kernels = np.empty((n, size, size), dtype=np.float32)  # every row is written (np.zeros is slower here)
    else:
        offset = chunk.start * size * size * 4
        kernels = np.memmap(chunk.kernels_file, dtype=np.float32, mode="r+", offset=offset, shape=(n, size, size))
    params = {k: np.zeros(n) for k in TRAJECTORY_PARAMS}
    raw_sum = np.zeros(n)
    larger: dict[int, np.ndarray] = {}  # kernel -> its float32 kernel, when larger than size x size
    n_shakes = np.zeros(n, dtype=np.int32)
    attempts = np.zeros(n, dtype=np.int32)  # attempts drawn so far; the accepted one is attempts - 1

    # Buffers reused by every batch (fresh pages cost as much as the arithmetic here).
    capacity = min(chunk.batch_size, max(n, 1))
    normals = np.empty((capacity, 2, chunk.num_steps - 1))
    uniforms = np.empty((capacity, 2, chunk.num_steps - 1))
    walked = np.empty((capacity, chunk.num_steps), dtype=np.complex128)
    rendered = np.empty((capacity, size, size), dtype=np.float32)

    next_fresh, retry, speculation = 0, [], 1
    while retry or next_fresh < n:
        # Who walks in this batch: (kernel, attempts it gets), retries first.
        if next_fresh < n:
            plan = [(i, 1) for i in retry]
            take = min(n - next_fresh, capacity - len(plan))
            plan += [(i, 1) for i in range(next_fresh, next_fresh + take)]
            next_fresh += take
        else:
            speculation *= 4
            share = capacity // len(retry)
            plan = [(i, max(1, min(speculation, chunk.max_attempts - attempts[i], share))) for i in retry]
        plan_kernel = np.array([i for i, _ in plan], dtype=np.intp)
        plan_tries = np.array([k for _, k in plan], dtype=np.intp)
        rows = [(i, a) for i, k in plan for a in range(attempts[i], attempts[i] + k)]  # a kernel's rows are adjacent
        drawn = []
        for row, (i, attempt) in enumerate(rows):
            buffers = (normals[row], uniforms[row])
            drawn.append(_draw_attempt(rngs[i], attempt, length_range, chunk.num_steps, overrides, buffers)[0])
            if attempt == 0:
                params["length"][i] = drawn[-1]["length"]
        batch = {name: np.array([d[name] for d in drawn]) for name in SHAPE_PARAMS}
        batch["length"] = params["length"][[i for i, _ in rows]]
        used = len(rows)
        positions, shakes = trajectories(batch, normals[:used], uniforms[:used], out=walked[:used])
        sums, fits, big = _splat_psfs(positions, size, chunk.working_size, chunk.exposure, rendered[:used])

        # Keep each kernel's first attempt that fits; the others wait for the next batch.
        first_fit = np.minimum.reduceat(np.where(fits, np.arange(used), used), np.cumsum(plan_tries) - plan_tries)
        ok = first_fit < used
        done, accepted = plan_kernel[ok], first_fit[ok]
        for i, row in zip(done, accepted):  # row by row: a fancy-indexed copy would be a fresh ~30 MB temporary
            if row in big:
                larger[int(i)] = big[row].astype(np.float32)
                kernels[i] = 0
            else:
                kernels[i] = rendered[row]
        for name in SHAPE_PARAMS:
            params[name][done] = batch[name][accepted]
        raw_sum[done], n_shakes[done] = sums[accepted], shakes[accepted]
        attempts[done] = np.array([a for _, a in rows], dtype=np.int32)[accepted] + 1
        failed = plan_kernel[~ok]
        attempts[failed] += plan_tries[~ok].astype(np.int32)
        for i in failed[attempts[failed] >= chunk.max_attempts][:1]:
            raise TrajectoryDoesNotFitError(
                f"kernel {ids[i]} (seed {seeds[i]}): no trajectory of length {params['length'][i]:.1f} px fits a "
                f"{chunk.working_size}x{chunk.working_size} window in {chunk.max_attempts} attempts (length range "
                f"[{chunk.length_min:g}, {chunk.length_max:g}], exposure {chunk.exposure:g}"
                f"{', overrides ' + str(overrides) if overrides else ''}); "
                "use a larger --working-size (or --size) or a smaller --length-max"
            )
        retry = failed.tolist()
    if chunk.kernels_file is not None:
        kernels.flush()  # the parent reads them from the file; every other column goes back
    sizes = np.full(n, size, dtype=np.int32)
    width, height, rg = kernel_shape_stats(kernels)
    for i, k in larger.items():
        sizes[i] = k.shape[0]
        (width[i],), (height[i],), (rg[i],) = kernel_shape_stats(k[None])
    if chunk.kernels_file is not None:
        column = None
    elif larger:
        column = _kernel_column([larger[i] if i in larger else kernels[i] for i in range(n)])
    else:
        column = _kernel_column(kernels)
    columns = {
        "kernel_id": pa.array(ids, pa.string()),
        "size": pa.array(sizes),
        "kernel": column,
        "length": pa.array(params["length"]),
        "anxiety": pa.array(params["anxiety"]),
        "exposure": pa.array(np.full(n, chunk.exposure)),
        "raw_sum": pa.array(raw_sum),
        "n_shakes": pa.array(n_shakes),
        "resamples": pa.array(attempts - 1),
        "seed": pa.array(seeds),
        "centripetal": pa.array(params["centripetal"]),
        "gaussian_term": pa.array(params["gaussian_term"]),
        "freq_big_shakes": pa.array(params["freq_big_shakes"]),
        "angle": pa.array(params["angle"]),
        "num_steps": pa.array(np.full(n, chunk.num_steps, dtype=np.int32)),
        "working_size": pa.array(np.full(n, chunk.working_size, dtype=np.int32)),
        "extent_width": pa.array(width),
        "extent_height": pa.array(height),
        "radius_of_gyration": pa.array(rg),
    }
    return pa.RecordBatch.from_pydict({k: v for k, v in columns.items() if v is not None})


def _as_bank_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's columns in :data:`BANK_SCHEMA` order and types."""
    return pa.RecordBatch.from_arrays([batch.column(f.name) for f in BANK_SCHEMA], schema=BANK_SCHEMA)


def _kernel_column(kernels) -> pa.Array:
    """``(n, size, size)`` float32 as a ``list<float32>`` array (zero-copy over ``kernels``), or
    a sequence of square float32 kernels of any sizes (copied)."""
    if isinstance(kernels, np.ndarray):
        n, size, _ = kernels.shape
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * size**2)
        return pa.ListArray.from_arrays(offsets, pa.array(kernels.reshape(-1)))
    lengths = np.array([k.size for k in kernels], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = np.concatenate([k.reshape(-1) for k in kernels]) if kernels else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float32, copy=False)))


def _check_size(size: int) -> None:
    if isinstance(size, bool) or int(size) != size or size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 3 (so the kernel has a centre pixel); got {size}")


def generate_bank(
    count: int,
    seed: int,
    size: int = 63,
    length_min: float = 1.0,
    length_max: float = 1000.0,
    exposure: float = 1.0,
    num_steps: int = 2000,
    workers: int = 1,
    progress: bool = True,
    *,
    params_override: dict | None = None,
    max_attempts: int = 100,
    chunk_size: int | None = None,
    batch_size: int = 2048,
    backend: str = "local",
    ray_address: str | None = None,
    working_size: int | None = None,
) -> pa.Table:
    """Generate ``count`` Boracchi–Foi kernels as a table with :data:`BANK_SCHEMA`.

    Args:
        count: number of kernels; kernel ``i`` is ``kernel_id(i)``.
        seed: run seed; kernel ``i`` uses ``seed_for(seed, kernel_id(i))``.
        size: odd kernel size (the paper: 63).
        working_size: odd window (``>= size``, default ``size``) a trajectory has to fit; one
            that fits it but not ``size x size`` is kept and stored at the smallest odd size
            that holds it (so long, straight walks are not rejected away). The stored kernel is
            always the whole PSF: the one applied.
        length_min, length_max: trajectory length range in pixels (the paper: [1, 1000]).
        exposure: exposure ``T`` in (0, 1]; 1 integrates the whole trajectory.
        num_steps: samples per trajectory (``numT``, 2000 in the MATLAB code).
        workers: processes; the result does not depend on it (nor on the two sizes below).
        progress: show a tqdm bar.
        params_override: fixed values for any of ``TRAJECTORY_PARAMS`` (e.g. ``{"anxiety": 0}``
            for straight lines); the random draws are still made, so the other parameters do
            not change.
        max_attempts: attempts per kernel before :class:`TrajectoryDoesNotFitError`.
        chunk_size: kernels per work unit (one record batch); default: at most 8192, with the
            same number of units for every worker.
        batch_size: trajectories walked together (memory ~0.15 MB each at 2000 steps).
        backend: 'local' (this process or a process pool) or 'ray' (chunks as Ray tasks on the
            cluster at ``ray_address``, or a local Ray started with ``workers`` CPUs); the bank
            is identical whichever backend.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")
    for name, value in dict(count=count, seed=seed, num_steps=num_steps, workers=workers, max_attempts=max_attempts,
                            chunk_size=chunk_size, batch_size=batch_size).items():
        if value is not None and (isinstance(value, bool) or int(value) != value):
            raise ValueError(f"{name} must be an integer; got {value!r}")
    minimum = dict(count=(count, 0), num_steps=(num_steps, 2), workers=(workers, 1), max_attempts=(max_attempts, 1),
                   chunk_size=(chunk_size or 1, 1), batch_size=(batch_size, 1))
    for name, (value, least) in minimum.items():
        if value < least:
            raise ValueError(f"{name} must be >= {least}; got {value}")
    _check_size(size)
    working_size = size if working_size is None else working_size
    _check_size(working_size)
    if working_size < size:
        raise ValueError(f"working_size ({working_size}) must be >= size ({size}): the window trajectories must fit")
    if not (math.isfinite(length_min) and math.isfinite(length_max) and 0 <= length_min <= length_max):
        raise ValueError(
            f"need 0 <= length_min <= length_max (pixels); got length_min={length_min}, length_max={length_max}"
        )
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"exposure must be in (0, 1] (the fraction of the trajectory integrated); got {exposure}")
    overrides = dict(params_override or {})
    unknown = set(overrides) - set(TRAJECTORY_PARAMS)
    if unknown:
        raise ValueError(
            f"params_override: unknown parameter(s) {sorted(unknown)}; choose from {list(TRAJECTORY_PARAMS)}"
        )
    if overrides.get("length", 0) < 0:
        raise ValueError(f"params_override: length must be >= 0; got {overrides['length']}")
    most = min(_MAX_CHUNK, (2**31 - 1) // working_size**2)  # a record batch's list offsets are int32
    if chunk_size is None:  # the same number of units for every worker
        units_per_worker = max(1, math.ceil(count / workers / most))
        chunk_size = max(1, math.ceil(count / (workers * units_per_worker)))
    elif chunk_size * working_size**2 > 2**31 - 1:
        raise ValueError(f"chunk_size {chunk_size} is too large for kernels up to {working_size}x{working_size}; "
                         f"use at most {most}")

    chunks = [
        _Chunk(start, min(start + chunk_size, count), int(seed), int(size), float(length_min), float(length_max),
               float(exposure), int(num_steps), tuple(sorted((k, float(v)) for k, v in overrides.items())),
               int(max_attempts), int(batch_size), int(working_size))
        for start in range(0, count, chunk_size)
    ]
    from tqdm import tqdm

    batches = []
    with tqdm(total=count, unit="kernel", desc="kernels", disable=not progress) as bar:
        if backend == "ray":
            batches = _render_with_ray(chunks, workers, ray_address, bar)
        elif workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                batches.append(_as_bank_batch(_render_chunk(chunk)))
                bar.update(chunk.stop - chunk.start)
        else:
            batches = _render_in_processes(chunks, min(workers, len(chunks)), bar)
    return pa.Table.from_batches(batches, schema=BANK_SCHEMA)


def _render_with_ray(chunks: list[_Chunk], workers: int, address: str | None, bar) -> list[pa.RecordBatch]:
    """Render the chunks as Ray tasks (the same pure ``_render_chunk``); batches come back in
    chunk order, so the bank equals the local one byte for byte."""
    from blurforge.shards import ensure_ray

    ray = ensure_ray(address, workers)
    remote = ray.remote(num_cpus=1, max_retries=2)(_render_chunk)
    refs = [remote.remote(chunk) for chunk in chunks]
    size_of = {ref: chunk.stop - chunk.start for ref, chunk in zip(refs, chunks)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        bar.update(size_of[done[0]])
    return [_as_bank_batch(b) for b in ray.get(refs)]


def _render_in_processes(chunks: list[_Chunk], workers: int, bar) -> list[pa.RecordBatch]:
    """Render the chunks in a process pool. The workers write the kernels into one shared,
    unlinked file that the returned batches map (no copy); sending ~16 kB per kernel back through
    pipes would keep the parent busier than a worker. Without room for that file, the kernels
    come back through the pipes, as they do when kernels may be larger than ``size`` (their
    total size is not known in advance)."""
    count, size = chunks[-1].stop, chunks[0].size
    path = _scratch_file(count * size * size * 4) if chunks[0].working_size == size else None
    if path is not None:
        chunks = [dataclasses.replace(c, kernels_file=path) for c in chunks]
    try:
        context = multiprocessing.get_context("spawn")
        batches = []
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for chunk, batch in zip(chunks, pool.map(_render_chunk, chunks)):
                batches.append(batch)
                bar.update(chunk.stop - chunk.start)
        if path is None:
            return [_as_bank_batch(b) for b in batches]
        kernels = np.memmap(path, dtype=np.float32, mode="r", shape=(count, size, size))
    finally:
        if path is not None:
            os.unlink(path)  # the mapping stays valid; the space is freed with the last batch
    return [
        _as_bank_batch(batch.append_column("kernel", _kernel_column(kernels[chunk.start : chunk.stop])))
        for chunk, batch in zip(chunks, batches)
    ]


def _scratch_file(nbytes: int) -> str | None:
    """A new file of ``nbytes`` in shared memory (else the temp folder) with room to spare, or
    None (not POSIX, or no room: writing through a mapping past a full disk would crash)."""
    if os.name != "posix":
        return None
    for folder in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(folder) and shutil.disk_usage(folder).free > 1.25 * nbytes + 2**28:
            fd, path = tempfile.mkstemp(prefix="blurforge-kernels-", suffix=".f32", dir=folder)
            try:
                os.ftruncate(fd, nbytes)
            finally:
                os.close(fd)
            return path
    return None


# --------------------------------------------------------------------------- files


def write_bank(table: pa.Table, path: str | os.PathLike) -> str:
    """Write a bank atomically to a local path or any pyarrow filesystem URI
    (:func:`blurforge.storage.write_file`).

    The Parquet file metadata carries ``blurforge.schema_version = "1"`` and
    ``blurforge.kind = "kernels"``. Returns the path written.
    """
    import pyarrow.parquet as pq

    from blurforge.storage import write_file

    missing = [f.name for f in BANK_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{os.path.basename(str(path))}: table lacks bank column(s) {missing}; "
                         "build it with generate_bank()")
    table = table.select([f.name for f in BANK_SCHEMA]).cast(BANK_SCHEMA)
    metadata = dict(table.schema.metadata or {})
    metadata.update({b"blurforge.schema_version": SCHEMA_VERSION.encode(), b"blurforge.kind": b"kernels"})
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink, compression="zstd", row_group_size=8192)
    return write_file(path, sink.getvalue().to_pybytes())


class KernelBank:
    """A kernel bank in memory. Build it with :func:`read_bank` (or ``KernelBank(table)``).

    Attributes:
        table: every column but ``kernel`` (so the values are held only once), with the
            :data:`DERIVED_COLUMNS` computed here when the file predates them.
        ids: the ``kernel_id`` of each row; ``name``: for messages.
        sizes: ``(n,)`` each kernel's size; ``size``: the smallest (normally the bank's
            ``--size``; kernels of long trajectories are larger when it was made with a larger
            ``--working-size``).
        kernels: all kernels as one ``(n, size, size)`` float32 array (lookups are views) when
            they share one size; see :meth:`padded` otherwise.
    """

    REQUIRED = ("kernel_id", "size", "kernel")

    def __init__(self, table: pa.Table, name: str = "kernel bank"):
        import pyarrow.compute as pc

        for column in self.REQUIRED:
            if column not in table.column_names:
                raise ValueError(f"{name}: column '{column}' missing — was it written by 'blurforge kernels'?")
        for column in self.REQUIRED:
            if table.column(column).null_count:
                raise ValueError(f"{name}: column '{column}' has nulls — regenerate it with 'blurforge kernels'")
        self.name = name
        self.sizes = table.column("size").to_numpy().astype(np.int64)
        self.size = int(self.sizes.min()) if len(self.sizes) else 0
        self.ids: list[str] = table.column("kernel_id").to_pylist()
        self._index = {k: i for i, k in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError(f"{name}: duplicate kernel_id values; regenerate it with 'blurforge kernels'")
        lengths = pc.list_value_length(table.column("kernel")).to_numpy(zero_copy_only=False)
        if np.any(lengths != self.sizes**2):
            bad = int(np.flatnonzero(lengths != self.sizes**2)[0])
            raise ValueError(
                f"{name}: kernel {self.ids[bad]} has {lengths[bad]} values, expected size^2 = {self.sizes[bad] ** 2}"
            )
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes**2)])
        self._values = np.empty(int(self._offsets[-1]), dtype=np.float32)
        at = 0
        for piece in table.column("kernel").chunks:
            values = piece.flatten().to_numpy(zero_copy_only=False)
            self._values[at : at + values.size] = values
            at += values.size
        self._uniform = bool(np.all(self.sizes == self.size))
        self.table = _with_derived_columns(table.drop_columns(["kernel"]), self)

    @property
    def kernels(self) -> np.ndarray:
        """``(n, size, size)`` float32, a view of every kernel (banks of one kernel size only)."""
        if not self._uniform:
            raise ValueError(
                f"{self.name}: kernels of several sizes ({self.size} to {int(self.sizes.max())}); "
                "use kernel(id) / kernel_at(i), or padded() for one array"
            )
        return self._values.reshape(len(self), self.size, self.size)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        sizes = f"{self.size}x{self.size}" if self._uniform else f"{self.size}x{self.size} to {int(self.sizes.max())}"
        return f"KernelBank({self.name!r}, {len(self)} kernels of {sizes})"

    def kernel(self, kernel_id: str) -> np.ndarray:
        """The ``(s, s)`` float32 kernel with this id."""
        try:
            return self.kernel_at(self._index[kernel_id])
        except KeyError:
            example = f" (ids look like {self.ids[0]!r})" if self.ids else ""
            raise KeyError(f"{self.name}: no kernel {kernel_id!r}{example}") from None

    def kernel_at(self, i: int) -> np.ndarray:
        """The ``i``-th ``(s, s)`` float32 kernel (a view)."""
        s = int(self.sizes[i])
        return self._values[self._offsets[i] : self._offsets[i + 1]].reshape(s, s)

    def padded(self, indices=None) -> np.ndarray:
        """Kernels ``indices`` (default: all) as one ``(k, S, S)`` float32 array, each centred
        in the largest ``S`` of them (zeros around the smaller ones; the centre pixel stays the
        centre)."""
        indices = range(len(self)) if indices is None else indices
        picked = [self.kernel_at(int(i)) for i in indices]
        side = max((k.shape[0] for k in picked), default=self.size)
        out = np.zeros((len(picked), side, side), dtype=np.float32)
        for j, k in enumerate(picked):
            o = (side - k.shape[0]) // 2
            out[j, o : o + k.shape[0], o : o + k.shape[0]] = k
        return out

    def row(self, i: int) -> dict:
        """Row ``i`` without its kernel values: what :func:`render_kernel` needs."""
        return self.table.slice(i, 1).to_pylist()[0]


def _with_derived_columns(table: pa.Table, bank: KernelBank) -> pa.Table:
    """``table`` with any missing :data:`DERIVED_COLUMNS` computed from the bank's kernels
    (``working_size`` of an older bank is its ``size``: trajectories had to fit the kernel)."""
    missing = [c for c in DERIVED_COLUMNS if c not in table.column_names]
    if not missing:
        return table
    n = len(bank)
    width, height, rg = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n)
    for size in np.unique(bank.sizes):
        where = np.flatnonzero(bank.sizes == size)
        stacked = np.stack([bank.kernel_at(int(i)) for i in where]) if not bank._uniform else bank.kernels
        width[where], height[where], rg[where] = kernel_shape_stats(stacked)
    derived = {"working_size": bank.sizes.astype(np.int32), "extent_width": width, "extent_height": height,
               "radius_of_gyration": rg}
    for column in missing:
        field = BANK_SCHEMA.field(column)
        table = table.append_column(field, pa.array(derived[column], field.type))
    return table


def read_bank(path: str | os.PathLike) -> KernelBank:
    """Read a kernel bank written by :func:`write_bank` (``blurforge kernels``)."""
    import pyarrow.parquet as pq

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such kernel bank — create one with 'blurforge kernels --count N --seed S --out {path}'"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(
            f"{name}: not a readable Parquet file ({error}) — was it written by 'blurforge kernels'?"
        ) from None
    metadata = table.schema.metadata or {}
    kind = metadata.get(b"blurforge.kind", b"kernels").decode()
    if kind != "kernels":
        raise ValueError(
            f"{name}: this is a blurforge '{kind}' file, not a kernel bank — "
            "pass the file written by 'blurforge kernels'"
        )
    version = metadata.get(b"blurforge.schema_version", SCHEMA_VERSION.encode()).decode()
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{name}: schema version {version!r}, this blurforge reads {SCHEMA_VERSION!r} — "
            "regenerate it with 'blurforge kernels'"
        )
    return KernelBank(table, name=name)


# --------------------------------------------------------------------------- viewing


def kernel_contact_sheet(kernels: np.ndarray, path: str | os.PathLike, columns: int = 8, tile: int = 64) -> Path:
    """Write a PNG grid of kernels, each scaled to its own maximum, white on black, with thin
    grey borders (like Figure 10 of the DeblurDiff paper).

    Args:
        kernels: ``(n, s, s)``; keep ``n`` small (e.g. 32–64) for a readable sheet.
        columns: kernels per row.
        tile: a kernel is enlarged (nearest neighbour) by an integer factor to about this size.
    """
    import cv2

    kernels = np.asarray(kernels, dtype=np.float64)
    if kernels.ndim != 3 or kernels.shape[0] == 0 or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(f"kernels must be a non-empty (n, s, s) array; got shape {kernels.shape}")
    n, s, _ = kernels.shape
    scale = max(1, tile // s)
    side = s * scale
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    border = 1
    sheet = np.full((rows * (side + border) + border, columns * (side + border) + border), 96, dtype=np.uint8)
    peaks = kernels.reshape(n, -1).max(axis=1)
    for i in range(n):
        image = kernels[i] / peaks[i] if peaks[i] > 0 else np.zeros((s, s))
        image = np.repeat(np.repeat(np.clip(image, 0, 1) * 255 + 0.5, scale, axis=0), scale, axis=1).astype(np.uint8)
        r, c = divmod(i, columns)
        y, x = border + r * (side + border), border + c * (side + border)
        sheet[y : y + side, x : x + side] = image
    path = Path(path)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"{path}: could not write the contact sheet (does the folder exist? is the suffix .png?)")
    return path


def bank_summary(table: pa.Table) -> dict:
    """Numbers for ``blurforge kernels`` and ``inspect``: count, sizes, lengths, shapes, resampling.

    ``extent`` is a kernel's larger bounding-box side (px), ``rg`` its radius of gyration (px);
    ``*_q`` are the 5/25/50/75/95 % quantiles. Banks without the shape columns get them
    computed (see :class:`KernelBank`).
    """
    n = len(table)
    if n == 0:
        return {"count": 0}
    if any(c not in table.column_names for c in DERIVED_COLUMNS) and "kernel" in table.column_names:
        table = KernelBank(table).table
    length = table.column("length").to_numpy()
    resamples = table.column("resamples").to_numpy()
    sizes = table.column("size").to_numpy()
    extent = np.maximum(table.column("extent_width").to_numpy(), table.column("extent_height").to_numpy())
    rg = table.column("radius_of_gyration").to_numpy()
    total = int(resamples.sum())
    quantiles = (5, 25, 50, 75, 95)
    return {
        "count": n,
        "size": int(sizes.min()),
        "size_max": int(sizes.max()),
        "larger_than_size": int((sizes > sizes.min()).sum()),  # long trajectories kept at their own size
        "working_size": int(table.column("working_size")[0].as_py()),
        "num_steps": int(table.column("num_steps")[0].as_py()),
        "exposure": float(table.column("exposure")[0].as_py()),
        "length_min": float(length.min()),
        "length_mean": float(length.mean()),
        "length_max": float(length.max()),
        "anxiety_mean": float(table.column("anxiety").to_numpy().mean()),
        "n_shakes_mean": float(table.column("n_shakes").to_numpy().mean()),
        "extent_q": [float(v) for v in np.percentile(extent, quantiles)],
        "rg_q": [round(float(v), 3) for v in np.percentile(rg, quantiles)],
        "total_resamples": total,
        "kernels_resampled": int((resamples > 0).sum()),
        "rejection_rate": total / (total + n),  # rejected attempts / all attempts
    }


def rejection_by_length(table: pa.Table, bins: int = 10) -> list[dict]:
    """Rejection rate (rejected attempts / all attempts) and median shape per band of trajectory
    length: ``bins`` equal bands over the bank's length range. A kernel's length is drawn once,
    so its rejected attempts all belong to its band."""
    if len(table) == 0:
        return []
    if any(c not in table.column_names for c in DERIVED_COLUMNS) and "kernel" in table.column_names:
        table = KernelBank(table).table
    length = table.column("length").to_numpy()
    resamples = table.column("resamples").to_numpy()
    extent = np.maximum(table.column("extent_width").to_numpy(), table.column("extent_height").to_numpy())
    rg = table.column("radius_of_gyration").to_numpy()
    edges = np.linspace(length.min(), length.max(), bins + 1)
    band = np.clip(np.searchsorted(edges, length, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = band == b
        if not m.any():
            continue
        rejected = int(resamples[m].sum())
        out.append({"length_lo": float(edges[b]), "length_hi": float(edges[b + 1]), "count": int(m.sum()),
                    "rejection_rate": rejected / (rejected + int(m.sum())),
                    "extent_median": float(np.median(extent[m])), "rg_median": float(np.median(rg[m]))})
    return out
