"""Benchmark ``blurforge frames`` against the raw decode rate, before/after, and the flow accuracy.

    python scripts/bench_frames.py --baseline /path/to/old/checkout     # before/after in one run
    python scripts/bench_frames.py --frames 96 --fourcc MJPG --ext avi --decoders decord
    python scripts/bench_frames.py --accuracy                            # flow settings vs ground truth

Speed: a synthetic clip (scikit-image's astronaut, mirrored into a wide strip, panning 6 px/frame,
1280×720, FFV1 .mkv by default) is written to a temp folder. For each code version (this checkout,
and with ``--baseline DIR`` the blurforge in DIR, run in a subprocess with ``PYTHONPATH=DIR``,
alternating the versions ``--repeats`` times and keeping each one's best) and each decoder:

- decode:   iterating every frame (``H×W×3 uint8`` RGB) — the limit a job can approach;
- job rows: ``run_frames`` end to end (decode, average, interpolate, 2 PNG encodes + SHA-256 +
            atomic writes per pair, the shard tables), one process, for GoPro-like stride 1 and
            stride 7 windows and REDS-like interpolation.

``frames/s`` is the rate at which the job consumes source frames (pairs/s × stride); ``ratio`` =
frames/s ÷ the decode rate, both wall time in one process with OpenCV's default threads (1.0: as
fast as decoding). ``cpu ms/pair`` is the process's CPU time (all threads) per pair: the cost per
core that the README's core-hour estimate uses. A one-worker warm-up run precedes the timings.

Accuracy (``--accuracy``): textured scenes — two pans, a rotation with zoom, a disc crossing a
panning background (occlusions) — are rendered in linear light at 16× the frame rate; 5 frames
(8-bit sRGB, as decoded) go through the flow interpolation with 15 in-betweens per pair for each
setting, and the 65-frame average is compared with the true dense average of the 65 rendered
frames (PSNR of the 8-bit results over the interior; 8-bit rounding alone gives about 58.9 dB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SETTINGS = [  # (label, window, interpolate, stride)
    ("GoPro-like N=7 stride 1", 7, 0, 1),
    ("GoPro-like N=7 stride 7", 7, 0, 7),
    ("REDS-like N=5 K=15 stride 5", 5, 15, 5),
]


def write_clip(path: Path, width: int, height: int, frames: int, fourcc: str, speed: int = 6) -> None:
    import cv2
    from skimage import data

    img = data.astronaut()
    scale = height / img.shape[0]
    img = cv2.resize(img, (round(img.shape[1] * scale), height), interpolation=cv2.INTER_CUBIC)
    strip = np.concatenate([img, img[:, ::-1]] * (1 + (width + speed * frames) // (2 * img.shape[1])), axis=1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {fourcc} here — try --fourcc FFV1 --ext mkv")
    for i in range(frames):
        writer.write(np.ascontiguousarray(strip[:, speed * i : speed * i + width, ::-1]))
    writer.release()


# --------------------------------------------------------------------------------------- speed


def measure(videos: Path, out_root: Path, decoders: list[str]) -> dict:
    """One timing pass of the blurforge importable here (runs in a subprocess per version)."""
    from blurforge.frames import run_frames
    from blurforge.video import open_video

    clip_path = next(videos.iterdir())
    results = {}
    run_frames(videos, out_root / "warm-up", seed=0, window=3, stride=9, progress=False)  # imports, caches
    for decoder in decoders:
        t = time.perf_counter()
        with open_video(clip_path, decoder) as clip:
            n = sum(1 for _ in clip)
        results[f"{decoder}|decode"] = {"frames": n, "wall": time.perf_counter() - t}
        for label, window, k, stride in SETTINGS:
            out = out_root / f"{decoder}-{window}-{k}-{stride}"
            c, t = time.process_time(), time.perf_counter()
            s = run_frames(videos, out, seed=0, decoder=decoder, window=window, interpolate=k, stride=stride,
                           progress=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if s.errors or s.failed or not s.pairs:
                raise SystemExit(f"frames job {label} failed: {s}")
            results[f"{decoder}|{label}"] = {"pairs": s.pairs, "stride": stride, "wall": wall, "cpu": cpu}
    return results


def run_version(root: Path, videos: Path, out_root: Path, decoders: list[str]) -> dict:
    """``measure`` in a fresh interpreter that imports blurforge from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench_frames as b; from pathlib import Path; "
            "print('RESULT ' + json.dumps(b.measure(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(','))))")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(videos), str(out_root),
                           ",".join(decoders)], env=env, cwd=out_root, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"measuring {root} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def speed(args: argparse.Namespace) -> None:
    import cv2

    versions = {"after": REPO}
    if args.baseline:
        versions = {"before": Path(args.baseline).resolve(), "after": REPO}
    decoders = args.decoders.split(",")
    best: dict[str, dict] = {v: {} for v in versions}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = tmp / "videos"
        videos.mkdir()
        write_clip(videos / f"clip.{args.ext}", args.width, args.height, args.frames, args.fourcc)
        load = os.getloadavg()[0]
        for rep in range(args.repeats):
            for name, root in versions.items():
                out_root = tmp / f"{name}-{rep}"
                out_root.mkdir()
                for key, r in run_version(root, videos, out_root, decoders).items():
                    old = best[name].get(key)
                    if old is None or r["wall"] < old["wall"]:
                        best[name][key] = {**r, "cpu": min(r.get("cpu", 0), old["cpu"]) if old and "cpu" in r else r.get("cpu")}
        load = (load, os.getloadavg()[0])

    print(f"{args.width}x{args.height}, {args.frames} frames, {args.fourcc} .{args.ext}, one process, cv2 threads "
          f"{cv2.getNumThreads()}, best of {args.repeats}; {os.cpu_count()} CPUs, load average {load[0]:.1f} -> {load[1]:.1f}")
    print(f"| {'version':<7} | {'decoder':<7} | {'what':<28} | {'pairs':>5} | {'pairs/s':>7} | {'frames/s':>8} | "
          f"{'ratio':>5} | {'cpu ms/pair':>11} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 30}|{'-' * 7}|{'-' * 9}|{'-' * 10}|{'-' * 7}|{'-' * 13}|")
    for name in versions:
        for decoder in decoders:
            dec = best[name][f"{decoder}|decode"]
            decode_rate = dec["frames"] / dec["wall"]
            print(f"| {name:<7} | {decoder:<7} | {'decode only':<28} | {'-':>5} | {'-':>7} | {decode_rate:>8.1f} | "
                  f"{1.0:>5.2f} | {'-':>11} |")
            for label, *_ in SETTINGS:
                r = best[name][f"{decoder}|{label}"]
                rate = r["pairs"] / r["wall"]
                print(f"| {name:<7} | {decoder:<7} | {label:<28} | {r['pairs']:>5} | {rate:>7.2f} | "
                      f"{rate * r['stride']:>8.1f} | {rate * r['stride'] / decode_rate:>5.2f} | "
                      f"{1e3 * r['cpu'] / r['pairs']:>11.0f} |")
    if "before" in versions:
        print("\nspeed-up (after / before): wall pairs/s, and cpu per pair")
        for decoder in decoders:
            for label, *_ in SETTINGS:
                a, b = best["after"][f"{decoder}|{label}"], best["before"][f"{decoder}|{label}"]
                print(f"  {decoder:<7} {label:<28} wall x{(a['pairs'] / a['wall']) / (b['pairs'] / b['wall']):.2f}   "
                      f"cpu x{(b['cpu'] / b['pairs']) / (a['cpu'] / a['pairs']):.2f}")
    for decoder in decoders:
        r = best["after"][f"{decoder}|{SETTINGS[2][0]}"]
        print(f"REDS-like per-core rate ({decoder}, after): {r['pairs'] / r['cpu']:.2f} pairs per CPU-second "
              f"-> 200,000 pairs ≈ {200_000 * r['cpu'] / r['pairs'] / 3600:.1f} core-hours")


