"""``blurforge frames``: blurry/sharp pairs by averaging video frames (REDS / GoPro style).

For a centre frame ``c`` and an odd window of ``N`` original frames (``h = N // 2``):

1. frames ``c-h … c+h`` are decoded (``blurforge.video``) and taken to linear signal space with
   the inverse camera response (``--response``: ``srgb`` = the exact sRGB EOTF, ``gamma2.2``,
   or ``linear`` = none);
2. optionally ``K`` (``--interpolate``) frames are synthesised between each consecutive pair at
   times ``t = k / (K+1)``: DIS optical flow (OpenCV, on quarter-size frames) in both directions,
   the flows from time ``t`` approximated from them (Jiang et al., Super SloMo, eq. 4:
   ``F_t0 = -(1-t) t F_01 + t² F_10``, ``F_t1 = (1-t)² F_01 - t (1-t) F_10``), and the frame
   nearer in time warped to ``t`` (nearest neighbour, replicated borders, as ``cv2.remap``
   samples, in one fused pass: ``blurforge.warpsum``; frame 0 at ``t = 1/2``). No network
   weights. The settings were chosen by their error against densely sampled ground truth (see
   ``DIS_PRESETS`` below);
3. the ``N + (N-1) K`` virtual frames are averaged in linear space, the response is applied
   again, and the result, rounded exactly to 8-bit codes (``blur.linear_to_codes``), is the
   blurry image (PNG); frame ``c`` as decoded is the sharp one (PNG, bit-exact). The PNGs are
   compressed, hashed and written on threads while the next frames are decoded and averaged.

Mapping to the published datasets:

- REDS (Nah et al. 2019): 120 fps clips interpolated to 1920 fps (15 in-betweens) and 65
  virtual frames averaged: ``--window 5 --interpolate 15`` (5 + 4·15 = 65), with
  ``--stride 5`` for REDS' 24 fps output; REDS used a camera response estimated for its camera,
  ``--response srgb`` is the closest standard curve.
- GoPro (Nah et al. 2017): 240 fps frames, 7–13 averaged, gamma 2.2, no interpolation:
  ``--window 7:13 --interpolate 0 --response gamma2.2`` (a range draws an odd window per sample
  from the sample's seed) or a fixed ``--window 11``.

Work items and determinism: an item is a whole clip (its relative path); the worker opens it,
streams its frames once and plans the centres as it goes (``c = H, H+M, …`` with ``H`` half the
largest window and ``M`` the stride, while ``c + H`` is a decoded frame), so the driver never
opens a video, and a clip's frame count only has to be trusted after it has been checked. Shards
are groups of ``shard_size`` clips in sorted order, so keys, seeds and files do not depend on
``--workers``; the unit of resume is a shard of clips.

Bad clips never crash the run: corrupt files, clips with zero frames or fewer frames than the
window, decoders whose decoded count disagrees with the length they reported (over- or
under-reported), decoders that time out or fail mid-stream each become one errors row, and
such a clip contributes no pairs (files it already wrote are removed): a decoder that is wrong
about the length cannot be trusted about the frames either.

Keys are ``PREFIX/seedSEED/REL_PATH/CENTRE`` (prefix ``frames`` by default; the run seed in the
key lets runs with other seeds merge); ``seed = seed_for(run_seed, "frames/REL_PATH/CENTRE")``
(:func:`blurforge.synthesize.sample_seed`: never the key prefix); the window of a sample is drawn
from ``default_rng([seed, 0])`` when ``--window`` is a range (and recorded either way). Every pair
of a clip has the ``group`` ``sha256:`` + the SHA-256 of the clip file's bytes, so overlapping
windows of one clip share a split, whatever the clip is called or where it lies.

Realism (``--noise rsblur``, ``--saturation``; off by default): the blurry average gets RSBlur's
saturation and camera-pipeline noise in linear signal space, before the response is applied again
(``blurforge.blur.frames_realism``) — averaging ``N`` frames divides the video's own noise by
``√N``, so without it the blurry image is far cleaner than its sharp target. Its parameters are
drawn from ``default_rng([seed, 1])``, the noise from ``default_rng([seed, 2])``, and recorded in
``params["realism"]``. The sharp target is untouched.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from blurforge.blur import frames_realism
from blurforge.imageio import png_options, png_settings
from blurforge.manifest import SCHEMA_VERSION
from blurforge.storage import Location, check_separate
from blurforge.shards import (RunSummary, ShardTask, check_run_config, finish_shard, make_tasks, report_progress,
                              run_shards)

RESPONSES = ("srgb", "gamma2.2", "linear")
FLOW = "DIS-medium"  # cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


# ------------------------------------------------------------------------------ parameters


def parse_window(text: str | int | tuple) -> tuple[int, int]:
    """``7`` or ``"7"`` → (7, 7); ``"7:13"`` or (7, 13) → (7, 13). Both ends odd, ≥ 1, lo ≤ hi.

    Usable as an argparse ``type``."""
    if isinstance(text, (tuple, list)):
        lo, hi = (int(v) for v in text)
    elif isinstance(text, int):
        lo = hi = text
    else:
        parts = str(text).split(":")
        if len(parts) not in (1, 2) or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"--window {text!r}: give an odd frame count N or a range LO:HI (e.g. 7:13)")
        lo, hi = int(parts[0]), int(parts[-1])
    if lo < 1 or hi < lo or lo % 2 == 0 or hi % 2 == 0:
        raise ValueError(
            f"--window {text!r}: must be odd and at least 1 (a range LO:HI needs odd LO <= HI) — "
            "the centre frame is the sharp target"
        )
    return lo, hi


def window_for(seed: int, window: tuple[int, int]) -> int:
    """The sample's odd window length: fixed, or drawn uniformly from the odd values of a range."""
    lo, hi = window
    if lo == hi:
        return lo
    choices = np.arange(lo, hi + 1, 2)
    return int(choices[np.random.default_rng([seed, 0]).integers(len(choices))])


