"""The README's demo runs end to end and leaves images a person can open and the report it promises.

A few training steps only (CI has 2 cores): this checks the artefacts and the report's columns;
the README states the numbers of a full default run."""

from __future__ import annotations

import csv

import cv2
import pytest


def test_deblurdiff_demo_end_to_end(tmp_path, capsys):
    import torch

    from blurforge.manifest import read_manifest
    from deblurdiff.cli import main
    from deblurdiff.demo import CHECK_MODEL, MSGD_MODEL, REPORT_COLUMNS

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--out", str(out), "--steps", "3", "--check-steps", "2", "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # --threads (default 1) holds for the demo only
    text = capsys.readouterr().out
    assert "demo: done" in text and "MSGD mean PSNR" in text and "pipeline check" in text
    summary = text[text.rindex("\ndemo: done"):]  # the last line names every errors table it wrote
    assert str(out / "data" / "manifest.errors.parquet") in summary
    assert all(str(out / "data" / run / "errors") in summary for run in ("uniform", "uniform-rsblur", "nonuniform"))
    for png in ("results.png", "deblurdiff_check.png", "data/pairs.png", "data/kernels.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 50, png
    m = read_manifest(out / "data" / "manifest.parquet")
    test_keys = {r["key"] for r in m.table.to_pylist() if r["split"] == "test"}
    assert test_keys
    with open(out / "report.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REPORT_COLUMNS
        rows = list(reader)
    # one row per test pair and model; every score filled in; the input baseline is the same for both
    assert sorted((r["model"], r["key"]) for r in rows) == sorted((mo, k) for mo in (MSGD_MODEL, CHECK_MODEL)
                                                                 for k in test_keys)
    assert all(r[c] not in ("", None) for r in rows for c in REPORT_COLUMNS)
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], set()).add(r["psnr_input"])
    assert all(len(v) == 1 for v in by_key.values())
    # 3 MSGD steps barely move it from its exact starting point, the blurry input itself
    msgd = [r for r in rows if r["model"] == MSGD_MODEL]
    assert all(float(r["psnr"]) == pytest.approx(float(r["psnr_input"]), abs=1.5) for r in msgd)
    # every source blurforge makes is in the manifest the models trained on
    assert set(m.table.column("source").to_pylist()) == {"uniform", "nonuniform", "frames"}


def test_results_sheet_rows_are_evenly_spaced_by_key():
    """The sheet's rows follow one rule whatever the scores: first, last and evenly between."""
    from deblurdiff.demo import spread

    items = [f"k{i:02d}" for i in range(71)]
    # the rule, written independently: the items nearest to 12 evenly spaced positions
    assert spread(items, 12) == [items[int(p + 0.5)] for p in [i * 70 / 11 for i in range(12)]]
    assert spread(items[:5], 12) == items[:5]
    assert spread(items, 1) == items[:1]
