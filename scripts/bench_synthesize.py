"""Benchmark one uniform-blur pair as the synthesize worker makes it: decode → blur → encode.

    python scripts/bench_synthesize.py                     # 20 pairs, 1280×720, 63×63 kernels
    python scripts/bench_synthesize.py --pairs 5 --repeats 5 --kernel-size 31

A sharp 1280×720 photo (scikit-image's astronaut, resized and cropped) is written as PNG to a
temp folder. For each pair (its own random-walk kernel) it times:

- decode: ``read_image_pixels`` of the PNG (8-bit codes, as the worker reads photos);
- blur:   ``render_uniform`` without realism (codes → linear, convolve, → exact 8-bit codes), against
  the float path it replaced (float sRGB in, the float sRGB curve out, rounded as the writer did);
- encode: ``encode_image`` PNG of the blurry and the sharp image + their SHA-256 with ISA-L (the
  default compressor), against libdeflate level 1 (the previous default) and OpenCV's PNG writer
  at its default (what blurforge used before that) on the same images;

and prints the median/min per stage and pairs/s (one process). Baseline in the same run:
``cv2.filter2D`` (flipped kernel, BORDER_REFLECT) on the same float32 linear data with the
same kernel; ratio = filter2D time / ours, > 1 means ours is faster. It is given for the blur
step including linearisation, for the convolution alone, and for a dense 63×63 kernel (all
taps non-zero: the worst case, nothing to crop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_walk_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    """A camera-shake-like PSF: a smoothed random walk splatted into ``size×size``, sums to 1."""
    steps = int(rng.integers(size // 2, 3 * size))
    velocity = np.cumsum(rng.normal(size=(steps, 2)), axis=0)
    velocity /= np.abs(velocity).max() + 1e-9
    path = np.cumsum(velocity, axis=0)
    path -= path.mean(axis=0)
    reach = float(rng.uniform(0.2, 0.45)) * size
    path *= reach / (np.abs(path).max() + 1e-9)
    k = np.zeros((size, size), np.float64)
    ij = np.clip(np.rint(path + size // 2).astype(int), 0, size - 1)
    np.add.at(k, (ij[:, 0], ij[:, 1]), 1.0)
    return (k / k.sum()).astype(np.float32)


def dense_kernel(size: int) -> np.ndarray:
    """A wide anisotropic Gaussian with every tap non-zero (worst case for support cropping)."""
    y, x = np.mgrid[: size, : size] - size // 2
    k = np.exp(-(x**2) / (2 * (size / 3) ** 2) - (y**2) / (2 * (size / 5) ** 2)) + 1e-6
    return (k / k.sum()).astype(np.float32)


def sharp_photo(width: int, height: int) -> np.ndarray:
    import cv2
    from skimage import data

    img = data.astronaut()  # 512×512 RGB uint8
    scale = max(width / img.shape[1], height / img.shape[0])
    img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
    return np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width])


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--pairs", type=int, default=20, help="pairs to render (each its own kernel)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--kernel-size", type=int, default=63)
    parser.add_argument("--repeats", type=int, default=3, help="timings per stage per pair (median and min kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import cv2

    from blurforge.blur import convolve, render_uniform, srgb_to_linear
    from blurforge.imageio import encode_image, quantise, read_image_pixels, sha256_bytes

    rng = np.random.default_rng(args.seed)
    stages: dict[str, list[float]] = {
        "decode (read_image_pixels)": [],
        "blur (render_uniform)": [],
        "  of which convolve": [],
        "  baseline float sRGB, rounded": [],
        "encode (2 PNG + sha256)": [],
        "  libdeflate level 1": [],
        "  baseline cv2.imencode PNG": [],
        "baseline cv2.filter2D": [],
        "dense kernel: render_uniform": [],
        "dense kernel: cv2.filter2D": [],
    }
    dense = dense_kernel(args.kernel_size)
    dense_flipped = np.ascontiguousarray(dense[::-1, ::-1])
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "sharp.png"
        src.write_bytes(encode_image(sharp_photo(args.width, args.height).astype(np.float32) / 255))
        t_start = time.perf_counter()
        for _ in range(args.pairs):
            k = random_walk_kernel(rng, args.kernel_size)
            k_flipped = np.ascontiguousarray(k[::-1, ::-1])
            t, (sharp, _info) = timed(lambda: read_image_pixels(src), args.repeats)
            stages["decode (read_image_pixels)"] += t
            sharp_float = np.divide(sharp, np.float32(255), dtype=np.float32)
            sharp_lin = srgb_to_linear(sharp)
            for _ in range(args.repeats):  # interleaved, so both see the same machine state
                t, blurry = timed(lambda: render_uniform(sharp, k, None, rng, codes=True), 1)
                stages["blur (render_uniform)"] += t
                stages["  of which convolve"] += timed(lambda: convolve(sharp_lin, k), 1)[0]
                stages["  baseline float sRGB, rounded"] += timed(
                    lambda: quantise(render_uniform(sharp_float, k, None, rng), 8), 1)[0]
                stages["baseline cv2.filter2D"] += timed(
                    lambda: cv2.filter2D(sharp_lin, -1, k_flipped, borderType=cv2.BORDER_REFLECT), 1
                )[0]
            stages["encode (2 PNG + sha256)"] += timed(
                lambda: [sha256_bytes(encode_image(im)) for im in (blurry, sharp)], args.repeats
            )[0]
            stages["  libdeflate level 1"] += timed(
                lambda: [sha256_bytes(encode_image(im, png_compressor="libdeflate")) for im in (blurry, sharp)],
                args.repeats)[0]
            stages["  baseline cv2.imencode PNG"] += timed(  # OpenCV's writer at its default, as before
                lambda: [sha256_bytes(cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes())
                    for im in (blurry, sharp)], args.repeats)[0]
        elapsed = time.perf_counter() - t_start
        for _ in range(max(3, args.repeats)):
            stages["dense kernel: render_uniform"] += timed(lambda: render_uniform(sharp, dense, None, rng), 1)[0]
            stages["dense kernel: cv2.filter2D"] += timed(
                lambda: cv2.filter2D(sharp_lin, -1, dense_flipped, borderType=cv2.BORDER_REFLECT), 1
            )[0]

    med = {name: statistics.median(v) * 1e3 for name, v in stages.items()}
    low = {name: min(v) * 1e3 for name, v in stages.items()}
    print(f"{args.pairs} pairs, {args.width}x{args.height}, {args.kernel_size}x{args.kernel_size} kernels, "
          f"{args.repeats} repeats, cv2 threads {cv2.getNumThreads()}")
    print(f"| {'stage':<30} | {'median ms':>9} | {'min ms':>7} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|")
    for name in stages:
        print(f"| {name:<30} | {med[name]:>9.1f} | {low[name]:>7.1f} |")
    per_pair = med["decode (read_image_pixels)"] + med["blur (render_uniform)"] + med["encode (2 PNG + sha256)"]
    print(f"| {'total per pair':<30} | {per_pair:>9.1f} | {'':>7} |")
    print()
    base = med["baseline cv2.filter2D"]
    print(f"pairs/s (decode+blur+encode, medians): {1e3 / per_pair:.1f}")
    print(f"ratio cv2.imencode PNG / our PNG writer:    "
          f"{med['  baseline cv2.imencode PNG'] / med['encode (2 PNG + sha256)']:.2f}  (> 1: ours faster)")
    print(f"ratio libdeflate level 1 / ISA-L level 1:   "
          f"{med['  libdeflate level 1'] / med['encode (2 PNG + sha256)']:.2f}")
    print(f"ratio float sRGB path / exact codes path:   "
          f"{med['  baseline float sRGB, rounded'] / med['blur (render_uniform)']:.2f}")
    print(f"ratio filter2D / blur incl. linearisation: {base / med['blur (render_uniform)']:.2f}  (> 1: ours faster)")
    print(f"ratio filter2D / convolve alone:           {base / med['  of which convolve']:.2f}")
    print(f"ratio filter2D / blur, dense kernel:       "
          f"{med['dense kernel: cv2.filter2D'] / med['dense kernel: render_uniform']:.2f}")
    print(f"wall time of the pair loop (all repeats and baselines): {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
