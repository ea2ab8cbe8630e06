"""``blurforge demo``: the data pipeline end to end on scikit-image's bundled photographs.

Runs the commands a user would — kernels → synthesize (uniform, uniform with the RSBlur realism
stage, and object-wise non-uniform with the classical segmenter) → frames (on a camera pan it
renders itself) → build-manifest (with splits and verification) → inspect (with a preview) — by
calling the ``blurforge.commands`` functions the CLI calls, and prints each step as its command
line (:func:`command_line`). One input is deliberately broken to show that failures land in the
errors tables instead of stopping the run.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Callable

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera")
# The deblurdiff demo's small mode (``max_side`` < 320) trains a model on the data, so it takes
# every photograph scikit-image bundles offline (for variety; not ``cat``, a copy of ``chelsea``,
# nor the synthetic ``horse``/``logo``/``checkerboard``, nor ``clock``, which scikit-image describes
# as taken while moving the camera: already motion-blurred, it cannot be a sharp target), and
# renders its camera pan over a photograph that is not among them: a clip and a photo of the same
# content would be two sources that could land in different splits.
SMALL_DEMO_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
                     "immunohistochemistry", "moon", "rocket", "retina", "brick", "grass", "gravel",
                     "text", "page", "colorwheel")
SMALL_PAN_PHOTO = "stereo_motorcycle"
# px per frame: 7-frame windows then blur the pan over ~6 px, inside the reach of the small kernel
# bank below (at 2 px/frame, ~12 px of straight blur, the demo's model gained 0.1 dB on the pan)
SMALL_PAN_SPEED = 1


def demo_photo(name: str):
    """A scikit-image sample image as uint8 (H, W) or (H, W, 3+); ``stereo_motorcycle``: its left view."""
    from skimage import data

    img = getattr(data, name)()
    return img[0] if isinstance(img, tuple) else img


def write_demo_photos(directory: Path, max_side: int | None = None, names: tuple[str, ...] = DEMO_PHOTOS
                      ) -> list[Path]:
    """Save scikit-image's bundled sample photographs ``names`` as PNG (no network needed),
    optionally shrunk so the long side is at most ``max_side`` pixels."""
    try:
        import skimage.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the demo uses scikit-image's bundled photographs — install it with "
            "PIP_CONSTRAINT=scripts/constraints.txt pip install -e '.[demo]'"
        ) from exc
    import cv2
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = demo_photo(name)
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


def write_demo_video(path: Path, frames: int = 40, size: tuple[int, int] = (320, 240), speed: int = 4,
                     photo: str = "coffee") -> Path:
    """A camera pan across a bundled photograph (``speed`` px/frame, small vertical shake), as a
    lossless FFV1 video: the frames job's input, with motion we know. Write it as ``.avi``: a
    Matroska file carries a random segment id, so its bytes — and the clip's split, a hash of
    them — would change from run to run."""
    import cv2
    import numpy as np

    w, h = size
    photo = cv2.resize(demo_photo(photo), (w + speed * frames + 8, h + 8), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30.0, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write FFV1 video here")
    for i in range(frames):
        dy = int(round(3 + 2 * np.sin(i / 3.0)))
        writer.write(np.ascontiguousarray(photo[dy : dy + h, speed * i : speed * i + w, ::-1]))
    writer.release()
    return path


# --------------------------------------------------------------------------------------- the steps


def command_line(command: str, options: dict, positional: tuple[str, ...] = ()) -> str:
    """The ``blurforge`` command line that passes ``options`` (keyword arguments of the
    ``blurforge.commands`` function): ``positional`` ones first, flags for True, ``--import``
    once per ``(NAME, PATH)``; False and None are left out."""
    words = ["blurforge", command]
    for name in positional:
        value = options[name]
        words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    for name, value in options.items():
        if name in positional or value is None or value is False:
            continue
        flag = "--" + {"as_json": "json", "imports": "import"}.get(name, name).replace("_", "-")
        if value is True:
            words.append(flag)
        elif name == "imports":
            for item in value:
                words += [flag, "=".join(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


# Data settings per mode. "full": ``blurforge demo``. "small" (``max_side`` < 320): the deblurdiff
# demo, whose model trains on these pairs for minutes (README, "Set up", says why each value).
MODES = {
    "full": {"bank": {"size": 63}, "pairs": {"uniform": 2, "uniform-rsblur": 1, "nonuniform": 1},
             "val_fraction": 0.2, "test_fraction": 0.2},
    # 19 px kernels, trajectories of at most 60 px: blur a model trained for minutes can undo at
    # 192 px (31 px / 150 px kernels left it 0.2-0.5 dB less gain); 16 pairs per photograph (more
    # kernels per photo: +0.1 dB over 8); no val split (the demo does not validate): every photo
    # not drawn for test trains
    "small": {"bank": {"size": 19, "length_max": 60.0}, "pairs": {"uniform": 8, "uniform-rsblur": 4, "nonuniform": 4},
              "val_fraction": 0.0, "test_fraction": 0.2},
}


def demo_steps(out: Path, decoder: str, small: bool) -> list[tuple[str, Callable[..., int], dict, tuple]]:
    """The demo's steps: ``(command, function of blurforge.commands, its options, positional names)``."""
    from blurforge import commands

    k = str(out / "kernels.parquet")
    photos = str(out / "photos")
    mode = MODES["small" if small else "full"]
    pairs = mode["pairs"]
    return [
        ("kernels", commands.kernels,
         {"count": 256, "seed": 0, **mode["bank"], "out": k, "preview": str(out / "kernels.png"), "workers": 2,
          "overwrite": True}, ()),  # the same seed writes the same bank: a re-run of the demo resumes
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "uniform"), "seed": 0, "pairs_per_image": pairs["uniform"],
          "shard_size": 4, "workers": 2}, ()),
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "uniform-rsblur"), "seed": 1, "noise": "rsblur",
          "saturation": True, "jpeg_quality": 90, "pairs_per_image": pairs["uniform-rsblur"],
          "key_prefix": "uniform-rsblur", "shard_size": 4, "workers": 2}, ()),
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "nonuniform"), "seed": 2, "mode": "nonuniform",
          "segmenter": "classical", "max_objects": 4, "pairs_per_image": pairs["nonuniform"], "shard_size": 4,
          "workers": 2}, ()),
        ("frames", commands.frames,
         {"videos": str(out / "videos"), "out": str(out / "frames"), "seed": 0, "decoder": decoder, "window": "7",
          "interpolate": 3, "stride": 5}, ()),
        ("build-manifest", commands.build_manifest,
         {"inputs": [str(out / d) for d in RUNS], "out": str(out / "manifest.parquet"),
          "val_fraction": mode["val_fraction"], "test_fraction": mode["test_fraction"], "verify": True},
         ("inputs",)),
        ("inspect", commands.inspect,
         {"manifest": str(out / "manifest.parquet"), "preview": str(out / "pairs.png")}, ("manifest",)),
    ]


