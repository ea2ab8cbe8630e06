"""Manifests: build-manifest (merge, splits, duplicates, verify), inspect, schema checks, kernels CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blurforge.cli import main
from blurforge.manifest import MANIFEST_SCHEMA, ManifestError, read_manifest, split_for
from conftest import write_png


@pytest.fixture(scope="module")
def two_runs(photos_dir, small_bank, tmp_path_factory):
    """Two uniform runs over the same photos with different seeds (no --key-prefix needed)."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 1), ("b", 2)):
        assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out",
                     str(root / name), "--seed", str(seed), "--pairs-per-image", "3", "--quiet"]) == 0
    return root


def test_build_manifest_merges_with_relative_paths_and_splits(two_runs, tmp_path, capsys):
    out = tmp_path / "sub" / "manifest.parquet"
    assert main(["build-manifest", str(two_runs / "a"), str(two_runs / "b"), "--out", str(out),
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--verify", "--quiet"]) == 0
    assert "24 pairs from 2 input(s)" in capsys.readouterr().out
    m = read_manifest(out)
    assert len(m) == 24 and m.table.schema.equals(MANIFEST_SCHEMA)
    assert pq.read_schema(out).metadata[b"blurforge.schema_version"] == b"2"
    for r in m.table.to_pylist():
        assert not Path(r["blur_path"]).is_absolute() and "\\" not in r["blur_path"]
        assert m.abspath(r["blur_path"]).is_file() and m.abspath(r["sharp_path"]).is_file()
        assert r["split"] == split_for(r["group"], 0.25, 0.25)
    # splits are a function of the group alone: merging in another order gives the same manifest
    out2 = tmp_path / "manifest2.parquet"
    assert main(["build-manifest", str(two_runs / "b"), str(two_runs / "a"), "--out", str(out2),
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--quiet"]) == 0
    t2 = read_manifest(out2).table
    assert t2.column("key").to_pylist() == m.table.column("key").to_pylist()
    assert t2.column("split").to_pylist() == m.table.column("split").to_pylist()


def test_runs_of_one_mode_merge_and_key_prefix_changes_names_only(two_runs, photos_dir, small_bank, tmp_path):
    """Different seeds merge without --key-prefix; a prefix renames keys but draws the same kernels."""
    m = read_manifest(two_runs / "a")
    assert all(k.startswith("uniform/seed1/") for k in m.table.column("key").to_pylist())
    out = tmp_path / "p"
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out", str(out),
                 "--seed", "1", "--pairs-per-image", "3", "--key-prefix", "mine", "--quiet"]) == 0
    plain = {r["key"]: r for r in m.table.to_pylist()}
    prefixed = {r["key"].replace("mine/", "uniform/", 1): r for r in read_manifest(out).table.to_pylist()}
    assert plain.keys() == prefixed.keys()
    for k, r in plain.items():
        assert (r["seed"], r["params"], r["blur_sha256"]) == (prefixed[k]["seed"], prefixed[k]["params"],
                                                               prefixed[k]["blur_sha256"])
    assert main(["build-manifest", str(two_runs / "a"), str(out), "--out", str(tmp_path / "m.parquet"),
                 "--quiet"]) == 0


def test_same_run_twice_and_clashing_keys_are_refused(two_runs, photos_dir, small_bank, tmp_path, capsys):
    assert main(["build-manifest", str(two_runs / "a"), str(two_runs / "a"), "--out",
                 str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err
    assert "the same pair 'uniform/seed1/" in err and "given twice" in err
    assert not (tmp_path / "m.parquet").exists()
    # the same seed over another folder whose files have the same names: a clash, fixed by a key prefix
    other = tmp_path / "other"
    other.mkdir()
    for p in sorted(photos_dir.glob("*.png")):
        write_png(other / p.name, np.ascontiguousarray(cv2.imread(str(p))[::-1, :, ::-1]))
    assert main(["synthesize", "--sharp", str(other), "--kernels", str(small_bank), "--out", str(tmp_path / "o"),
                 "--seed", "1", "--pairs-per-image", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["build-manifest", str(two_runs / "a"), str(tmp_path / "o"), "--out", str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'uniform/seed1/" in err and "naming different images" in err and "--key-prefix" in err


def test_verify_catches_a_changed_file(two_runs, tmp_path, capsys):
    import shutil

    copy = tmp_path / "a"
    shutil.copytree(two_runs / "a", copy)
    victim = sorted((copy / "blur").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert main(["build-manifest", str(copy), "--out", str(tmp_path / "m.parquet"), "--verify", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "does not match" in err
    assert not (tmp_path / "m.parquet").exists()


def test_schema_problems_name_the_file_and_fix(tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"key": ["x"]}), plain)
    with pytest.raises(ManifestError, match="plain.parquet: no 'blurforge.schema_version'"):
        read_manifest(plain)
    from blurforge.manifest import with_metadata

    partial = tmp_path / "partial.parquet"
    pq.write_table(with_metadata(pa.table({"key": ["x"]}), "manifest"), partial)
    with pytest.raises(ManifestError, match="'blur_path'.*missing"):
        read_manifest(partial)
    future = tmp_path / "future.parquet"
    t = with_metadata(MANIFEST_SCHEMA.empty_table(), "manifest")
    t = t.replace_schema_metadata({**t.schema.metadata, b"blurforge.schema_version": b"3"})
    pq.write_table(t, future)
    with pytest.raises(ManifestError, match="schema version '3'"):
        read_manifest(future)
    assert main(["inspect", str(tmp_path / "missing.parquet")]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_inspect_reports_counts_and_writes_preview(two_runs, tmp_path, capsys):
    import cv2

    out = tmp_path / "m.parquet"
    assert main(["build-manifest", str(two_runs / "a"), str(two_runs / "b"), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--preview", str(tmp_path / "p.png"), "--preview-count", "3", "--json"]) == 0
    text = capsys.readouterr().out
    s = json.loads(text[: text.rindex("}") + 1])
    assert s["pairs"] == 24 and s["by_source_split"] == {"uniform/train": 24}
    # 96x64 photographs, cropped by their 15x15 kernels' reach (at most 14 px per axis)
    assert 82 <= s["width"]["min"] <= s["width"]["max"] <= 96 and 50 <= s["height"]["min"] <= s["height"]["max"] <= 64
    assert 1 <= s["distinct_kernels"] <= 16 and 2 <= s["kernel_length"]["min"] <= s["kernel_length"]["max"] <= 30
    sheet = cv2.imread(str(tmp_path / "p.png"))
    assert sheet is not None and sheet.shape[0] > sheet.shape[1]  # three rows of (blurry | sharp)


def test_kernels_cli_writes_bank_and_preview(tmp_path, capsys):
    import cv2

    from blurforge.kernels import read_bank

    out = tmp_path / "k.parquet"
    assert main(["kernels", "--count", "12", "--seed", "5", "--size", "31", "--length-max", "60", "--out",
                 str(out), "--preview", str(tmp_path / "k.png"), "--quiet"]) == 0
    assert "12 kernels 31x31" in capsys.readouterr().out
    bank = read_bank(out)
    assert len(bank) == 12 and bank.kernel(bank.ids[0]).shape == (31, 31)
    assert cv2.imread(str(tmp_path / "k.png")) is not None
    # an existing bank is kept unless --overwrite: pairs made with it name its kernels
    before = out.read_bytes()
    assert main(["kernels", "--count", "3", "--seed", "6", "--size", "31", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["kernels", "--count", "3", "--seed", "6", "--size", "31", "--out", str(out), "--overwrite",
                 "--quiet"]) == 0
    assert len(read_bank(out)) == 3
    capsys.readouterr()
    assert main(["kernels", "--count", "2", "--size", "30", "--out", str(tmp_path / "e.parquet"), "--quiet"]) == 2
    assert "odd" in capsys.readouterr().err


def test_cli_rejects_abbreviations_and_unknown_commands(capsys):
    with pytest.raises(SystemExit):
        main(["kernels", "--cou", "3", "--out", "x.parquet"])
    with pytest.raises(SystemExit):
        main(["blur"])
    assert main([]) == 2


def test_workers_default_to_the_usable_cpus(tmp_path):
    from blurforge.cli import build_parser
    from blurforge.commands import cgroup_cpu_quota as _cgroup_cpu_quota, usable_cpus

    n = usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
    parser = build_parser()
    for argv in (["kernels", "--count", "1", "--out", "k"], ["synthesize", "--sharp", "s", "--kernels", "k", "--out", "o"],
                 ["frames", "--videos", "v", "--out", "o"]):
        assert parser.parse_args(argv).workers == n
    # cgroup v2: the process's own group's cpu.max; v1: cfs quota / period; no quota: None
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    (tmp_path / "v2" / "job" / "step").mkdir(parents=True)
    (tmp_path / "v2" / "job" / "step" / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path / "v2"), str(proc)) == 2.5
    (tmp_path / "v2" / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path / "v2"), str(proc)) is None
    proc.write_text("4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n")
    group = tmp_path / "v1" / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("150000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(tmp_path / "v1"), str(proc)) == 1.5
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_quota(str(tmp_path / "v1"), str(proc)) is None
    assert _cgroup_cpu_quota(str(tmp_path / "nothing"), str(tmp_path / "missing")) is None
