"""Benchmark ``blurforge frames`` against the raw decode rate of the same clip, per decoder.

    python scripts/bench_frames.py                       # 1280×720, 48 frames, FFV1 .mkv
    python scripts/bench_frames.py --frames 96 --fourcc MJPG --ext avi

A synthetic clip (scikit-image's astronaut, mirrored into a wide strip, panning 6 px/frame) is
written to a temp folder. For each decoder it times, in this one run:

- decode:    iterating every frame (``H×W×3 uint8`` RGB) — the limit the job can approach;
- average:   decode + the averaging of ``_ClipAverager`` (no PNG), window 7, stride 1;
- job rows:  ``run_frames`` end to end (decode, average, 2 PNG encodes + SHA-256 + atomic
             writes per pair, the shard tables), one process, for a few settings.

``frames/s`` is the rate at which the job consumes source frames (pairs/s × stride, or
decoded frames/s for decode alone); ``ratio`` = frames/s ÷ the decode rate (1.0: as fast as
decoding). Best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def best(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--fourcc", default="FFV1")
    parser.add_argument("--ext", default="mkv")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decoders", default="decord,av")
    args = parser.parse_args(argv)

    import cv2

    from blurforge.frames import _ClipAverager, parse_window, run_frames
    from blurforge.video import open_video

    settings = [  # (label, window, interpolate, stride)
        ("job K=0 N=7 stride 1", 7, 0, 1),
        ("job K=0 N=7 stride 7 (GoPro)", 7, 0, 7),
        ("job K=15 N=5 stride 5 (REDS)", 5, 15, 5),
    ]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = tmp / "videos"
        videos.mkdir()
        clip_path = videos / f"clip.{args.ext}"
        write_clip(clip_path, args.width, args.height, args.frames, args.fourcc)
        for decoder in args.decoders.split(","):
            def decode():
                with open_video(clip_path, decoder) as clip:
                    return sum(1 for _ in clip)

            t, n = best(decode, args.repeats)
            rate = n / t
            table.append((decoder, "decode only", n, rate, rate))

            def average():
                cfg = {"window": list(parse_window(7)), "stride": 1, "interpolate": 0, "response": "srgb", "seed": 0}
                avg = _ClipAverager(cfg, "bench")
                with open_video(clip_path, decoder) as clip:
                    return sum(1 for i, f in enumerate(clip) for _ in avg.push(i, f))

            t, pairs = best(average, args.repeats)
            table.append((decoder, "decode + average N=7 stride 1", pairs, pairs / t, pairs / t))
            for label, window, k, stride in settings:
                runs = iter(range(args.repeats))

                def job():
                    out = tmp / f"out-{decoder}-{label.split()[1]}-{stride}-{next(runs)}"
                    s = run_frames(videos, out, seed=0, decoder=decoder, window=window, interpolate=k,
                                   stride=stride, progress=False)
                    assert s.errors == 0 and not s.failed, s
                    return s.pairs

                t, pairs = best(job, args.repeats)
                table.append((decoder, label, pairs, pairs / t, pairs * stride / t))

    print(f"{args.width}x{args.height}, {args.frames} frames, {args.fourcc} .{args.ext}, one process, "
          f"cv2 threads {cv2.getNumThreads()}, best of {args.repeats}")
    print(f"| {'decoder':<7} | {'what':<30} | {'pairs':>5} | {'pairs/s':>8} | {'frames/s':>8} | {'ratio':>5} |")
    print(f"|{'-' * 9}|{'-' * 32}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 7}|")
    decode_rate = {}
    for decoder, what, pairs, pair_rate, frame_rate in table:
        if what == "decode only":
            decode_rate[decoder] = frame_rate
            shown = f"{'-':>5} | {'-':>8}"
        else:
            shown = f"{pairs:>5} | {pair_rate:>8.1f}"
        print(f"| {decoder:<7} | {what:<30} | {shown} | {frame_rate:>8.1f} | {frame_rate / decode_rate[decoder]:>5.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
