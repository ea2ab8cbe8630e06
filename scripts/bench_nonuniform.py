"""Benchmark object-wise (non-uniform) pairs as the synthesize worker makes them, on one core.

    python scripts/bench_nonuniform.py                      # 4 photos × 3 pairs, 640×480, 63×63 kernels
    python scripts/bench_nonuniform.py --width 1280 --height 720 --pairs-per-image 2

Sharp images: scikit-image's astronaut, coffee, chelsea and rocket, resized and cropped to
``--width × --height``. Kernels: a Boracchi–Foi bank (``blurforge.kernels.generate_bank``, 63×63,
lengths in [1, 1000] as in the paper). Per image it times

- segment: ``ClassicalSegmenter(max_objects=6).segment`` (once per image, as in synthesize);

and per pair (background kernel + one kernel per object, drawn from the bank):

- render: ``render_nonuniform`` without realism (sRGB → linear, layers, → sRGB);
- encode: PNG of the blurry and the sharp image + their SHA-256;
- baseline: ``render_uniform`` of the same image with the background kernel (same run).

It prints median/min per stage, seconds per pair (segment amortised over the image's pairs) and
the ratio render / baseline (how many uniform blurs one non-uniform pair costs). OpenCV runs on
``--threads`` threads (1: as in a synthesize worker process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sharp_photo(name: str, width: int, height: int) -> np.ndarray:
    """A bundled photograph as ``H×W×3`` float sRGB in [0, 1], resized to cover and centre-cropped."""
    import cv2
    from skimage import data

    img = getattr(data, name)()[..., :3]
    scale = max(width / img.shape[1], height / img.shape[0])
    img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    y0, x0 = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
    return np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width]).astype(np.float32) / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--pairs-per-image", type=int, default=3)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--kernels", type=int, default=32, help="size of the generated kernel bank")
    parser.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (1: one synthesize worker)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import cv2

    from blurforge.blur import render_uniform
    from blurforge.imageio import encode_image, sha256_bytes
    from blurforge.kernels import generate_bank
    from blurforge.nonuniform import render_nonuniform
    from blurforge.segment import ClassicalSegmenter

    cv2.setNumThreads(args.threads)
    bank = generate_bank(count=args.kernels, seed=args.seed, size=63, progress=False)
    kernels = [np.asarray(k, np.float32).reshape(63, 63) for k in bank.column("kernel").to_pylist()]
    rng = np.random.default_rng(args.seed)
    segmenter = ClassicalSegmenter(max_objects=args.max_objects)
    stages: dict[str, list[float]] = {"segment (per image)": [], "render_nonuniform": [], "encode (2 PNG + sha256)": [],
                                      "baseline render_uniform": []}
    n_objects = []
    t_start = time.perf_counter()
    for name in PHOTOS:
        sharp = sharp_photo(name, args.width, args.height)
        t = time.perf_counter()
        masks = segmenter.segment(sharp)
        stages["segment (per image)"].append(time.perf_counter() - t)
        n_objects.append(len(masks))
        for _ in range(args.pairs_per_image):
            picks = rng.integers(len(kernels), size=len(masks) + 1)
            bg, objs = kernels[picks[0]], [kernels[i] for i in picks[1:]]
            t = time.perf_counter()
            blurry = render_nonuniform(sharp, bg, masks, objs, None, rng)
            stages["render_nonuniform"].append(time.perf_counter() - t)
            t = time.perf_counter()
            render_uniform(sharp, bg, None, rng)
            stages["baseline render_uniform"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for im in (blurry, sharp):
                sha256_bytes(encode_image(im))
            stages["encode (2 PNG + sha256)"].append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t_start

    med = {k: statistics.median(v) * 1e3 for k, v in stages.items()}
    low = {k: min(v) * 1e3 for k, v in stages.items()}
    print(f"{len(PHOTOS)} images × {args.pairs_per_image} pairs, {args.width}x{args.height}, 63x63 kernels, "
          f"objects per image {n_objects}, cv2 threads {cv2.getNumThreads()}")
    print(f"| {'stage':<26} | {'median ms':>9} | {'min ms':>7} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 9}|")
    for k in stages:
        print(f"| {k:<26} | {med[k]:>9.1f} | {low[k]:>7.1f} |")
    per_pair = (med["segment (per image)"] / args.pairs_per_image + med["render_nonuniform"]
                + med["encode (2 PNG + sha256)"])
    per_pair_1 = med["segment (per image)"] + med["render_nonuniform"] + med["encode (2 PNG + sha256)"]
    print()
    print(f"s/pair (segment amortised over {args.pairs_per_image} pairs): {per_pair / 1e3:.3f}")
    print(f"s/pair (one pair per image):                  {per_pair_1 / 1e3:.3f}")
    print(f"ratio render_nonuniform / render_uniform:     {med['render_nonuniform'] / med['baseline render_uniform']:.2f}")
    print(f"wall time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