def plan_centres(n_frames: int, half: int, stride: int) -> list[int]:
    """Centre frames of a clip of ``n_frames``: ``half, half+stride, …`` with ``c + half < n``."""
    return list(range(half, n_frames - half, stride))


# ---------------------------------------------------------------------------- signal space


def inverse_response_lut(response: str) -> np.ndarray:
    """``(256,) float32``: 8-bit code value → linear signal for ``response``."""
    from blurforge.blur import srgb_to_linear

    x = np.arange(256, dtype=np.float32) / np.float32(255)
    if response == "srgb":
        return srgb_to_linear(x)
    if response == "gamma2.2":
        return np.power(x, np.float32(2.2), dtype=np.float32)
    if response == "linear":
        return x
    raise ValueError(f"--response {response!r}: choose one of {', '.join(RESPONSES)}")


def response_codes(x_lin: np.ndarray, response: str) -> np.ndarray:
    """Linear signal → 8-bit codes of the encoded values (``H×W×C uint8``): exactly
    ``round(255 · apply_response(x))`` computed in exact arithmetic (``blur.linear_to_codes``)."""
    from blurforge.blur import linear_to_codes

    if response not in RESPONSES:
        raise ValueError(f"--response {response!r}: choose one of {', '.join(RESPONSES)}")
    return linear_to_codes(x_lin, response)


def apply_response(x_lin: np.ndarray, response: str) -> np.ndarray:
    """Linear signal → encoded values in [0, 1] (clipped), float32."""
    from blurforge.blur import linear_to_srgb

    if response == "srgb":
        return linear_to_srgb(x_lin)
    x = np.clip(x_lin, 0.0, 1.0).astype(np.float32, copy=False)
    if response == "gamma2.2":
        return np.power(x, np.float32(1 / 2.2), dtype=np.float32)
    if response == "linear":
        return x
    raise ValueError(f"--response {response!r}: choose one of {', '.join(RESPONSES)}")


# --------------------------------------------------------------------------- interpolation

# The optical flow and the in-between rendering were chosen by measured error against densely
# sampled ground truth: scripts/bench_frames.py --accuracy renders textured scenes (two pans, a
# rotation with zoom, a disc crossing a panning background, and a hard one: a fast pan with a fast
# spinning disc crossing it, large occlusions) at 16× the frame rate and compares the 65-frame
# average of 5 frames + 4×15 in-betweens with the true dense average (RMS of the 8-bit results in
# codes). Rule: the cheapest setting whose own error — what it adds, in quadrature, to the error of
# the most accurate setting (full-size DIS-medium, both frames blended, bilinear) — stays within
# 0.8 code RMS on every scene: 1 code, below which an 8-bit difference is not visible, less a 20%
# margin for footage harder than five scenes. DIS-medium on quarter-size frames with the nearer
# frame warped by nearest neighbour passes it (0.74 on the hard scene, 51.6–56.3 dB against the
# truth on the others) at about half the cost of half-size flow with bilinear warps; ultrafast
# flow or nearest-neighbour warps with fast flow add 0.8–1 code, quarter-size fast/ultrafast flow
# 1.6–2.2 codes on the hard scene. (README: the table.)
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
FLOW_PRESET = "medium"
FLOW_SCALE = 0.25  # flow computed on frames resized by this factor, then resized back
BLEND = "nearer"  # each in-between is the nearer original frame warped to its time ("both": blend both)
WARPS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
WARP = "nearest"  # how the frames are sampled at the warped positions ("linear": bilinear)
FLOW = f"DIS-{FLOW_PRESET}@{FLOW_SCALE:g}/{BLEND}" + ("" if WARP == "linear" else f"/{WARP}")  # params["flow"]
_BAND_ROWS = 64  # in-betweens are rendered in bands of rows that stay in the CPU cache