RUNS = ("uniform", "uniform-rsblur", "nonuniform", "frames")  # the demo's synthesize/frames outputs


def run_demo(out: Path, quiet: bool = False, max_side: int | None = None) -> int:
    """Run the data pipeline into ``out``, printing each step as the ``blurforge`` command it
    runs; returns the first non-zero exit status of a step, else 0. ``max_side`` shrinks the
    photographs and the video (the deblurdiff demo uses small images so its CPU model runs in
    seconds). Re-running it into the same ``out`` resumes."""
    from blurforge.commands import EXIT_OK, UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder — choose a folder for the demo's output")
    t0 = time.perf_counter()
    photos = out / "photos"
    small = bool(max_side and max_side < 320)
    names = SMALL_DEMO_PHOTOS if small else DEMO_PHOTOS
    write_demo_photos(photos, max_side, names)
    print(f"demo: {len(names)} sample photographs (+1 broken file) -> {photos}")
    size, speed = ((max_side, max_side * 3 // 4), SMALL_PAN_SPEED) if small else ((320, 240), 4)
    video = write_demo_video(out / "videos" / "pan.avi", size=size, speed=speed,
                             photo=SMALL_PAN_PHOTO if small else "coffee")
    print(f"demo: a 40-frame camera pan ({speed} px/frame) -> {video}")
    try:
        import decord  # noqa: F401

        decoder = "decord"
    except ImportError:
        decoder = "av"

    for command, run, options, positional in demo_steps(out, decoder, small):
        line = command_line(command, options, positional)
        print(f"\n$ {line}")
        extra = {"rerun": line} if command in ("synthesize", "frames") else {}
        rc = run(**options, quiet=quiet, **extra)
        if rc != EXIT_OK:
            print(f"demo: step '{line}' ended with exit status {rc}")
            return rc
    print(f"\ndemo: done in {time.perf_counter() - t0:.1f} s. Open {out / 'pairs.png'} (blurry | sharp) and "
          f"{out / 'kernels.png'}; the manifest is {out / 'manifest.parquet'}. {failures_note(out)}")
    return EXIT_OK


def failures_note(out: Path) -> str:
    """Where the demo's failed inputs are: the manifest's merged errors table and every run's own."""
    from blurforge.manifest import errors_beside, errors_path_for

    merged = errors_path_for(out / "manifest.parquet")
    runs = [f"{out / run / 'errors'} ({n})" for run in RUNS if (n := errors_beside(out / run)[0].num_rows)]
    if not merged.is_file() and not runs:
        return "No input failed."
    rows = errors_beside(out / "manifest.parquet")[0].num_rows
    return (f"Failed inputs (the broken file: a row per pair it was to give): {rows} rows in {merged}, merged "
            f"from {', '.join(runs)}.")