# ------------------------------------------------------------------------------------ accuracy

SCENES = {  # name: (background velocity px/frame (x, y), rotation deg/frame, zoom/frame, moving disc)
    "pan": ((7.3, 2.6), 0.0, 0.0, None),
    "fast pan": ((19.4, -6.1), 0.0, 0.0, None),
    "rotate + zoom": ((1.5, 0.5), 0.6, 0.01, None),
    "occlusion": ((3.1, 0.7), 0.0, 0.0, ((-16.2, 5.3), 1.0)),
}


class Scene:
    """A linear-light scene rendered at any time ``tau`` (in original-frame units)."""

    def __init__(self, name: str, width: int, height: int):
        import cv2
        from skimage import data

        from blurforge.blur import srgb_to_linear

        def texture(photo: str, w: int, h: int) -> np.ndarray:
            img = getattr(data, photo)()[..., :3]
            return srgb_to_linear(cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC) / np.float32(255))

        self.w, self.h = width, height
        self.velocity, self.rotation, self.zoom, self.disc = SCENES[name]
        bw, bh = width + 800, height + 500
        self.background = np.ascontiguousarray(
            np.concatenate([texture("astronaut", bw // 2, bh), texture("chelsea", bw - bw // 2, bh)], axis=1))
        if self.disc:
            self.r = r = min(170, height // 4)
            self.disc_texture = texture("coffee", 2 * r, 2 * r)
            yy, xx = np.mgrid[: 2 * r, : 2 * r] + 0.5
            self.disc_alpha = np.clip(r - 4 - np.hypot(xx - r, yy - r) + 0.5, 0, 1).astype(np.float32)

    def render(self, tau: float) -> np.ndarray:
        import cv2

        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        (vx, vy), cx, cy = self.velocity, self.w / 2 + 100, self.h / 2 - 50
        a = np.deg2rad(self.rotation * tau)
        z = 1.0 / (1 + self.zoom) ** tau
        c, s = np.cos(a) * z, np.sin(a) * z
        m = np.array([[c, -s, cx - c * cx + s * cy + 400 - vx * tau], [s, c, cy - s * cx - c * cy + 250 - vy * tau]])
        out = cv2.warpAffine(self.background, m, (self.w, self.h), flags=flags, borderMode=cv2.BORDER_REFLECT)
        if self.disc:
            (fx, fy), spin = self.disc
            px, py = self.w * 0.6 + fx * (tau - 2), self.h * 0.45 + fy * (tau - 2)
            a = np.deg2rad(spin * tau)
            c, s = np.cos(a), np.sin(a)
            m = np.array([[c, -s, self.r - c * px + s * py], [s, c, self.r - s * px - c * py]])
            fg = cv2.warpAffine(self.disc_texture, m, (self.w, self.h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
            alpha = cv2.warpAffine(self.disc_alpha, m, (self.w, self.h), flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT)[..., None]
            out = out * (1 - alpha) + fg * alpha
        return out.astype(np.float32)


def to_codes(x_lin: np.ndarray) -> np.ndarray:
    from blurforge.blur import linear_to_srgb

    return np.rint(linear_to_srgb(x_lin) * np.float32(255)).astype(np.uint8)


def interpolated_average(frames: list[np.ndarray], k: int, preset: str, scale: float, blend: str) -> tuple:
    """The 8-bit blurry image of ``frames`` (uint8 RGB) with ``k`` in-betweens per pair, and the
    CPU seconds spent on flow + in-betweens."""
    import cv2

    from blurforge.frames import inbetween_sum, inverse_response_lut, make_flow, pair_flows

    lut = inverse_response_lut("srgb")
    lin = [cv2.LUT(cv2.cvtColor(f, cv2.COLOR_RGB2RGBA), lut) for f in frames]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    acc = sum(x[..., :3].astype(np.float64) for x in lin)
    flow, cpu = make_flow(preset), 0.0
    for j in range(len(frames) - 1):
        t = time.process_time()
        f01, f10 = pair_flows(gray[j], gray[j + 1], flow, scale)
        acc += inbetween_sum(lin[j], lin[j + 1], f01, f10, k, blend)[..., :3]
        cpu += time.process_time() - t
    return to_codes((acc / (len(frames) + (len(frames) - 1) * k)).astype(np.float32)), cpu


def psnr(a: np.ndarray, b: np.ndarray, crop: int = 32) -> float:
    d = (a.astype(np.float64) - b)[crop:-crop, crop:-crop]
    return float(10 * np.log10(255**2 / max(np.mean(d**2), 1e-12)))


def accuracy(args: argparse.Namespace) -> None:
    import cv2

    from blurforge.frames import BLEND, FLOW_PRESET, FLOW_SCALE, inverse_response_lut

    cv2.setNumThreads(1)
    k, n = 15, 5
    taus = np.arange((n - 1) * (k + 1) + 1) / (k + 1)
    cases = {}
    for name in SCENES:
        scene = Scene(name, args.width, args.height)
        truth = to_codes((sum(scene.render(t).astype(np.float64) for t in taus) / len(taus)).astype(np.float32))
        cases[name] = ([to_codes(scene.render(i)) for i in range(n)], truth)
    grid = [("medium", 1.0, "both")] + [(p, s, b) for b in ("both", "nearer") for p, s in
                                          (("medium", 0.5), ("fast", 1.0), ("fast", 0.5), ("fast", 0.25),
                                           ("ultrafast", 0.5))]
    print(f"PSNR (dB) of the 65-frame average against the dense ground truth, {args.width}x{args.height}, "
          f"5 frames + 4x{k} in-betweens; CPU seconds per window (flow + in-betweens), one thread")
    print(f"| {'setting':<32} | " + " | ".join(f"{s:>13}" for s in SCENES) + " | cpu s |")
    print(f"|{'-' * 34}|" + "|".join("-" * 15 for _ in SCENES) + "|-------|")
    lut = inverse_response_lut("srgb")
    plain = [psnr(to_codes((sum(cv2.LUT(f, lut).astype(np.float64) for f in frames) / n).astype(np.float32)), truth)
             for frames, truth in cases.values()]
    print(f"| {'no in-betweens':<32} | " + " | ".join(f"{v:>13.2f}" for v in plain) + " |     - |")
    for preset, scale, blend in grid:
        values, cpu = [], 0.0
        for frames, truth in cases.values():
            out, c = interpolated_average(frames, k, preset, scale, blend)
            values.append(psnr(out, truth))
            cpu += c
        mark = " (previous)" if (preset, scale, blend) == ("medium", 1.0, "both") else ""
        mark = " (default)" if (preset, scale, blend) == (FLOW_PRESET, FLOW_SCALE, BLEND) else mark
        label = f"DIS-{preset}@{scale:g} {blend}{mark}"
        print(f"| {label:<32} | " + " | ".join(f"{v:>13.2f}" for v in values) + f" | {cpu / len(cases):>5.2f} |",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=36, help="frames of the synthetic clip")
    parser.add_argument("--fourcc", default="FFV1")
    parser.add_argument("--ext", default="mkv")
    parser.add_argument("--repeats", type=int, default=1, help="alternating timing passes per version (best kept)")
    parser.add_argument("--decoders", default="decord,av")
    parser.add_argument("--baseline", metavar="DIR", help="a checkout of the code to compare against (before)")
    parser.add_argument("--accuracy", action="store_true", help="only the flow-settings accuracy table")
    args = parser.parse_args(argv)
    if args.accuracy:
        sys.path.insert(0, str(REPO))
        accuracy(args)
    else:
        speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