def make_flow(preset: str = FLOW_PRESET):
    return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def pair_flows(a_gray: np.ndarray, b_gray: np.ndarray, flow, scale: float = FLOW_SCALE):
    """DIS flows between two ``H×W uint8`` frames, both ways, as ``H×W×2 float32`` ``(f01, f10)``
    with ``a(y, x) ≈ b(y + f01[..., 1], x + f01[..., 0])``.

    With ``scale < 1`` the flow is computed on the frames resized by ``scale`` (area averaging),
    each component multiplied by the size ratio of its axis, and resized back bilinearly."""
    if scale == 1:
        return flow.calc(a_gray, b_gray, None), flow.calc(b_gray, a_gray, None)
    h, w = a_gray.shape
    sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
    a_small = cv2.resize(a_gray, (sw, sh), interpolation=cv2.INTER_AREA)
    b_small = cv2.resize(b_gray, (sw, sh), interpolation=cv2.INTER_AREA)
    flows = []
    for f in (flow.calc(a_small, b_small, None), flow.calc(b_small, a_small, None)):
        f = cv2.multiply(f, (w / sw, h / sh, 0.0, 0.0), dst=f)  # per-channel factors, on the small flow
        flows.append(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR))
    return flows[0], flows[1]


def inbetween_terms(k: int, blend: str = BLEND) -> list[tuple[int, float, float, float]]:
    """The warps whose weighted sum is the sum of the ``k`` in-betweens at ``t = i/(k+1)``:
    ``(frame, alpha, beta, weight)`` — warp frame 0 or 1 by ``alpha·F01 + beta·F10`` (Super
    SloMo eq. 4: ``F_t0 = -(1-t) t F01 + t² F10``, ``F_t1 = (1-t)² F01 - t (1-t) F10``) and add it
    times ``weight``: ``(1-t)`` and ``t`` for ``blend="both"``; for ``"nearer"`` weight 1 on the
    frame nearer in time, frame 0 at ``t = 1/2`` (one warp per in-between)."""
    if blend not in ("both", "nearer"):
        raise ValueError(f"blend must be 'both' or 'nearer', got {blend!r}")
    terms = []
    for i in range(1, k + 1):
        t = i / (k + 1)
        w0, w1 = (1 - t, t) if blend == "both" else (float(t <= 0.5), float(t > 0.5))
        if w0:
            terms.append((0, -(1 - t) * t, t * t, float(w0)))
        if w1:
            terms.append((1, (1 - t) ** 2, -t * (1 - t), float(w1)))
    return terms


