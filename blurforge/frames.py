"""``blurforge frames``: blurry/sharp pairs by averaging video frames (REDS / GoPro style).

For a centre frame ``c`` and an odd window of ``N`` original frames (``h = N // 2``):

1. frames ``c-h … c+h`` are decoded (``blurforge.video``) and taken to linear signal space with
   the inverse camera response (``--response``: ``srgb`` = the exact sRGB EOTF, ``gamma2.2``,
   or ``linear`` = none);
2. optionally ``K`` (``--interpolate``) frames are synthesised between each consecutive pair at
   times ``t = k / (K+1)``: DIS optical flow (OpenCV) in both directions, the flows from time
   ``t`` approximated from them (Jiang et al., Super SloMo, eq. 4:
   ``F_t0 = -(1-t) t F_01 + t² F_10``, ``F_t1 = (1-t)² F_01 - t (1-t) F_10``), both frames
   warped to ``t`` (bilinear ``cv2.remap``, replicated borders) and blended
   ``(1-t) · warp(I_0) + t · warp(I_1)``. No network weights;
3. the ``N + (N-1) K`` virtual frames are averaged in linear space, the response is applied
   again, and the result is the blurry image (8-bit PNG); frame ``c`` as decoded is the sharp
   one (8-bit PNG, bit-exact).

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

import json
import time
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from blurforge.blur import frames_realism
from blurforge.manifest import SCHEMA_VERSION
from blurforge.storage import Location, check_separate
from blurforge.shards import RunSummary, ShardTask, check_run_config, finish_shard, make_tasks, run_shards

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


def make_flow():
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def inbetween_sum(
    a_lin: np.ndarray, b_lin: np.ndarray, a_gray: np.ndarray, b_gray: np.ndarray, k: int, flow=None
) -> np.ndarray:
    """Sum of the ``k`` frames interpolated between ``a`` and ``b`` at ``t = 1/(k+1) … k/(k+1)``.

    ``a_lin, b_lin``: ``H×W×3 float32`` linear; ``a_gray, b_gray``: ``H×W uint8`` (for the flow).
    Returns ``H×W×3 float32`` (a sum, not a mean: windows only need sums, and overlapping
    windows share it).
    """
    flow = flow or make_flow()
    f01 = flow.calc(a_gray, b_gray, None)  # a(y, x) ≈ b(y + f01[..., 1], x + f01[..., 0])
    f10 = flow.calc(b_gray, a_gray, None)
    h, w = a_gray.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    total = np.zeros_like(a_lin)
    for i in range(1, k + 1):
        t = i / (k + 1)
        ft0 = np.float32(-(1 - t) * t) * f01 + np.float32(t * t) * f10
        ft1 = np.float32((1 - t) ** 2) * f01 + np.float32(-t * (1 - t)) * f10
        w0 = cv2.remap(a_lin, gx + ft0[..., 0], gy + ft0[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        w1 = cv2.remap(b_lin, gx + ft1[..., 0], gy + ft1[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        total += np.float32(1 - t) * w0
        total += np.float32(t) * w1
    return total


# ------------------------------------------------------------------------------ one clip


class _ClipAverager:
    """Streams a clip's frames and renders each planned centre once its window is decoded.

    Holds only the frames (and in-between sums) a pending window still needs.
    """

    def __init__(self, cfg: dict, rel: str):
        self.cfg = cfg
        self.rel = rel  # the clip, relative to --videos
        self.window = tuple(cfg["window"])
        self.half = self.window[1] // 2
        self.stride = cfg["stride"]
        self.k = cfg["interpolate"]
        self.lut = inverse_response_lut(cfg["response"])
        self.raw: OrderedDict[int, np.ndarray] = OrderedDict()  # uint8 RGB frames
        self.lin: dict[int, np.ndarray] = {}
        self.gray: dict[int, np.ndarray] = {}
        self.between: dict[int, np.ndarray] = {}  # j -> sum of in-betweens of (j, j+1)
        self.next_centre = self.half
        self.flow = make_flow() if self.k else None
        self.timing = {"average_s": 0.0, "interpolate_s": 0.0}
        self.realism: dict[int, dict | None] = {}  # centre -> realism params (None: no realism stage)

    def push(self, i: int, frame: np.ndarray):
        """Add decoded frame ``i``; yields ``(key, centre, window, seed, blurry_srgb, sharp_uint8)``."""
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
            self.lin[j] = self.lut[self.raw[j]]
        return self.lin[j]

    def _between(self, j: int) -> np.ndarray:
        if j not in self.between:
            t = time.perf_counter()
            for i in (j, j + 1):
                if i not in self.gray:
                    self.gray[i] = cv2.cvtColor(self.raw[i], cv2.COLOR_RGB2GRAY)
            self.between[j] = inbetween_sum(self._lin(j), self._lin(j + 1), self.gray[j], self.gray[j + 1],
                                            self.k, self.flow)
            self.timing["interpolate_s"] += time.perf_counter() - t
        return self.between[j]

    def render(self, c: int):
        key, seed = sample_key_seed(self.cfg, self.rel, c)
        n = window_for(seed, self.window)
        h = n // 2
        t = time.perf_counter()
        acc = self._lin(c - h).copy()
        for j in range(c - h + 1, c + h + 1):
            acc += self._lin(j)
        if self.k:
            self.timing["average_s"] += time.perf_counter() - t
            for j in range(c - h, c + h):
                acc += self._between(j)
            t = time.perf_counter()
        virtual = n + (n - 1) * self.k
        acc *= np.float32(1.0 / virtual)
        window = [self.raw[j] for j in range(c - h, c + h + 1)]
        acc, self.realism[c] = frames_realism(acc, window, self.cfg.get("realism"), seed)  # noise, saturation
        blurry = apply_response(acc, self.cfg["response"])
        self.timing["average_s"] += time.perf_counter() - t
        return key, c, n, seed, blurry, self.raw[c]


def sample_key_seed(cfg: dict, rel: str, centre: int) -> tuple[str, int]:
    """The key and seed of the pair centred on frame ``centre`` of the clip ``rel``."""
    from blurforge.synthesize import sample_key, sample_seed

    return sample_key(cfg["key_prefix"], cfg["seed"], rel, centre), sample_seed(cfg["seed"], "frames", rel, centre)


def _png(frame_uint8_rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``H×W×3 uint8`` RGB frame (identical to ``encode_image(frame / 255)``)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame_uint8_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a frame as PNG")
    return buf.tobytes()


def process_clip(rel: str, cfg: dict, out: Location, shard: str) -> tuple[list[dict], list[dict], dict]:
    """All pairs of one clip, or an error row. Returns ``(rows, errors, timing)``."""
    from blurforge.imageio import encode_image, sha256_bytes
    from blurforge.synthesize import sample_key, sample_name, source_group
    from blurforge.video import VideoError, check_length, guarded_frames, open_video

    src = Path(cfg["videos"]) / rel
    key_base = sample_key(cfg["key_prefix"], cfg["seed"], rel)  # the clip's keys without the centre
    rows: list[dict] = []
    written: list[str] = []
    timing = {"decode_s": 0.0, "average_s": 0.0, "interpolate_s": 0.0, "encode_s": 0.0}
    stage = "open"
    frames = None
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
        decoded = 0
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
                t = time.perf_counter()
                blur_bytes = encode_image(blurry, bit_depth=8, fmt="png")
                sharp_bytes = _png(sharp)
                name = sample_name(key)
                blur_rel, sharp_rel = f"blur/{shard}/{name}.png", f"sharp/{shard}/{name}.png"
                stage = "write"
                for r, data in ((blur_rel, blur_bytes), (sharp_rel, sharp_bytes)):
                    out.write_bytes(r, data)
                    written.append(r)
                timing["encode_s"] += time.perf_counter() - t
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
                rows.append({
                    "key": key, "blur_path": blur_rel, "sharp_path": sharp_rel, "split": "train",
                    "group": group, "source": "frames", "width": int(sharp.shape[1]), "height": int(sharp.shape[0]),
                    "seed": seed, "params": json.dumps(params, sort_keys=True),
                    "blur_sha256": sha256_bytes(blur_bytes), "sharp_sha256": sha256_bytes(sharp_bytes),
                })
                stage = "render"
            stage = "decode"
            t = time.perf_counter()
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
        return rows, [], timing
    except Exception as exc:  # noqa: BLE001 — any per-clip failure is recorded, the run goes on
        if frames is not None:
            frames.close()
        for r in written:
            out.delete(r)
        stage = getattr(exc, "stage", stage)
        message = str(exc) if isinstance(exc, VideoError) else f"{src}: {type(exc).__name__}: {exc}"
        return [], [{"input": str(src), "stage": stage, "error": message, "key": key_base}], timing


def frames_worker(task: ShardTask) -> dict:
    """Pure shard worker: every clip of the shard → pairs (images written) or error rows."""
    out = Location(task.out)
    rows: list[dict] = []
    errors: list[dict] = []
    timing = {"decode_s": 0.0, "average_s": 0.0, "interpolate_s": 0.0, "encode_s": 0.0}
    for rel in task.items:
        r, e, t = process_clip(rel, task.config, out, task.shard)
        rows += r
        errors += e
        for k in timing:
            timing[k] += t[k]
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
) -> RunSummary:
    """Plan, run (resuming finished shards) and summarise a frames job.

    ``window``: odd N, or a range "LO:HI" / (LO, HI) of odd N drawn per sample; ``interpolate``:
    K in-betweens per consecutive pair; ``stride``: distance between successive centre frames
    (default: the largest window, so windows do not overlap); ``shard_size``: clips per shard
    (the unit of resume); ``frame_timeout`` / ``clip_timeout``: seconds without a new frame /
    for a whole clip before it is recorded as hanging (None: no limit). ``noise`` (``"rsblur"``:
    the camera pipeline with ``noise_preset``) and ``saturation``: the realism stage on the
    blurry average (``blur.frames_realism``; parameters in the row's ``params["realism"]``).
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
    }
    if realism:  # only when enabled, so runs without it keep their run.json
        config["realism"] = realism
    out.makedirs()
    check_run_config(out.uri, config)
    tasks = make_tasks(items, shard_size, out.uri, config)
    return run_shards(frames_worker, tasks, workers=workers, progress=progress, desc="frames",
                      backend=backend, ray_address=ray_address, retries=retries)


def _realism_config(noise: str, noise_preset: str, saturation: bool) -> dict | None:
    from blurforge.blur import check_noise_options

    check_noise_options(noise, noise_preset)
    if noise == "none" and not saturation:
        return None
    return {"noise": noise, "noise_preset": noise_preset if noise != "none" else None, "saturation": bool(saturation)}


def _exts() -> tuple[str, ...]:
    from blurforge.video import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS
