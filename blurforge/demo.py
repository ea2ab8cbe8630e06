"""``blurforge demo``: the data pipeline end to end on scikit-image's bundled photographs.

Runs the same CLI commands a user would: kernels → synthesize (clean, and with the RSBlur realism
stage) → build-manifest (with splits and verification) → inspect (with a preview PNG). One input
is deliberately broken to show that failures land in the errors table instead of stopping the run.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera")


def write_demo_photos(directory: Path) -> list[Path]:
    """Save scikit-image's bundled sample photographs as PNG (no network needed)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "the demo uses scikit-image's bundled photographs — install it with "
            "PIP_CONSTRAINT=scripts/constraints.txt pip install -e '.[demo]'"
        ) from exc
    import cv2
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_PHOTOS:
        img = getattr(data, name)()
        if img.ndim == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR)
        path = directory / f"{name}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    broken = directory / "broken.png"
    broken.write_text("this is not an image; the demo shows it lands in the errors table\n")
    return paths


def run_demo(out: Path, quiet: bool = False) -> int:
    from blurforge.cli import main

    t0 = time.perf_counter()
    q = ["--quiet"] if quiet else []
    photos = out / "photos"
    write_demo_photos(photos)
    print(f"demo: {len(DEMO_PHOTOS)} sample photographs (+1 broken file) -> {photos}")

    steps = [
        ["kernels", "--count", "256", "--seed", "0", "--size", "63", "--out", str(out / "kernels.parquet"),
         "--preview", str(out / "kernels.png"), "--workers", "2"],
        ["synthesize", "--sharp", str(photos), "--kernels", str(out / "kernels.parquet"),
         "--out", str(out / "uniform"), "--seed", "0", "--pairs-per-image", "2", "--shard-size", "4",
         "--workers", "2"],
        ["synthesize", "--sharp", str(photos), "--kernels", str(out / "kernels.parquet"),
         "--out", str(out / "uniform-rsblur"), "--seed", "1", "--noise", "rsblur", "--saturation",
         "--jpeg-quality", "90", "--key-prefix", "uniform-rsblur", "--shard-size", "4", "--workers", "2"],
        ["build-manifest", str(out / "uniform"), str(out / "uniform-rsblur"),
         "--out", str(out / "manifest.parquet"), "--val-fraction", "0.2", "--test-fraction", "0.2", "--verify"],
        ["inspect", str(out / "manifest.parquet"), "--preview", str(out / "pairs.png")],
    ]
    for argv in steps:
        print(f"\n$ blurforge {' '.join(argv)}")
        rc = main(argv + q)
        if rc != 0:
            print(f"demo: step 'blurforge {argv[0]}' failed with exit code {rc}")
            return rc
    print(
        f"\ndemo: done in {time.perf_counter() - t0:.1f} s. Open {out / 'pairs.png'} (blurry | sharp) and "
        f"{out / 'kernels.png'}; the manifest is {out / 'manifest.parquet'}, failures are in "
        f"{out / 'uniform' / 'errors'}."
    )
    return 0