def inbetween_sum(a_lin: np.ndarray, b_lin: np.ndarray, f01: np.ndarray, f10: np.ndarray, k: int,
                  blend: str = BLEND, warp: str = WARP, initial: np.ndarray | None = None,
                  engine: str = "auto") -> np.ndarray:
    """Sum of the ``k`` frames interpolated between ``a`` and ``b`` at ``t = 1/(k+1) … k/(k+1)``.

    ``a_lin, b_lin``: ``H×W×C float32`` linear (4 channels warp fastest); ``f01, f10``:
    ``pair_flows``. Each in-between frame is the frame(s) warped to ``t`` (replicated borders;
    ``warp``: ``"nearest"`` neighbour or ``"linear"`` bilinear, as ``cv2.remap``) as
    ``inbetween_terms`` lists. Returns ``H×W×C float32`` (a sum, not a mean: windows only need
    sums, and overlapping windows share it), added to a copy of ``initial`` when given.

    ``engine``: ``"opencv"`` renders with ``cv2.remap`` in bands of rows, every in-between of a
    band before the next band, so the band's flows, maps and sum stay in cache; ``"numba"`` warps
    and sums in one pass (``blurforge.warpsum``; nearest neighbour, weight 1, 4 channels only:
    the defaults), bit-identical to ``"opencv"`` and about twice as fast; ``"auto"`` takes
    ``"numba"`` wherever it applies.
    """
    terms = inbetween_terms(k, blend)
    fused = warp == "nearest" and a_lin.shape[2:] == (4,) and all(t[3] == 1.0 for t in terms)
    if engine not in ("auto", "opencv", "numba"):
        raise ValueError(f"engine must be 'auto', 'opencv' or 'numba', got {engine!r}")
    if engine == "numba" and not fused:
        raise ValueError("the numba engine renders nearest-neighbour warps of the nearer frame, 4 channels")
    warp_sum = _fused_warp_sum(required=engine == "numba") if fused and engine != "opencv" else None
    if warp_sum is not None:
        return warp_sum(a_lin, b_lin, f01, f10, terms, initial)
    h, w = a_lin.shape[:2]
    interpolation = WARPS[warp]
    frames = (a_lin, b_lin)
    grid = _grid(h, w)
    total = np.empty_like(a_lin)
    start = np.zeros_like(a_lin) if initial is None else np.asarray(initial, dtype=a_lin.dtype)
    for y0 in range(0, h, _BAND_ROWS):
        y1 = min(h, y0 + _BAND_ROWS)
        fa, fb, g, acc = f01[y0:y1], f10[y0:y1], grid[y0:y1], total[y0:y1]
        summed = start[y0:y1]  # the first term is added to the initial band, then to the running sum
        where = np.empty_like(fa)
        for frame, alpha, beta, weight in terms:
            cv2.addWeighted(fa, alpha, fb, beta, 0.0, dst=where)
            cv2.add(where, g, dst=where)
            warped = cv2.remap(frames[frame], where, None, interpolation, borderMode=cv2.BORDER_REPLICATE)
            if weight == 1.0:
                cv2.add(summed, warped, dst=acc)
            else:
                cv2.scaleAdd(warped, weight, summed, dst=acc)
            summed = acc
        if summed is not acc:  # no terms (k = 0)
            acc[...] = summed
    return total


@functools.lru_cache(maxsize=None)
def _fused_warp_sum(required: bool):
    """``warpsum.nearest_warp_sum``, imported on first use (numba loads only in interpolating
    jobs); where numba cannot be imported, ``None`` with one warning (the OpenCV engine renders
    the same bits, about half as fast) unless the numba engine was asked for by name."""
    try:
        from blurforge.warpsum import nearest_warp_sum
    except ImportError as exc:
        if required:
            raise
        warnings.warn(f"numba is not usable ({exc}): in-betweens are rendered with OpenCV instead, about half "
                      "as fast; reinstall numba (pip install numba) to get the fused pass back", RuntimeWarning,
                      stacklevel=3)
        return None
    return nearest_warp_sum


_GRIDS: dict[tuple[int, int], np.ndarray] = {}


def _grid(h: int, w: int) -> np.ndarray:
    """``H×W×2 float32`` pixel coordinates ``(x, y)`` (cached per size)."""
    if (h, w) not in _GRIDS:
        _GRIDS.clear()
        _GRIDS[h, w] = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    return _GRIDS[h, w]


# ------------------------------------------------------------------------------ one clip


