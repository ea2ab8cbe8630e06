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


def demo_steps(out: Path, decoder: str, small: bool) -> list[tuple[str, Callable[..., int], dict, tuple]]:
    """The demo's steps: ``(command, function of blurforge.commands, its options, positional names)``."""
    from blurforge import commands

    k = str(out / "kernels.parquet")
    photos = str(out / "photos")
    # the paper's 63x63 / [1, 1000] px kernels; a smaller support for the shrunk images
    bank = {"size": 31, "length_max": 150.0} if small else {"size": 63}
    return [
        ("kernels", commands.kernels,
         {"count": 256, "seed": 0, **bank, "out": k, "preview": str(out / "kernels.png"), "workers": 2,
          "overwrite": True}, ()),  # the same seed writes the same bank: a re-run of the demo resumes
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "uniform"), "seed": 0, "pairs_per_image": 2,
          "shard_size": 4, "workers": 2}, ()),
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "uniform-rsblur"), "seed": 1, "noise": "rsblur",
          "saturation": True, "jpeg_quality": 90, "key_prefix": "uniform-rsblur", "shard_size": 4, "workers": 2}, ()),
        ("synthesize", commands.synthesize,
         {"sharp": photos, "kernels": k, "out": str(out / "nonuniform"), "seed": 2, "mode": "nonuniform",
          "segmenter": "classical", "max_objects": 4, "shard_size": 4, "workers": 2}, ()),
        ("frames", commands.frames,
         {"videos": str(out / "videos"), "out": str(out / "frames"), "seed": 0, "decoder": decoder, "window": "7",
          "interpolate": 3, "stride": 5}, ()),
        ("build-manifest", commands.build_manifest,
         {"inputs": [str(out / d) for d in RUNS], "out": str(out / "manifest.parquet"), "val_fraction": 0.2,
          "test_fraction": 0.2, "verify": True}, ("inputs",)),
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
