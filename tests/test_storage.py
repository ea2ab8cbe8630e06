"""Output locations: local paths, file:// URIs, and a non-local pyarrow filesystem."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from blurforge.storage import Location


def test_local_writes_are_atomic_and_listable(tmp_path):
    loc = Location(tmp_path / "out")
    loc.write_text("stats/b.json", "{}")
    loc.write_bytes("stats/a.json", b"{}")
    assert loc.exists("stats/a.json") and not loc.exists("stats/c.json")
    assert loc.list("stats", ".json") == ["a.json", "b.json"]
    assert loc.list("missing") == []
    assert not list((tmp_path / "out").rglob("*.tmp"))
    (tmp_path / "out" / "stats" / ".x.json.123.tmp").write_text("partial")
    assert loc.sweep_temp_files() == 1


def test_object_store_code_path_on_a_non_local_filesystem():
    fsspec = pytest.importorskip("fsspec")
    memory = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    loc = Location("/bucket/run", filesystem=memory)
    assert not loc.local
    loc.write_text("run.json", json.dumps({"seed": 1}))
    loc.write_bytes("blur/shard-00000/x.png", b"\x89PNG")
    assert json.loads(loc.read_text("run.json")) == {"seed": 1}
    assert loc.exists("blur/shard-00000/x.png") and loc.list("blur/shard-00000") == ["x.png"]
    assert loc.sweep_temp_files() == 0
    with pytest.raises(ValueError, match="not a local directory"):
        loc.local_path()


def test_bad_uri_names_the_fix():
    with pytest.raises(ValueError, match="nosuchscheme://x.*s3://"):
        Location("nosuchscheme://x/y")


def test_synthesize_to_a_file_uri(photos_dir, small_bank, tmp_path):
    from blurforge.cli import main

    out = tmp_path / "uri-out"
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out",
                 out.as_uri(), "--seed", "1", "--quiet"]) == 0
    t = ds.dataset(out / "manifest", format="parquet").to_table()
    assert t.num_rows == 4 and all((out / p).is_file() for p in t.column("blur_path").to_pylist())


def test_kernel_bank_to_a_file_uri(tmp_path):
    from blurforge.cli import main
    from blurforge.kernels import read_bank

    out = tmp_path / "banks" / "k.parquet"
    assert main(["kernels", "--count", "3", "--size", "15", "--length-max", "20", "--out", out.as_uri(), "--quiet"]) == 0
    assert len(read_bank(out)) == 3 and not list(out.parent.glob("*.tmp"))