class _ClipAverager:
    """Streams a clip's frames and renders each planned centre once its window is decoded.

    Holds only the frames (and in-between sums) a pending window still needs. Without
    interpolation the frames of a window are summed in float64 as a running sum (frames entering
    the window are added, frames leaving it subtracted): their linear values come from a
    256-entry float32 table whose entries are multiples of a power of two small enough that every
    partial sum is exact in float64 (``_exact_running_sum``), so the running sum is bit-identical
    to re-summing the window; otherwise each window is re-summed. With interpolation a window is
    the float32 sum of its frame pairs' sums (frame ``j`` and the in-betweens after it, computed
    once per pair and shared by overlapping windows) and its last frame, in a fixed order.
    """

    def __init__(self, cfg: dict, rel: str):
        self.cfg = cfg
        self.rel = rel  # the clip, relative to --videos
        self.window = tuple(cfg["window"])
        self.half = self.window[1] // 2
        self.stride = cfg["stride"]
        self.k = cfg["interpolate"]
        self.lut = inverse_response_lut(cfg["response"])
        self.lut64 = self.lut.astype(np.float64)
        self.running = _exact_running_sum(self.lut, self.window[1])
        self.raw: OrderedDict[int, np.ndarray] = OrderedDict()  # uint8 RGB frames
        self.lin: dict[int, np.ndarray] = {}  # H×W×4 float32 linear frames (for the in-betweens)
        self.gray: dict[int, np.ndarray] = {}
        self.between: dict[int, np.ndarray] = {}  # j -> frame j + the in-betweens of (j, j+1)
        self.summed: dict[int, np.ndarray] = {}  # frames in self.sum (references to raw frames)
        self.sum: np.ndarray | None = None  # float64 H×W×3 sum of the frames in self.summed
        self.next_centre = self.half
        self.flow = make_flow() if self.k else None
        self.timing = {"average_s": 0.0, "interpolate_s": 0.0}
        self.realism: dict[int, dict | None] = {}  # centre -> realism params (None: no realism stage)

    def push(self, i: int, frame: np.ndarray):
        """Add decoded frame ``i``; yields ``(key, centre, window, seed, blurry, sharp)``, both
        ``H×W×3 uint8`` (the blurry image's 8-bit codes, the centre frame as decoded)."""
        self.raw[i] = frame
        while self.next_centre + self.half <= i:
            c = self.next_centre
            yield self.render(c)
            self.next_centre += self.stride
        lo = self.next_centre - self.half  # nothing below is needed again
        for d in (self.raw, self.lin, self.gray, self.between):
            for j in [j for j in d if j < lo]:
                del d[j]

    def _lin(self, j: int) -> np.ndarray:
        if j not in self.lin:
            self.lin[j] = cv2.LUT(cv2.cvtColor(self.raw[j], cv2.COLOR_RGB2RGBA), self.lut)
        return self.lin[j]

    def _between(self, j: int) -> np.ndarray:
        if j not in self.between:
            t = time.perf_counter()
            for i in (j, j + 1):
                if i not in self.gray:
                    self.gray[i] = cv2.cvtColor(self.raw[i], cv2.COLOR_RGB2GRAY)
            f01, f10 = pair_flows(self.gray[j], self.gray[j + 1], self.flow)  # once per frame pair
            lin = self._lin(j)  # the pair's sum starts with frame j: a window adds fewer arrays
            self.between[j] = inbetween_sum(lin, self._lin(j + 1), f01, f10, self.k, initial=lin)
            self.timing["interpolate_s"] += time.perf_counter() - t
        return self.between[j]

    def _window_sum(self, lo: int, hi: int) -> np.ndarray:
        """float64 ``H×W×3`` sum of the linear frames ``lo … hi``."""
        want = range(lo, hi + 1)
        if not self.running:
            acc = np.zeros(self.raw[lo].shape, np.float64)
            for j in want:
                acc += cv2.LUT(self.raw[j], self.lut64)
            return acc
        leave = [j for j in self.summed if not lo <= j <= hi]
        enter = [j for j in want if j not in self.summed]
        if self.sum is None or len(leave) + len(enter) >= len(want):  # cheaper to start over
            self.sum = np.zeros(self.raw[lo].shape, np.float64)
            self.summed.clear()
            leave, enter = [], list(want)
        for j in leave:
            self.sum -= cv2.LUT(self.summed.pop(j), self.lut64)
        for j in enter:
            self.sum += cv2.LUT(self.raw[j], self.lut64)
            self.summed[j] = self.raw[j]
        return self.sum

    def render(self, c: int):
        key, seed = sample_key_seed(self.cfg, self.rel, c)
        n = window_for(seed, self.window)
        h = n // 2
        virtual = n + (n - 1) * self.k
        if self.k and h:
            pairs = [self._between(j) for j in range(c - h, c + h)]  # frame j and the in-betweens after it
            t = time.perf_counter()
            total = pairs[0]  # float32 RGBA; never modified (a new array from the first addition on)
            for pair in [*pairs[1:], self._lin(c + h)]:  # and the last frame
                total = cv2.add(total, pair, dst=None if total is pairs[0] else total)
            mean = cv2.cvtColor(total, cv2.COLOR_RGBA2RGB)
            np.divide(mean, np.float32(virtual), out=mean)
        else:
            t = time.perf_counter()
            acc = self._window_sum(c - self.half, c + self.half)  # may be the running sum itself: never modify it
            if h < self.half:  # a shorter window drawn from a range: leave the outer frames out
                acc = acc.copy()
                for j in (*range(c - self.half, c - h), *range(c + h + 1, c + self.half + 1)):
                    acc -= cv2.LUT(self.raw[j], self.lut64)
            mean = np.divide(acc, virtual, out=np.empty(acc.shape, np.float32), casting="unsafe")
        window = [self.raw[j] for j in range(c - h, c + h + 1)]
        mean, self.realism[c] = frames_realism(mean, window, self.cfg.get("realism"), seed)  # noise, saturation
        blurry = response_codes(mean, self.cfg["response"])
        self.timing["average_s"] += time.perf_counter() - t
        return key, c, n, seed, blurry, self.raw[c]


