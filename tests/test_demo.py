"""The README's demo runs end to end and leaves images a person can open."""

from __future__ import annotations

import csv

import cv2


def test_deblurdiff_demo_end_to_end(tmp_path, capsys):
    from deblurdiff.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "demo: done" in text
    for png in ("results.png", "data/pairs.png", "data/kernels.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 50, png
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["psnr"] not in ("", None) for r in rows)
    # every source blurforge makes is in the manifest the model trained on
    from blurforge.manifest import read_manifest

    sources = set(read_manifest(out / "data" / "manifest.parquet").table.column("source").to_pylist())
    assert sources == {"uniform", "nonuniform", "frames"}
