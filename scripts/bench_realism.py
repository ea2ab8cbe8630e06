"""Benchmark the realism stage's noise per image: RSBlur's camera pipeline vs the old per-pixel noise.

    python scripts/bench_realism.py                   # 1280×720, 10 repeats, one core
    python scripts/bench_realism.py --repeats 20 --width 1920 --height 1080

On one 1280×720 linear image (scikit-image's astronaut, resized), with ``cv2.setNumThreads(1)``
(NumPy's ufuncs and generators are single-threaded), it times ``blur.apply_realism`` with

- ``camera realblur`` / ``camera rsblur``: the camera pipeline (``blurforge.camera``) with each
  preset — colour matrix, mosaic, Poisson–Gaussian noise on the mosaic, white balance, Malvar
  demosaic, back to linear sRGB;
- ``legacy per-pixel`` (the baseline): the model rows written before the camera pipeline use —
  Poisson–Gaussian noise on every pixel and channel of the linear RGB image;

and prints the median / min seconds per image and the ratio baseline / row (> 1: faster than the
baseline). Step timings of the camera pipeline follow (one repeat each, median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import cv2
    from skimage import data

    from blurforge import camera
    from blurforge.blur import apply_realism, sample_realism, srgb_to_linear

    cv2.setNumThreads(1)
    img = cv2.resize(data.astronaut(), (args.width, args.height), interpolation=cv2.INTER_AREA)
    lin = srgb_to_linear(img.astype(np.float32) / 255)
    delta = np.ones((1, 1), np.float32)
    rows = {
        "legacy per-pixel (baseline)": {"saturation_a": None, "noise": "rsblur", "noise_k": 8.8915e-05,
                                        "noise_s_var": 2.9430e-05, "jpeg_quality": None},
        "camera realblur": sample_realism(np.random.default_rng(0), noise="rsblur", noise_preset="realblur"),
        "camera rsblur": sample_realism(np.random.default_rng(0), noise="rsblur", noise_preset="rsblur"),
    }
    times = {}
    for name, params in rows.items():
        apply_realism(lin, lin, delta, params, np.random.default_rng(1))  # warm-up
        t = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            apply_realism(lin, lin, delta, params, np.random.default_rng(r))
            t.append(time.perf_counter() - t0)
        times[name] = t
    base = statistics.median(times["legacy per-pixel (baseline)"])
    print(f"realism noise per {args.width}x{args.height} image, one core, {args.repeats} repeats")
    print(f"{'row':30s} {'median s':>9s} {'min s':>8s} {'baseline/row':>13s}")
    for name, t in times.items():
        print(f"{name:30s} {statistics.median(t):9.4f} {min(t):8.4f} {base / statistics.median(t):13.2f}")

    # where the camera pipeline's time goes
    p = rows["camera realblur"]
    to_cam, from_cam = camera.CAMERAS[p["camera"]]
    gains = (p["wb_red_gain"], 1.0, p["wb_blue_gain"])
    steps: dict[str, list[float]] = {}

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for r in range(args.repeats):
        rng = np.random.default_rng(r)
        cam = step("to camera + clip", lambda: np.clip(camera._apply_matrix(lin, to_cam), 0, 1))
        raw = step("mosaic + inverse WB", lambda: camera.mosaic(cam, p["bayer"], tuple(1 / g for g in gains)))
        raw = step("poisson + gaussian", lambda: camera.poisson_gaussian(raw, p["noise_k"], p["noise_sigma"], rng))
        step("white balance", lambda: camera.scale_sites(raw, p["bayer"], gains))
        rgb = step("demosaic (Malvar) + clip", lambda: np.clip(camera.demosaic_malvar(raw, p["bayer"]), 0, 1))
        step("from camera + clip", lambda: np.clip(camera._apply_matrix(rgb, from_cam), 0, 1))
    print(f"\n{'camera realblur step':30s} {'median s':>9s}")
    for name, t in steps.items():
        print(f"{name:30s} {statistics.median(t):9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
