"""Splits by source: a merged manifest of several runs never puts one photo, clip or scene in two
splits; old (key-hashed) manifests are caught by --verify and inspect; schema-v1 manifests read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blurforge.cli import main
from blurforge.manifest import read_manifest, write_parquet_atomic
from conftest import photo, write_png

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
W, H = 64, 48


def pixels(path: Path) -> str:
    """SHA-256 of an image file's decoded pixels (8-bit BGR as OpenCV reads it)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def find_source(path: Path, source_of: dict[str, str], photos: dict[str, np.ndarray]) -> str:
    """The source of a stored sharp image: its decoded pixels looked up among the fixture's files,
    or, for a synthesize pair cropped by its kernels' reach (valid borders), the one photograph
    that holds it as an exact sub-window."""
    digest = pixels(path)
    if digest in source_of:
        return source_of[digest]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR).astype(np.float32)
    h, w = img.shape[:2]

    def holds(p: np.ndarray) -> bool:
        if p.shape[0] < h or p.shape[1] < w:
            return False
        _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(p, img, cv2.TM_SQDIFF))  # best window, then exact
        return np.array_equal(p[y:y + h, x:x + w], img)

    found = [name for name, p in photos.items() if holds(p)]
    assert len(found) == 1, f"{path}: in {len(found)} photographs"
    return found[0]


def write_clip(path: Path, texture: np.ndarray, n: int = 9, v: int = 3) -> list[np.ndarray]:
    """A lossless clip panning across ``texture`` by ``v`` px per frame; returns its RGB frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30.0, (W, H))
    assert writer.isOpened()
    frames = [np.ascontiguousarray(texture[5:5 + H, v * i:v * i + W]) for i in range(n)]
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return frames


@pytest.fixture(scope="module")
def sources(tmp_path_factory, small_bank):
    """Photos (12), clips (4) and a GoPro-like dataset (5 sequences), plus, computed here from the
    files this fixture wrote, a map from decoded sharp pixels to the source they belong to."""
    root = tmp_path_factory.mktemp("sources")
    source_of: dict[str, str] = {}
    photos: dict[str, np.ndarray] = {}

    def remember(digest: str, source: str) -> None:
        assert source_of.setdefault(digest, source) == source, "two sources share a picture"

    for i in range(12):  # 6 photographs, each also flipped: 12 distinct sharp photos
        img = photo(PHOTOS[i % 6], (W, H))
        img = img if i < 6 else np.ascontiguousarray(img[::-1])
        path = write_png(root / "photos" / f"p{i:02d}.png", img)
        remember(pixels(path), f"photo:{path.name}")
        photos[f"photo:{path.name}"] = cv2.imread(str(path), cv2.IMREAD_COLOR).astype(np.float32)
    for c in range(4):  # overlapping windows of each clip (window 3, stride 1)
        texture = photo(PHOTOS[c], (W + 40, H + 10))
        frames = write_clip(root / "clips" / f"clip{c}.mkv", np.ascontiguousarray(texture[::-1, ::-1]))
        for i, f in enumerate(frames):
            tmp = write_png(root / "decoded" / f"clip{c}-{i}.png", f)
            remember(pixels(tmp), f"clip:clip{c}")
    for s in range(5):  # consecutive frames of a sequence
        texture = photo(PHOTOS[s], (W + 30, H))
        for i in range(3):
            frame = np.ascontiguousarray(np.roll(texture, 7 * s, axis=0)[:, 5 * i:5 * i + W])
            sharp = write_png(root / "GOPRO" / "train" / f"SEQ{s}" / "sharp" / f"{i:06d}.png", frame)
            write_png(root / "GOPRO" / "train" / f"SEQ{s}" / "blur" / f"{i:06d}.png", cv2.blur(frame, (5, 5)))
            remember(pixels(sharp), f"sequence:SEQ{s}")
    return root, source_of, photos


@pytest.fixture(scope="module")
def merged(sources, small_bank):
    root, _, _ = sources
    common = ["--kernels", str(small_bank), "--pairs-per-image", "3", "--quiet"]
    runs = [
        ["synthesize", "--sharp", str(root / "photos"), "--out", str(root / "uniform"), "--seed", "1", *common],
        ["synthesize", "--sharp", str(root / "photos"), "--out", str(root / "uniform-2"), "--seed", "2", *common],
        ["synthesize", "--sharp", str(root / "photos"), "--out", str(root / "nonuniform"), "--seed", "3",
         "--mode", "nonuniform", "--max-objects", "2", *common],
        ["frames", "--videos", str(root / "clips"), "--out", str(root / "frames"), "--seed", "0", "--window", "3",
         "--stride", "1", "--decoder", "av", "--quiet"],
    ]
    for argv in runs:
        assert main(argv) == 0, argv
    out = root / "manifests" / "all.parquet"
    assert main(["build-manifest", *(str(root / r) for r in ("uniform", "uniform-2", "nonuniform", "frames")),
                 "--import", f"gopro={root / 'GOPRO'}", "--out", str(out), "--val-fraction", "0.3",
                 "--test-fraction", "0.3", "--verify", "--quiet"]) == 0
    return out


def test_no_source_is_in_two_splits(sources, merged):
    """Each row's source is found by decoding its stored sharp image and looking the pixels up among
    the files the fixture wrote — independent of the code's groups, keys and params."""
    _, source_of, photos = sources
    m = read_manifest(merged)
    splits_of: dict[str, set] = {}
    pairs_of: dict[str, int] = {}
    for r in m.table.to_pylist():
        source = find_source(m.abspath(r["sharp_path"]), source_of, photos)
        splits_of.setdefault(source, set()).add(r["split"])
        pairs_of[source] = pairs_of.get(source, 0) + 1
    assert {s.split(":")[0] for s in splits_of} == {"photo", "clip", "sequence"}
    assert len(splits_of) == 12 + 4 + 5
    assert min(pairs_of.values()) >= 3, "every source has several pairs (so a leak is possible)"
    assert set(m.table.column("source").to_pylist()) == {"uniform", "nonuniform", "frames", "import:gopro"}
    assert set(m.table.column("split").to_pylist()) == {"train", "val", "test"}
    leaks = {s: sorted(v) for s, v in splits_of.items() if len(v) > 1}
    assert not leaks, f"sources in several splits: {leaks}"
    # the code's groups are exactly these sources, no finer and no coarser
    groups = {}
    for r in m.table.to_pylist():
        groups.setdefault(r["group"], set()).add(find_source(m.abspath(r["sharp_path"]), source_of, photos))
    assert all(len(v) == 1 for v in groups.values()) and len(groups) == len(splits_of)