def sample_key_seed(cfg: dict, rel: str, centre: int) -> tuple[str, int]:
    """The key and seed of the pair centred on frame ``centre`` of the clip ``rel``."""
    from blurforge.synthesize import sample_key, sample_seed

    return sample_key(cfg["key_prefix"], cfg["seed"], rel, centre), sample_seed(cfg["seed"], "frames", rel, centre)


def _exact_running_sum(lut: np.ndarray, n: int) -> bool:
    """Whether float64 sums of up to ``n`` entries of ``lut`` (float32) are exact, whatever
    the order: every entry is a multiple of the smallest entry's float32 spacing ``q`` (a
    power of two), so every partial sum is too, and it is exact while ``n·max(lut) / q <
    2^53``. (sRGB: q = 2^-35, so up to ~2^17 frames; gamma 2.2: q = 2^-41, up to 4095.)"""
    positive = lut[lut > 0].astype(np.float32)
    if positive.size == 0:
        return True
    q = float(np.spacing(positive.min()))
    return n * float(lut.max()) / q < 2.0**53


class _PairWriter:
    """Encodes (PNG), hashes and writes a clip's pairs on worker threads while the caller goes on
    decoding and averaging: the PNG compressor (``imageio``), SHA-256 and file writes release the
    GIL. Rows come back in submission order; at most ``2 × threads`` pairs are in flight."""

    def __init__(self, out: Location, png: dict, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.png = out, png  # encode_image keywords
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="frames-encode")
        self.depth = 2 * threads
        self.pending: list = []  # (future, row) in submission order
        self.paths: list[str] = []  # every file submitted (for clean-up on failure)
        self.seconds = 0.0

    def submit(self, row: dict, blurry: np.ndarray, sharp: np.ndarray) -> list[dict]:
        """Queue one pair (``row`` without its hashes); returns the rows finished meanwhile."""
        self.paths += [row["blur_path"], row["sharp_path"]]
        self.pending.append((self.pool.submit(self._write, row, blurry, sharp), row))
        done = []
        while len(self.pending) > self.depth:
            done.append(self._finish())
        return done

    def drain(self) -> list[dict]:
        """Wait for every queued pair; returns their rows."""
        return [self._finish() for _ in range(len(self.pending))]

    def close(self) -> None:
        """Stop: queued pairs not started are dropped, running ones finish."""
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)

    def _finish(self) -> dict:
        future, row = self.pending.pop(0)
        row["blur_sha256"], row["sharp_sha256"], seconds = future.result()
        self.seconds += seconds
        return row

    def _write(self, row: dict, blurry: np.ndarray, sharp: np.ndarray) -> tuple[str, str, float]:
        from blurforge.imageio import encode_image, sha256_bytes

        t = time.perf_counter()
        stage = "encode"
        try:
            blur_bytes = encode_image(blurry, bit_depth=8, **self.png)
            sharp_bytes = encode_image(sharp, bit_depth=8, **self.png)  # the frame, bit-exact
            stage = "write"
            self.out.write_bytes(row["blur_path"], blur_bytes)
            self.out.write_bytes(row["sharp_path"], sharp_bytes)
        except Exception as exc:
            exc.stage = stage  # where process_clip records it
            raise
        return sha256_bytes(blur_bytes), sha256_bytes(sharp_bytes), time.perf_counter() - t


def _encode_threads() -> int:
    """Threads that write pairs: two when OpenCV may use several cores (one process), one in a
    pool worker (``cv2.setNumThreads(1)``: the pool is the parallelism)."""
    return 2 if cv2.getNumThreads() > 1 else 1


