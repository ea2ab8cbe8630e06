"""imports: GoPro / REDS folder layouts and RealBlur-style list files become rows or error rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blurforge.imports import import_pairs, split_from
from blurforge.manifest import MANIFEST_SCHEMA, merge_manifests, read_manifest, sha256_file, write_parquet_atomic
from conftest import photo, write_png


def img(seed: int, size=(48, 32)) -> np.ndarray:
    return np.roll(photo("coffee", size), seed * 3, axis=1)


def fake_gopro(root: Path) -> Path:
    for split, seqs in (("train", ("GOPR0001", "GOPR0002")), ("test", ("GOPR0100",))):
        for s, seq in enumerate(seqs):
            for i in range(2):
                for d in ("blur", "blur_gamma", "sharp"):
                    write_png(root / split / seq / d / f"{i:06d}.png", img(s + i))
    return root


def by_key(table) -> dict:
    return {r["key"]: r for r in table.to_pylist()}


def test_gopro_layout(tmp_path):
    root = fake_gopro(tmp_path / "GOPRO_Large")
    table, got_root, errors = import_pairs("gopro", root)
    assert errors == [] and got_root == root and table.schema.equals(MANIFEST_SCHEMA)
    rows = by_key(table)
    assert len(rows) == 6
    r = rows["gopro/train/GOPR0001/blur/000001.png"]
    assert r["sharp_path"] == "train/GOPR0001/sharp/000001.png"
    assert r["source"] == "import:gopro" and r["seed"] is None and (r["width"], r["height"]) == (48, 32)
    assert r["blur_sha256"] == sha256_file(root / r["blur_path"])
    assert r["sharp_sha256"] == sha256_file(root / r["sharp_path"])
    p = json.loads(r["params"])
    assert p["layout"] == "gopro" and p["blur_dir"] == "blur" and p["sequence"] == "train/GOPR0001"
    assert {r["split"] for k, r in rows.items() if "/test/" in f"/{k}"} == {"test"}
    assert sum(r["split"] == "train" for r in rows.values()) == 4
    gamma, _, _ = import_pairs("gopro_gamma", root, blur_dirs=("blur_gamma",))
    assert all("/blur_gamma/" in p for p in gamma.column("blur_path").to_pylist()) and gamma.num_rows == 6
    # a sequence is a group, whichever blurry set was imported (they share the sharp frames)
    assert r["group"] == "scene:train/GOPR0001"
    assert {g.split("/")[-1] for g in table.column("group").to_pylist()} == {"GOPR0001", "GOPR0002", "GOPR0100"}
    assert sorted(gamma.column("group").to_pylist()) == sorted(table.column("group").to_pylist())


def test_reds_layout(tmp_path):
    root = tmp_path / "REDS"
    for split in ("train", "val"):
        for seq in ("000", "001"):
            for i in range(2):
                write_png(root / f"{split}_blur" / seq / f"{i:08d}.png", img(i))
                write_png(root / f"{split}_sharp" / seq / f"{i:08d}.png", img(i))
    write_png(root / "train_blur_bicubic" / "000" / "00000000.png", img(0, (12, 8)))  # not a *_blur folder
    table, _, errors = import_pairs("reds", root)
    assert errors == []
    rows = by_key(table)
    assert len(rows) == 8
    r = rows["reds/val_blur/001/00000001.png"]
    assert r["sharp_path"] == "val_sharp/001/00000001.png" and r["split"] == "val"
    assert r["group"] == "scene:val/001" and rows["reds/train_blur/001/00000000.png"]["group"] == "scene:train/001"
    assert json.loads(r["params"])["layout"] == "reds"
    assert rows["reds/train_blur/000/00000000.png"]["split"] == "train"


def test_list_file_with_extra_columns_comments_and_gt_first(tmp_path):
    root = tmp_path / "RealBlur"
    for scene in ("scene001", "scene002"):
        for i in (1, 2):
            write_png(root / "RealBlur_J" / "test" / scene / "blur" / f"blur_{i}.png", img(i))
            write_png(root / "RealBlur_J" / "test" / scene / "gt" / f"gt_{i}.png", img(i))
    lines = ["# RealBlur: gt first, blur second, then extra columns", ""]
    for scene in ("scene001", "scene002"):
        for i in (1, 2):
            lines.append(f"RealBlur_J/test/{scene}/gt/gt_{i}.png RealBlur_J/test/{scene}/blur/blur_{i}.png 0.5 x")
    (root / "RealBlur_J_test_list.txt").write_text("\n".join(lines) + "\n")
    table, got_root, errors = import_pairs("realblur_j", root / "RealBlur_J_test_list.txt")
    assert errors == [] and got_root == root
    rows = by_key(table)
    assert len(rows) == 4
    r = rows["realblur_j/RealBlur_J/test/scene002/blur/blur_1.png"]
    assert r["sharp_path"] == "RealBlur_J/test/scene002/gt/gt_1.png" and r["split"] == "test"
    assert r["group"] == "scene:RealBlur_J/test/scene002"  # the scene folder, above gt/
    assert len(set(table.column("group").to_pylist())) == 2
    p = json.loads(r["params"])
    assert p["columns"] == "sharp,blur" and p["list"] == "RealBlur_J_test_list.txt" and p["line"] == 5

    # blur-first lists (the documented order) are taken as they are; a non-test name is train
    (root / "pairs.txt").write_text("RealBlur_J/test/scene001/blur/blur_1.png RealBlur_J/test/scene001/gt/gt_1.png\n")
    t2, _, _ = import_pairs("mine", root / "pairs.txt")
    (r2,) = t2.to_pylist()
    assert r2["blur_path"].endswith("blur_1.png") and r2["split"] == "train"
    assert json.loads(r2["params"])["columns"] == "blur,sharp"


def test_unpaired_mismatched_and_unreadable_files_are_error_rows(tmp_path):
    root = fake_gopro(tmp_path / "g")
    seq = root / "train" / "GOPR0001"
    write_png(seq / "blur" / "000009.png", img(0))  # blurry without sharp
    write_png(seq / "sharp" / "000010.png", img(0))  # sharp without blurry
    write_png(seq / "blur" / "000011.png", img(0, (40, 32)))  # differing sizes
    write_png(seq / "sharp" / "000011.png", img(0))
    (seq / "blur" / "000012.png").write_text("not a png")  # unreadable
    write_png(seq / "sharp" / "000012.png", img(0))
    write_png(root / "train" / "ORPHAN" / "sharp" / "000000.png", img(0))  # a sequence with no blur folder
    table, _, errors = import_pairs("gopro", root)
    assert table.num_rows == 6
    msgs = {Path(e["input"]).name: e["error"] for e in errors}
    assert "without a sharp partner" in msgs["000009.png"]
    assert "without a blurry partner" in msgs["000010.png"]
    assert "40x32" in msgs["000011.png"] and "48x32" in msgs["000011.png"]
    assert "unreadable blurry image" in msgs["000012.png"]
    assert "no blur/ or blur_gamma/" in msgs["ORPHAN"]
    assert len(errors) == 5 and all(e["stage"] == "import" for e in errors)

    (root / "list.txt").write_text(
        "train/GOPR0001/blur/000000.png train/GOPR0001/sharp/000000.png\n"
        "train/GOPR0001/blur/000000.png train/GOPR0001/sharp/000000.png\n"  # repeated
        "train/GOPR0001/blur/missing.png train/GOPR0001/sharp/000000.png\n"
        "only_one_column.png\n"
    )
    table, _, errors = import_pairs("l", root / "list.txt")
    assert table.num_rows == 1
    kinds = sorted(e["error"].split(" — ")[0].split(": ", 1)[1] for e in errors)
    assert len(errors) == 3
    assert any("listed twice" in k for k in kinds) and any("missing" in k for k in kinds)
    assert any("expected 'blur_path sharp_path'" in k for k in kinds)


def test_unknown_layout_and_bad_name(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="no known layout"):
        import_pairs("x", tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        import_pairs("x", tmp_path / "nope")
    with pytest.raises(ValueError, match="NAME"):
        import_pairs("a/b", tmp_path / "x")


@pytest.mark.parametrize("parts,split", [
    (("train", "GOPR0001", "blur"), "train"), (("GoPro_test", "s"), "test"), (("val_blur", "000"), "val"),
    (("RealBlur_J_test_list.txt",), "test"), (("latest", "x"), "train"), (("data",), "train"),
])
def test_split_from(parts, split):
    assert split_from(parts) == split


def test_imported_table_merges_into_a_manifest(tmp_path):
    root = fake_gopro(tmp_path / "data" / "GOPRO_Large")
    table, got_root, _ = import_pairs("gopro", root)
    out = tmp_path / "manifests" / "all.parquet"
    merged = merge_manifests([], out, extra_tables=[("gopro", table, got_root)])
    write_parquet_atomic(merged, out, kind="manifest")
    m = read_manifest(out)
    assert len(m) == 6
    for r in m.table.to_pylist():
        assert r["blur_path"].startswith("../data/GOPRO_Large/")
        assert sha256_file(m.abspath(r["blur_path"])) == r["blur_sha256"]
