"""``deblurdiff demo``: the whole mission end to end on the embedded default, on a CPU.

blurforge demo data (scikit-image photographs + a rendered video, shrunk to at most 192 px so the
CPU model runs in seconds) → train the seeded ``tiny``
preset for a short while → deblur the manifest's test split → evaluate against the sharp
images → a contact sheet (blurry | deblurred | sharp). The tiny model is random and trained for
seconds, so it shows the plumbing, not the paper's quality: real runs use ``--preset sd21-base``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def results_sheet(manifest: Path, predictions: Path, path: Path, size: int = 160) -> Path:
    """A PNG with one row per test pair: blurry | deblurred | sharp."""
    from blurforge.manifest import read_manifest
    from blurforge.summary import _thumb, tile_sheet
    from deblurdiff.infer import prediction_name

    m = read_manifest(manifest)
    rows = []
    for r in m.table.sort_by("key").to_pylist():
        pred = predictions / prediction_name(r["key"])
        if r["split"] == "test" and pred.is_file():
            rows.append([_thumb(m.abspath(r["blur_path"]), size), _thumb(pred, size),
                         _thumb(m.abspath(r["sharp_path"]), size)])
    if not rows:
        raise ValueError(f"{predictions}: no predictions for the test split of {manifest}")
    return tile_sheet(rows, path)


def run_demo(args: argparse.Namespace) -> int:
    from blurforge.demo import run_demo as data_demo
    from deblurdiff.cli import main

    t0 = time.perf_counter()
    out = Path(args.out)
    q = ["--quiet"] if args.quiet else []
    print("demo: 1/4 data — blurforge's demo pipeline")
    rc = data_demo(out / "data", quiet=args.quiet, max_side=192)
    if rc:
        return rc
    manifest = out / "data" / "manifest.parquet"
    steps = [
        ("2/4 train the tiny preset",
         ["train", "--manifest", str(manifest), "--preset", "tiny", "--output-dir", str(out / "train"),
          "--resolution", "64", "--batch-size", "4", "--max-steps", str(args.steps), "--lr", "1e-3",
          "--checkpoint-every", "0", "--val-every", str(args.steps), "--val-count", "2", "--val-steps", "4",
          "--log-every", "10", "--num-workers", "0", "--seed", "0"]),
        ("3/4 deblur the test split",
         ["infer", "--checkpoint", str(out / "train" / "final"), "--input", str(manifest), "--split", "test",
          "--output", str(out / "deblurred"), "--sampler", "ddim", "--steps", "10", "--seed", "0",
          "--device", "cpu"]),
        ("4/4 evaluate",
         ["evaluate", "--manifest", str(manifest), "--split", "test", "--predictions", str(out / "deblurred"),
          "--out", str(out / "report.csv")]),
    ]
    for title, argv in steps:
        print(f"\ndemo: {title}\n$ deblurdiff {' '.join(argv)}")
        rc = main(argv + q)
        if rc != 0:
            print(f"demo: step 'deblurdiff {argv[0]}' failed with exit code {rc}")
            return rc
    sheet = results_sheet(manifest, out / "deblurred", out / "results.png")
    print(
        f"\ndemo: done in {time.perf_counter() - t0:.0f} s. Open {sheet} (blurry | deblurred | sharp), "
        f"{out / 'data' / 'pairs.png'} and {out / 'train' / 'val'}; metrics in {out / 'report.csv'} and "
        f"{out / 'train' / 'metrics.jsonl'}. The tiny model is random and briefly trained: it shows the "
        "pipeline, not the paper's quality."
    )
    return 0