def process_clip(rel: str, cfg: dict, out: Location, shard: str,
                 on_pair: Callable[[int], None] | None = None) -> tuple[list[dict], list[dict], dict]:
    """All pairs of one clip, or an error row. Returns ``(rows, errors, timing)``.
    ``on_pair(n)``: called with the clip's pair count each time a pair is rendered (progress)."""
    from blurforge.synthesize import sample_key, sample_name, source_group
    from blurforge.video import VideoError, check_length, guarded_frames, open_video

    src = Path(cfg["videos"]) / rel
    key_base = sample_key(cfg["key_prefix"], cfg["seed"], rel)  # the clip's keys without the centre
    rows: list[dict] = []
    timing = {"decode_s": 0.0, "average_s": 0.0, "interpolate_s": 0.0, "encode_s": 0.0}
    stage = "open"
    frames = None
    writer = _PairWriter(out, png_options(cfg.get("png")), _encode_threads())
    try:
        group = source_group(src)
        clip = open_video(src, cfg["decoder"])
        need = cfg["window"][1]
        if clip.reported_length is not None and clip.reported_length < need:
            raise VideoError(
                f"{src}: {clip.decoder} reports {clip.reported_length} frames, fewer than the window of {need} — "
                "use a smaller --window or drop the clip", stage="length")
        avg = _ClipAverager(cfg, rel)
        frames = guarded_frames(clip, cfg["frame_timeout"], cfg["clip_timeout"])
        decoded = rendered = 0
        size = None
        stage = "decode"
        t = time.perf_counter()
        for i, frame in enumerate(frames):
            decoded += 1
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise VideoError(f"{src}: frame {i} is {frame.shape}, frame 0 was {size} — "
                                 "the clip changes size; split or re-encode it", stage="decode")
            timing["decode_s"] += time.perf_counter() - t
            stage = "render"
            for key, c, n, seed, blurry, sharp in avg.push(i, frame):
                stage = "encode"
                name = sample_name(key)
                h = n // 2
                params = {
                    "video": rel,
                    "centre": c,
                    "frames": list(range(c - h, c + h + 1)),
                    "window": n,
                    "window_range": list(cfg["window"]),
                    "interpolate": cfg["interpolate"],
                    "virtual_frames": n + (n - 1) * cfg["interpolate"],
                    "response": cfg["response"],
                    "decoder": cfg["decoder"],
                    "stride": cfg["stride"],
                    "fps": clip.fps,
                    "virtual_fps": clip.fps * (cfg["interpolate"] + 1),
                    "flow": FLOW if cfg["interpolate"] else None,
                }
                realism = avg.realism.pop(c, None)
                if realism is not None:
                    params["realism"] = realism
                row = {
                    "key": key, "blur_path": f"blur/{shard}/{name}.png", "sharp_path": f"sharp/{shard}/{name}.png",
                    "split": "train", "group": group, "source": "frames", "width": int(sharp.shape[1]),
                    "height": int(sharp.shape[0]), "seed": seed, "params": json.dumps(params, sort_keys=True),
                }
                rows += writer.submit(row, blurry, sharp)
                rendered += 1
                if on_pair is not None:
                    on_pair(rendered)
                stage = "render"
            stage = "decode"
            t = time.perf_counter()
        stage = "encode"
        rows += writer.drain()
        stage = "length"
        check_length(clip, decoded)
        if decoded < need:
            raise VideoError(f"{src}: {decoded} frames, fewer than the window of {need} — "
                             "use a smaller --window or drop the clip", stage="length")
        for r in rows:  # every pair's frames were decoded and checked: now record the clip's length
            p = json.loads(r["params"])
            p["clip_frames"] = decoded
            r["params"] = json.dumps(p, sort_keys=True)
        timing["average_s"] += avg.timing["average_s"]
        timing["interpolate_s"] += avg.timing["interpolate_s"]
        timing["encode_s"] += writer.seconds
        return rows, [], timing
    except Exception as exc:  # noqa: BLE001 — any per-clip failure is recorded, the run goes on
        if frames is not None:
            frames.close()
        writer.close()
        for r in writer.paths:
            out.delete(r)
        stage = getattr(exc, "stage", stage)
        message = str(exc) if isinstance(exc, VideoError) else f"{src}: {type(exc).__name__}: {exc}"
        return [], [{"input": str(src), "stage": stage, "error": message, "key": key_base}], timing
    finally:
        writer.close()


def _report_within_clip(clips_done: int, pairs_before: int, errors: int, pairs_of_clip: int) -> None:
    report_progress(clips_done, pairs_before + pairs_of_clip, errors)


