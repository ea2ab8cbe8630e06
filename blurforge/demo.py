"""``blurforge demo``: the data pipeline end to end on scikit-image's bundled photographs.

Runs the same CLI commands a user would: kernels → synthesize (uniform, uniform with the RSBlur
realism stage, and object-wise non-uniform with the classical segmenter) → frames (on a camera
pan it renders itself) → build-manifest (with splits and verification) → inspect (with a preview). One input
is deliberately broken to show that failures land in the errors table instead of stopping the run.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera")


def write_demo_photos(directory: Path, max_side: int | None = None) -> list[Path]:
    """Save scikit-image's bundled sample photographs as PNG (no network needed), optionally
    shrunk so the long side is at most ``max_side`` pixels."""
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
        if max_side and max(img.shape[:2]) > max_side:
            scale = max_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
        if img.ndim == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR)
        path = directory / f"{name}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    broken = directory / "broken.png"
    broken.write_text("this is not an image; the demo shows it lands in the errors table\n")
    return paths


def write_demo_video(path: Path, frames: int = 40, size: tuple[int, int] = (320, 240), speed: int = 4) -> Path:
    """A camera pan across a bundled photograph (``speed`` px/frame, small vertical shake), as a
    lossless FFV1 video: the frames job's input, with motion we know. Write it as ``.avi``: a
    Matroska file carries a random segment id, so its bytes — and the clip's split, a hash of
    them — would change from run to run."""
    import cv2
    import numpy as np
    from skimage import data

    w, h = size
    photo = cv2.resize(data.coffee(), (w + speed * frames + 8, h + 8), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30.0, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write FFV1 video here")
    for i in range(frames):
        dy = int(round(3 + 2 * np.sin(i / 3.0)))
        writer.write(np.ascontiguousarray(photo[dy : dy + h, speed * i : speed * i + w, ::-1]))
    writer.release()
    return path


def run_demo(out: Path, quiet: bool = False, max_side: int | None = None) -> int:
    """Run the data pipeline into ``out``; ``max_side`` shrinks the photographs and the video
    (the deblurdiff demo uses small images so its CPU model runs in seconds)."""
    from blurforge.cli import main

    t0 = time.perf_counter()
    q = ["--quiet"] if quiet else []
    photos = out / "photos"
    write_demo_photos(photos, max_side)
    print(f"demo: {len(DEMO_PHOTOS)} sample photographs (+1 broken file) -> {photos}")
    small = bool(max_side and max_side < 320)
    video = write_demo_video(out / "videos" / "pan.avi", size=(max_side, max_side * 3 // 4) if small else (320, 240))
    print(f"demo: a 40-frame camera pan (4 px/frame) -> {video}")
    try:
        import decord  # noqa: F401

        decoder = "decord"
    except ImportError:
        decoder = "av"

    # the paper's 63x63 / [1, 1000] px kernels; a smaller support for the shrunk images
    kernel_args = ["--size", "31", "--length-max", "150"] if small else ["--size", "63"]
    steps = [
        ["kernels", "--count", "256", "--seed", "0", *kernel_args, "--out", str(out / "kernels.parquet"),
         "--preview", str(out / "kernels.png"), "--workers", "2"],
        ["synthesize", "--sharp", str(photos), "--kernels", str(out / "kernels.parquet"),
         "--out", str(out / "uniform"), "--seed", "0", "--pairs-per-image", "2", "--shard-size", "4",
         "--workers", "2"],
        ["synthesize", "--sharp", str(photos), "--kernels", str(out / "kernels.parquet"),
         "--out", str(out / "uniform-rsblur"), "--seed", "1", "--noise", "rsblur", "--saturation",
         "--jpeg-quality", "90", "--key-prefix", "uniform-rsblur", "--shard-size", "4", "--workers", "2"],
        ["synthesize", "--sharp", str(photos), "--kernels", str(out / "kernels.parquet"),
         "--out", str(out / "nonuniform"), "--seed", "2", "--mode", "nonuniform", "--segmenter", "classical",
         "--max-objects", "4", "--shard-size", "4", "--workers", "2"],
        ["frames", "--videos", str(out / "videos"), "--out", str(out / "frames"), "--seed", "0",
         "--decoder", decoder, "--window", "7", "--interpolate", "3", "--stride", "5"],
        ["build-manifest", str(out / "uniform"), str(out / "uniform-rsblur"), str(out / "nonuniform"),
         str(out / "frames"), "--out", str(out / "manifest.parquet"), "--val-fraction", "0.2", "--test-fraction", "0.2", "--verify"],
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
