"""The in-betweens of a frame pair warped and summed in one pass (numba), bit-identical to OpenCV.

``frames.inbetween_sum`` with its default settings (each in-between is the nearer frame warped by
nearest neighbour, weight 1) spent most of a REDS-like job in four OpenCV calls per in-between
and band of rows: ``addWeighted`` for the flow at time ``t``, ``add`` for the sampling map,
``remap`` for the warp, and one more ``add`` into the sum, each a pass over memory. Here, per row:
the sampling positions of every in-between are computed into rows of pixel offsets (a loop the
compiler vectorises), then each pixel gathers its in-betweens and sums them in registers; the
flows at ``t``, the maps and the warped frames never exist as images.

The result is bit-identical to the OpenCV path (``tests/test_frames.py`` compares them):

- the flow at ``t``, ``α·F01 + β·F10``, is one fused multiply-add ``fma(F01, α, β·F10)`` (the
  product ``β·F10`` rounded to float32 first, then one rounding), which is what
  ``cv2.addWeighted`` computes on float32 images on CPUs with FMA instructions (its AVX2 code;
  without them OpenCV rounds α·F01 too before adding, so the two engines agree only on such CPUs);
  ``llvm.fma`` is exactly rounded on every CPU (a library call where it has no FMA instruction),
  so this engine's bits do not depend on the CPU;
- the position is that plus the pixel coordinate in float32 (``cv2.add`` of the grid);
- ``cv2.remap`` with ``INTER_NEAREST`` rounds a float position half to even and replicates the
  border, i.e. clamps to ``[0, W-1] × [0, H-1]``: clamping first and ``rint`` give the same index;
- every pixel's sum is ``initial + warp₁ + warp₂ + …`` in float32 in the order of the terms.

Compiled on first use (about 5 s) and cached by numba next to this file (or in its user cache
when that is read-only; uncached when neither can be written), so later processes load it in
well under a second.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# No 'contract' or 'reassoc': every rounding stays where the OpenCV path has it. ('nnan'/'ninf':
# flows are finite — DIS never returns NaN — which lets the clamps compile to min/max.)
_NO_NAN = {"nnan", "ninf", "nsz"}


def _jit(fn=None, **options):
    """``numba.njit`` (no GIL, no bounds checks), cached on disk where numba finds a writable place."""
    if fn is None:
        return functools.partial(_jit, **options)
    try:
        return njit(cache=True, nogil=True, boundscheck=False, **options)(fn)
    except RuntimeError:  # "cannot cache function …: no locator available": compile per process
        return njit(cache=False, nogil=True, boundscheck=False, **options)(fn)


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a·b + c`` rounded once to float32 (``llvm.fma.f32``)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@_jit(fastmath=_NO_NAN)
def _row_positions(fa, fb, alpha, beta, xs, y, width, height, out):
    """Offsets into the flattened RGBA frame (``4·(Y·W + X)``) of one row's nearest source pixels
    for one in-between."""
    zero = np.float32(0)
    xmax, ymax = np.float32(width - 1), np.float32(height - 1)
    w32 = np.int32(width)
    for x in range(width):
        px = _fma32(fa[2 * x], alpha, fb[2 * x] * beta) + xs[x]
        py = _fma32(fa[2 * x + 1], alpha, fb[2 * x + 1] * beta) + y
        px = px if px > zero else zero
        px = px if px < xmax else xmax
        py = py if py > zero else zero
        py = py if py < ymax else ymax
        out[x] = (np.int32(np.rint(py)) * w32 + np.int32(np.rint(px))) * np.int32(4)


@_jit
def _nearest_sum(frame0, frame1, f01, f10, n0, alpha, beta, initial, out):
    """Per row: every term's source offsets, then each pixel's sum over the terms in registers
    (terms ``0 … n0-1`` sample ``frame0``, the rest ``frame1``)."""
    h, w = out.shape[0], out.shape[1]
    n = alpha.shape[0]
    positions = np.empty((n, w), np.int32)
    xs = np.arange(w).astype(np.float32)
    src0, src1 = frame0.reshape(-1), frame1.reshape(-1)
    for y in range(h):
        acc, start = out[y].reshape(-1), initial[y].reshape(-1)
        fa, fb = f01[y].reshape(-1), f10[y].reshape(-1)
        for k in range(n):
            _row_positions(fa, fb, alpha[k], beta[k], xs, np.float32(y), w, h, positions[k])
        for x in range(w):
            o = 4 * x
            s0, s1, s2, s3 = start[o], start[o + 1], start[o + 2], start[o + 3]
            for k in range(n0):
                i = np.uint32(positions[k, x])
                s0 += src0[i]
                s1 += src0[i + 1]
                s2 += src0[i + 2]
                s3 += src0[i + 3]
            for k in range(n0, n):
                i = np.uint32(positions[k, x])
                s0 += src1[i]
                s1 += src1[i + 1]
                s2 += src1[i + 2]
                s3 += src1[i + 3]
            acc[o], acc[o + 1], acc[o + 2], acc[o + 3] = s0, s1, s2, s3


def nearest_warp_sum(a: np.ndarray, b: np.ndarray, f01: np.ndarray, f10: np.ndarray,
                     terms: list[tuple[int, float, float, float]], initial: np.ndarray | None = None) -> np.ndarray:
    """``initial + Σ warp(frame, alpha·F01 + beta·F10)`` over ``terms`` (``frames.inbetween_terms``,
    every weight 1), nearest neighbour with replicated borders, as ``H×W×4 float32``.

    ``a, b``: ``H×W×4 float32``; ``f01, f10``: ``H×W×2 float32``; ``initial``: ``H×W×4`` or None (zeros).
    """
    h, w = a.shape[:2]
    if a.shape != (h, w, 4) or b.shape != a.shape:
        raise ValueError(f"frames must both be H×W×4, got {a.shape} and {b.shape}")
    if f01.shape != (h, w, 2) or f10.shape != f01.shape:
        raise ValueError(f"flows must both be {h}×{w}×2, got {f01.shape} and {f10.shape}")
    if h * w * 4 >= 2**31:
        raise ValueError(f"a {h}×{w} frame is too large for 32-bit pixel offsets")
    if any(weight != 1.0 for *_, weight in terms):
        raise ValueError("nearest_warp_sum adds every warped frame with weight 1")
    which = [t[0] for t in terms]
    n0 = which.count(0)
    if which != [0] * n0 + [1] * (len(which) - n0):
        raise ValueError("nearest_warp_sum takes the terms of frame 0 first, then those of frame 1")
    alpha = np.array([t[1] for t in terms], np.float32)
    beta = np.array([t[2] for t in terms], np.float32)

    def f32(x):
        return np.ascontiguousarray(x, dtype=np.float32)

    out = np.empty((h, w, 4), np.float32)
    start = np.zeros_like(out) if initial is None else f32(initial)
    _nearest_sum(f32(a), f32(b), f32(f01), f32(f10), n0, alpha, beta, start, out)
    return out