def test_inspect_reports_groups_and_no_leakage(merged, capsys):
    assert main(["inspect", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "21 source group(s), none in more than one split" in out and "LEAKAGE" not in out


def key_hash_split(key: str, val: float = 0.3, test: float = 0.3) -> str:
    """What build-manifest used to do: a split per key (so per pair)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2.0**64
    return "test" if u < test else "val" if u < test + val else "train"


def old_style(merged: Path, out: Path, version: str) -> Path:
    """The merged manifest re-split by key, as an older build-manifest wrote it (``version`` "1"
    also drops the group column)."""
    t = pq.read_table(merged)
    t = t.set_column(t.schema.get_field_index("split"), "split",
                     pa.array([key_hash_split(k) for k in t.column("key").to_pylist()], pa.string()))
    if version == "1":
        t = t.drop_columns(["group"])
    meta = {**t.schema.metadata, b"blurforge.schema_version": version.encode()}
    pq.write_table(t.replace_schema_metadata(meta), out)
    return out


@pytest.mark.parametrize("version", ["1", "2"])
def test_key_hashed_splits_are_reported_as_leakage(merged, version, capsys):
    old = old_style(merged, merged.with_name(f"old-v{version}.parquet"), version)
    checked = merged.with_name(f"checked-v{version}.parquet")
    assert main(["build-manifest", str(old), "--out", str(checked), "--verify", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "LEAKAGE:" in err and "manifest not written" in err and not checked.exists()
    assert main(["inspect", str(old)]) == 0
    captured = capsys.readouterr()
    assert "LEAKAGE:" in captured.out
    assert ("schema v1" in captured.err) == (version == "1")
    # re-assigning by group mends it, old manifest or new
    assert main(["build-manifest", str(old), "--out", str(checked), "--val-fraction", "0.3", "--test-fraction",
                 "0.3", "--verify", "--quiet"]) == 0
    assert "no source in two splits" in capsys.readouterr().out


def test_schema_v1_groups_are_derived(merged):
    old = old_style(merged, merged.with_name("v1.parquet"), "1")  # beside it: image paths are relative
    m = read_manifest(old)
    assert m.legacy_files == 1 and "schema v1" in m.legacy_note()
    rows = m.table.to_pylist()
    for r in rows:
        p = json.loads(r["params"])
        expected = {"uniform": f"sharp:{r['sharp_sha256']}", "nonuniform": f"sharp:{r['sharp_sha256']}",
                    "frames": f"clip:{p.get('video')}", "import:gopro": f"scene:{p.get('sequence')}"}[r["source"]]
        assert r["group"] == expected
    # the v1 manifest still trains: deblurdiff reads it
    pytest.importorskip("torch")
    from deblurdiff.data import load_pairs

    assert len(load_pairs([old], split="train")) == sum(r["split"] == "train" for r in rows)


def test_a_v2_row_without_group_is_refused():
    from blurforge.manifest import rows_table

    with pytest.raises(ValueError, match="no 'group'"):
        rows_table([{"key": "x", "blur_path": "b", "sharp_path": "s", "split": "train", "source": "uniform",
                     "width": 1, "height": 1, "seed": None, "params": "{}", "blur_sha256": "", "sharp_sha256": ""}])


def test_merged_manifest_is_written_atomically_with_group(merged, tmp_path):
    t = read_manifest(merged).table
    write_parquet_atomic(t, tmp_path / "copy.parquet", kind="manifest")
    assert read_manifest(tmp_path / "copy.parquet").table.column("group").to_pylist() == t.column("group").to_pylist()


def test_leakage_finds_groups_and_shared_sharp_images_in_several_splits():
    from blurforge.manifest import leakage, leakage_lines, leakage_report, rows_table

    def row(key, split, group, sharp):
        return {"key": key, "blur_path": f"{key}.png", "sharp_path": "s.png", "split": split, "group": group,
                "source": "uniform", "width": 1, "height": 1, "seed": 1, "params": "{}", "blur_sha256": key,
                "sharp_sha256": sharp}

    t = rows_table([row("a", "train", "g1", "s1"), row("b", "test", "g1", "s1"),  # a group in two splits
                    row("c", "train", "g2", "s2"), row("d", "val", "g3", "s2"),  # one picture, two groups
                    row("e", "test", "g4", "s4"), row("f", "test", "g4", "s4")])
    leaks = leakage(t)
    assert leaks == {"groups": {"g1": ["test", "train"]}, "sharp": {"s1": ["test", "train"], "s2": ["train", "val"]}}
    lines = leakage_lines(leakage_report(leaks))
    assert lines[0].startswith("LEAKAGE: 1 source group(s)") and "g1 in test, train" in lines[1]
    assert any(line.startswith("warning: 2 sharp image(s)") for line in lines)
    assert leakage_lines(leakage_report(leakage(t.slice(4)))) == []
