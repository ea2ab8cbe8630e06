"""synthesize end to end: pairs, the bad-input zoo, determinism, re-rendering, kill-and-resume."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds

from blurforge.cli import main
from blurforge.manifest import read_errors, read_manifest, sha256_file
from blurforge.seeding import seed_for
from conftest import photo, write_png

ROOT = Path(__file__).resolve().parents[1]


def synth(sharp, bank, out, *extra) -> int:
    return main(["synthesize", "--sharp", str(sharp), "--kernels", str(bank), "--out", str(out),
                 "--seed", "7", "--quiet", *map(str, extra)])


def table_by_key(out: Path) -> dict:
    t = ds.dataset(out / "manifest", format="parquet").to_table()
    return {r["key"]: r for r in t.to_pylist()}


def test_uniform_pairs_are_readable_and_consistent(photos_dir, small_bank, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(photos_dir, small_bank, out, "--pairs-per-image", 2) == 0
    summary = capsys.readouterr().out
    assert "synthesize: 8 pairs in" in summary and "failed" not in summary
    rows = table_by_key(out)
    assert len(rows) == 8
    m = read_manifest(out)
    for r in rows.values():
        blur = cv2.imread(str(m.abspath(r["blur_path"])))
        sharp = cv2.imread(str(m.abspath(r["sharp_path"])))
        assert blur.shape == sharp.shape == (r["height"], r["width"], 3)
        assert sha256_file(m.abspath(r["blur_path"])) == r["blur_sha256"]
        assert r["source"] == "uniform" and r["split"] == "train"
        p = json.loads(r["params"])
        assert p["kernel_id"].startswith("k") and p["input"].endswith(".png")
        # a blurred photograph has less high-frequency energy than its sharp original
        lap = lambda x: cv2.Laplacian(x.astype(np.float32), cv2.CV_32F).var()  # noqa: E731
        assert lap(blur) < lap(sharp)
    # the two pairs drawn from one image differ (own seeds: run seed, mode, photo, j)
    a, b = rows["uniform/seed7/astronaut.png/0"], rows["uniform/seed7/astronaut.png/1"]
    assert a["seed"] == seed_for(7, "uniform/astronaut.png/0") and b["seed"] == seed_for(7, "uniform/astronaut.png/1")
    assert a["seed"] != b["seed"] and a["blur_sha256"] != b["blur_sha256"]
    # ... and each sharp image is the source cropped by its own kernel's reach (valid borders)
    source = cv2.imread(str(photos_dir / "astronaut.png"))
    for r in (a, b):
        c = json.loads(r["params"])["crop"]
        assert json.loads(r["params"])["borders"] == "valid" and sum(c.values()) > 0
        assert (r["width"], r["height"]) == (96 - c["left"] - c["right"], 64 - c["top"] - c["bottom"])
        cropped = source[c["top"] : 64 - c["bottom"], c["left"] : 96 - c["right"]]
        assert np.array_equal(cv2.imread(str(m.abspath(r["sharp_path"]))), cropped)
    # ... and share their group: the SHA-256 of the photo file's bytes
    photo_hash = hashlib.sha256((photos_dir / "astronaut.png").read_bytes()).hexdigest()
    assert a["group"] == b["group"] == f"sha256:{photo_hash}"
    assert len({r["group"] for r in rows.values()}) == 4
    assert read_errors(out).num_rows == 0


def test_same_output_for_any_worker_count(photos_dir, small_bank, tmp_path):
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert synth(photos_dir, small_bank, one, "--workers", 1, "--shard-size", 1, "--noise", "rsblur") == 0
    assert synth(photos_dir, small_bank, two, "--workers", 2, "--shard-size", 1, "--noise", "rsblur") == 0
    r1, r2 = table_by_key(one), table_by_key(two)
    assert r1.keys() == r2.keys()
    for k in r1:
        assert r1[k]["blur_sha256"] == r2[k]["blur_sha256"]
        assert r1[k]["params"] == r2[k]["params"]


def test_seed_changes_the_output(photos_dir, small_bank, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert synth(photos_dir, small_bank, a) == 0
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out", str(b),
                 "--seed", "8", "--quiet"]) == 0
    ra, rb = table_by_key(a), table_by_key(b)
    assert not ra.keys() & rb.keys(), "keys carry the run seed"
    rb = {k.replace("/seed8/", "/seed7/"): r for k, r in rb.items()}
    assert any(ra[k]["blur_sha256"] != rb[k]["blur_sha256"] for k in ra)


def test_rows_rerender_exactly(photos_dir, small_bank, tmp_path):
    from blurforge.imageio import encode_image, sha256_bytes
    from blurforge.kernels import read_bank
    from blurforge.synthesize import rerender

    out = tmp_path / "out"
    assert synth(photos_dir, small_bank, out, "--noise", "rsblur", "--saturation") == 0
    bank = read_bank(small_bank)
    for row in table_by_key(out).values():
        blurry = rerender(row, bank, out)
        p = json.loads(row["params"])
        assert sha256_bytes(encode_image(blurry, bit_depth=p["bit_depth"], fmt="png")) == row["blur_sha256"]
        assert p["quantiser"] == "exact" and blurry.dtype == np.uint8  # 8-bit photos: exactly rounded codes
        # rows from before the exact codes (no "quantiser") re-render as float sRGB, rounded when written
        del p["quantiser"]
        old = rerender({**row, "params": json.dumps(p)}, bank, out)
        assert old.dtype == np.float32
        assert np.abs(np.rint(old * 255) - blurry).max() <= 1 and np.mean(np.rint(old * 255) != blurry) < 1e-3


def test_bad_input_zoo_becomes_pairs_or_error_rows(small_bank, tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "zoo"
    d.mkdir()
    rgb = photo("coffee", (80, 60))
    write_png(d / "good.png", rgb)
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(d / "rgba.png"), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    deep = (rgb.astype(np.uint16) * 257 + np.arange(rgb.size, dtype=np.uint16).reshape(rgb.shape) % 200)
    cv2.imwrite(str(d / "deep16.png"), deep[..., ::-1])
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    (d / "text.png").write_text("not an image")
    (d / "empty.jpg").write_bytes(b"")
    full = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    write_png(d / "tiny.png", rgb[:8, :8])
    os.symlink(d / "nowhere.png", d / "dangling.png")

    out = tmp_path / "out"
    assert synth(d, small_bank, out) == 0
    assert re.search(r"synthesize: 5 pairs in .*, 5 failed inputs ->", capsys.readouterr().out)
    rows = table_by_key(out)
    good = {json.loads(r["params"])["input"] for r in rows.values()}
    assert good == {"good.png", "gray.png", "rgba.png", "deep16.png", "cmyk.jpg"}
    errs = ds.dataset(out / "errors", format="parquet").to_table().to_pylist()
    assert {Path(e["input"]).name for e in errs} == {"text.png", "empty.jpg", "truncated.png", "tiny.png",
                                                     "dangling.png"}
    for e in errs:
        assert Path(e["input"]).name in e["error"] and e["stage"]
    tiny = next(e for e in errs if e["input"].endswith("tiny.png"))
    assert "smaller than" in tiny["error"]
    # 16-bit input stays 16-bit at full precision
    deep_row = next(r for r in rows.values() if r["key"].endswith("deep16.png/0"))
    stored = cv2.imread(str(out / deep_row["sharp_path"]), cv2.IMREAD_UNCHANGED)
    c = json.loads(deep_row["params"])["crop"]
    assert stored.dtype == np.uint16 and np.array_equal(stored[..., ::-1], deep[c["top"] : 60 - c["bottom"],
                                                                                c["left"] : 80 - c["right"]])
    blur16 = cv2.imread(str(out / deep_row["blur_path"]), cv2.IMREAD_UNCHANGED)
    assert blur16.dtype == np.uint16 and np.any(blur16 % 257 != 0)


def test_nothing_succeeded_exits_nonzero(small_bank, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_text("no")
    assert synth(d, small_bank, tmp_path / "out") == 1
    assert read_errors(tmp_path / "out").num_rows == 1


def test_resume_refuses_other_settings(photos_dir, small_bank, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(photos_dir, small_bank, out) == 0
    assert synth(photos_dir, small_bank, out, "--noise", "rsblur") == 2
    assert "other settings (noise, noise_preset)" in capsys.readouterr().err


def test_png_compressors_write_the_same_pixels_and_a_resume_keeps_its_own(photos_dir, small_bank, tmp_path, capsys):
    runs = {}
    for compressor in ("isal", "libdeflate"):
        out = tmp_path / compressor
        assert synth(photos_dir, small_bank, out, "--png-compressor", compressor) == 0
        runs[compressor] = table_by_key(out)
        assert json.loads((out / "run.json").read_text())["png"]["compressor"] == compressor
    assert runs["isal"].keys() == runs["libdeflate"].keys()
    for key, row in runs["isal"].items():
        other = runs["libdeflate"][key]
        assert row["blur_sha256"] != other["blur_sha256"]  # other bytes...
        for col in ("blur_path", "sharp_path"):  # ... the same pixels
            a = cv2.imread(str(tmp_path / "isal" / row[col]), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(tmp_path / "libdeflate" / other[col]), cv2.IMREAD_UNCHANGED)
            assert a is not None and np.array_equal(a, b), (key, col)
    capsys.readouterr()
    assert synth(photos_dir, small_bank, tmp_path / "libdeflate") == 2  # the default is isal: refused, told how
    assert "--png-compressor libdeflate --png-level 1" in capsys.readouterr().err
    assert synth(photos_dir, small_bank, tmp_path / "libdeflate", "--png-compressor", "libdeflate") == 0
    assert synth(photos_dir, small_bank, tmp_path / "x", "--png-level", "5") == 2  # not an ISA-L level
    assert "--png-level must be an integer in 0..3 for --png-compressor isal" in capsys.readouterr().err


def test_resuming_a_run_of_an_older_schema_is_refused(photos_dir, small_bank, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(photos_dir, small_bank, out) == 0
    run = json.loads((out / "run.json").read_text())
    del run["manifest_schema"]  # as written before keys carried the run seed
    (out / "run.json").write_text(json.dumps(run))
    assert synth(photos_dir, small_bank, out) == 2
    assert "older blurforge (manifest schema 1" in capsys.readouterr().err


def test_missing_inputs_give_clear_errors(photos_dir, small_bank, tmp_path, capsys):
    assert synth(tmp_path / "nope", small_bank, tmp_path / "o") == 2
    assert "not a directory of sharp images" in capsys.readouterr().err
    assert synth(photos_dir, tmp_path / "k.parquet", tmp_path / "o") == 2
    assert "blurforge kernels" in capsys.readouterr().err
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out",
                 str(tmp_path / "o"), "--mode", "nonuniform", "--segmenter", "sam2",
                 "--sam2-checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err


def test_kill_and_resume_matches_uninterrupted_run(small_bank, tmp_path):
    d = tmp_path / "photos"
    names = ("astronaut", "coffee", "chelsea", "rocket")
    for i in range(24):
        write_png(d / f"p{i:02d}.png", np.roll(photo(names[i % 4], (192, 128)), i, axis=1))
    ref, out = tmp_path / "ref", tmp_path / "killed"
    args = ["--shard-size", "1", "--noise", "rsblur"]
    assert synth(d, small_bank, ref, *args) == 0

    cmd = [sys.executable, "-m", "blurforge", "synthesize", "--sharp", str(d), "--kernels", str(small_bank),
           "--out", str(out), "--seed", "7", "--quiet", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "stats").glob("*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted((out / "stats").glob("*.json"))
    assert 3 <= len(done) < 24, "the kill must land mid-run"
    # also simulate a kill between a shard's tables and its stats file, and a half-written image
    done[0].unlink()
    (out / "blur" / ".half-written.png.tmp").parent.mkdir(parents=True, exist_ok=True)
    (out / "blur" / ".half-written.png.tmp").write_bytes(b"\x89PNG partial")

    assert synth(d, small_bank, out, *args) == 0
    a, b = table_by_key(ref), table_by_key(out)
    keys = ds.dataset(out / "manifest", format="parquet").to_table().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 24
    assert a.keys() == b.keys()
    assert all(a[k]["blur_sha256"] == b[k]["blur_sha256"] for k in a)
    assert not list(out.rglob("*.tmp"))
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert files == sorted(p.relative_to(ref) for p in ref.rglob("*.png"))


def test_out_inside_the_inputs_is_refused_and_old_outputs_are_skipped(photos_dir, small_bank, tmp_path, capsys):
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(photos_dir, photos)
    # --out inside --sharp: refused, naming both and the fix; nothing written
    assert synth(photos, small_bank, photos / "out") == 2
    err = capsys.readouterr().err
    assert f"--out {photos / 'out'} is inside --sharp {photos}" in err and "choose an --out outside it" in err
    assert not (photos / "out").exists()
    # --sharp inside --out: refused too
    assert synth(photos, small_bank, tmp_path) == 2
    assert "inside --out" in capsys.readouterr().err
    # an earlier output that ended up inside the photo folder is not read as new photos: 4 pairs, not 4 + 8
    assert synth(photos, small_bank, tmp_path / "first", "--pairs-per-image", 2) == 0
    shutil.move(tmp_path / "first", photos / "first")
    capsys.readouterr()
    assert synth(photos, small_bank, tmp_path / "second") == 0
    captured = capsys.readouterr()
    assert "synthesize: 4 pairs in" in captured.out
    assert f"skipped 1 blurforge output folder(s) inside --sharp: {photos / 'first'}" in captured.err
    assert {json.loads(r["params"])["input"] for r in table_by_key(tmp_path / "second").values()} == {
        p.name for p in photos_dir.glob("*.png")}
    # pointing --sharp at an output folder itself is refused with the fix
    assert synth(photos / "first", small_bank, tmp_path / "third") == 2
    assert "is a blurforge output folder" in capsys.readouterr().err


def test_failed_inputs_are_named_at_the_end_and_by_inspect(photos_dir, small_bank, tmp_path, capsys):
    import shutil

    d = tmp_path / "photos"
    shutil.copytree(photos_dir, d)
    (d / "notes.png").write_text("not an image")
    write_png(d / "tiny.png", photo("coffee", (8, 8)))
    out = tmp_path / "out"
    assert synth(d, small_bank, out, "--shard-size", 2) == 0
    err = capsys.readouterr().err
    assert f"synthesize: 2 failed input(s) (read 2; all in {out}/errors):" in err
    assert f"{d / 'notes.png'}:" in err and "smaller than the 15x15 kernels" in err
    # an input that fails once per pair it was to give is one failed input
    assert synth(d, small_bank, tmp_path / "three", "--pairs-per-image", 3) == 0
    err = capsys.readouterr().err
    assert f"2 failed input(s) (6 error rows: read 6; all in {tmp_path / 'three'}/errors):" in err
    assert err.count("notes.png") == 1 and "(x3)" in err
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"2 failed input(s) (read 2; all in {out / 'errors'}):" in text and "notes.png" in text
    # build-manifest carries them beside the merged manifest, and inspect finds them there
    m = tmp_path / "m" / "all.parquet"
    assert main(["build-manifest", str(out), "--out", str(m), "--quiet"]) == 0
    assert f", 2 failed inputs (failed inputs: {m.with_name('all.errors.parquet')})" in capsys.readouterr().out
    assert main(["inspect", str(m), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["errors"]["count"] == s["errors"]["inputs"] == 2 and s["errors"]["by_stage"] == {"read": 2}
    assert {Path(e["input"]).name for e in s["errors"]["first"]} == {"notes.png", "tiny.png"}
    # a clean output says so
    assert synth(photos_dir, small_bank, tmp_path / "clean") == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "clean")]) == 0 and "failed inputs: none" in capsys.readouterr().out