def frames_worker(task: ShardTask) -> dict:
    """Pure shard worker: every clip of the shard → pairs (images written) or error rows."""
    out = Location(task.out)
    rows: list[dict] = []
    errors: list[dict] = []
    timing = {"decode_s": 0.0, "average_s": 0.0, "interpolate_s": 0.0, "encode_s": 0.0}
    for done, rel in enumerate(task.items, 1):
        # a long clip moves the bar's pair count while it runs, the clip count when it is done
        live = functools.partial(_report_within_clip, done - 1, len(rows), len(errors))
        r, e, t = process_clip(rel, task.config, out, task.shard, on_pair=live)
        rows += r
        errors += e
        for k in timing:
            timing[k] += t[k]
        report_progress(done, len(rows), len(errors))
    return finish_shard(task, rows, errors, {"clips": len(task.items), **{k: round(v, 4) for k, v in timing.items()}})


# ------------------------------------------------------------------------------------ job


def run_frames(
    videos: str | Path,
    out: str | Path,
    seed: int,
    decoder: str = "decord",
    window: int | str | tuple = 7,
    interpolate: int = 0,
    response: str = "srgb",
    stride: int | None = None,
    workers: int = 1,
    shard_size: int = 1,
    key_prefix: str = "frames",
    frame_timeout: float | None = 60.0,
    clip_timeout: float | None = 3600.0,
    progress: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
    retries: int = 2,
    noise: str = "none",
    noise_preset: str = "realblur",
    saturation: bool = False,
    png_level: int | None = None,
    png_compressor: str | None = None,
) -> RunSummary:
    """Plan, run (resuming finished shards) and summarise a frames job.

    ``window``: odd N, or a range "LO:HI" / (LO, HI) of odd N drawn per sample; ``interpolate``:
    K in-betweens per consecutive pair; ``stride``: distance between successive centre frames
    (default: the largest window, so windows do not overlap); ``shard_size``: clips per shard
    (the unit of resume); ``frame_timeout`` / ``clip_timeout``: seconds without a new frame /
    for a whole clip before it is recorded as hanging (None: no limit). ``noise`` (``"rsblur"``:
    the camera pipeline with ``noise_preset``) and ``saturation``: the realism stage on the
    blurry average (``blur.frames_realism``; parameters in the row's ``params["realism"]``);
    ``png_compressor`` and ``png_level``: how the PNG files are compressed (``imageio.png_settings``;
    lossless at every level).
    """
    from blurforge.video import DECODERS, find_videos

    videos, out = Path(videos), Location(out)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos}: not a directory of video clips")
    lo_hi = parse_window(window)
    if decoder not in DECODERS:
        raise ValueError(f"--decoder {decoder!r}: unknown — choose one of {', '.join(DECODERS)}")
    if response not in RESPONSES:
        raise ValueError(f"--response {response!r}: choose one of {', '.join(RESPONSES)}")
    if interpolate < 0:
        raise ValueError(f"--interpolate must be at least 0, got {interpolate}")
    stride = lo_hi[1] if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"--stride must be at least 1, got {stride}")
    realism = _realism_config(noise, noise_preset, saturation)
    check_separate(out, videos, "--videos")
    items = find_videos(videos)
    if not items:
        raise FileNotFoundError(f"--videos {videos}: no video files found (looked for {', '.join(_exts())})")
    config = {
        "job": "frames",
        "videos": str(videos.resolve()),
        "seed": int(seed),
        "decoder": decoder,
        "window": list(lo_hi),
        "interpolate": int(interpolate),
        "response": response,
        "stride": stride,
        "shard_size": shard_size,
        "key_prefix": key_prefix,
        "frame_timeout": frame_timeout,
        "clip_timeout": clip_timeout,
        "manifest_schema": SCHEMA_VERSION,  # keys, seeds and groups of this layout
        "png": png_settings(png_level, png_compressor),
    }
    if realism:  # only when enabled, so runs without it keep their run.json
        config["realism"] = realism
    if interpolate:  # the in-betweens' setting: a resume must not mix two renderings
        config["flow"] = FLOW
    out.makedirs()
    check_run_config(out.uri, config)
    tasks = make_tasks(items, shard_size, out.uri, config)
    return run_shards(frames_worker, tasks, workers=workers, progress=progress, desc="frames",
                      backend=backend, ray_address=ray_address, retries=retries, unit="clip")


def _realism_config(noise: str, noise_preset: str, saturation: bool) -> dict | None:
    from blurforge.blur import check_noise_options

    check_noise_options(noise, noise_preset)
    if noise == "none" and not saturation:
        return None
    return {"noise": noise, "noise_preset": noise_preset if noise != "none" else None, "saturation": bool(saturation)}


def _exts() -> tuple[str, ...]:
    from blurforge.video import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS
