"""The manifest (schema v1): the contract between blurforge and deblurdiff.

A manifest is a Parquet dataset (one file or a directory of shards) plus image files whose
paths are POSIX paths relative to the manifest's directory. File metadata carries
``blurforge.schema_version = "1"``. One row per pair (see ``MANIFEST_SCHEMA``).

Failed inputs go to an errors table beside the manifest (``ERRORS_SCHEMA``): never silently
dropped. Every write here is atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from blurforge.storage import write_local_atomic

SCHEMA_VERSION = "1"
VERSION_KEY = b"blurforge.schema_version"
KIND_KEY = b"blurforge.kind"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # stable id, independent of processing order
        pa.field("blur_path", pa.string(), nullable=False),  # relative to the manifest's directory
        pa.field("sharp_path", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / val / test
        pa.field("source", pa.string(), nullable=False),  # uniform, nonuniform, frames, import:NAME
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=True),  # per-sample seed; with params re-renders the pair
        pa.field("params", pa.string(), nullable=False),  # JSON of every sampled parameter
        pa.field("blur_sha256", pa.string(), nullable=False),
        pa.field("sharp_sha256", pa.string(), nullable=False),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("input", pa.string()),  # the input that failed (a path, a key, a clip)
        pa.field("stage", pa.string()),  # read, render, encode, write, ...
        pa.field("error", pa.string()),  # the message, naming the input and the fix
        pa.field("key", pa.string()),  # sample key when one existed
        pa.field("shard", pa.string()),
    ]
)

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and what to do."""


# --------------------------------------------------------------------------------------- writing


def with_metadata(table: pa.Table, kind: str, extra: dict[str, str] | None = None) -> pa.Table:
    """``table`` with blurforge's schema-version and kind metadata attached."""
    meta = dict(table.schema.metadata or {})
    meta[VERSION_KEY] = SCHEMA_VERSION.encode()
    meta[KIND_KEY] = kind.encode()
    for k, v in (extra or {}).items():
        meta[f"blurforge.{k}".encode()] = str(v).encode()
    return table.replace_schema_metadata(meta)


def parquet_bytes(table: pa.Table, kind: str) -> bytes:
    """``table`` with blurforge's metadata as Parquet file bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(with_metadata(table, kind), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, kind: str) -> Path:
    """Write ``table`` to a local ``path`` as Parquet, atomically."""
    return write_local_atomic(Path(path), parquet_bytes(table, kind))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_local_atomic(Path(path), text.encode("utf-8"))


def rows_table(rows: Sequence[dict]) -> pa.Table:
    """Manifest rows (dicts with the schema's columns) as a table of ``MANIFEST_SCHEMA``."""
    return pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)


def errors_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{name: r.get(name) for name in ERRORS_SCHEMA.names} for r in rows], schema=ERRORS_SCHEMA
    )


# --------------------------------------------------------------------------------------- reading


@dataclass
class Manifest:
    """A loaded manifest: the table and the directory its relative paths start from."""

    table: pa.Table
    root: Path  # image paths are relative to this directory
    location: Path  # the file or directory that was read

    def __len__(self) -> int:
        return self.table.num_rows

    def abspath(self, rel: str) -> Path:
        return resolve(self.root, rel)


def resolve(root: Path, rel: str) -> Path:
    """The file a manifest path names: ``root`` joined with the POSIX path ``rel``, normalised
    lexically (so ``..`` works even where an intermediate directory does not exist yet)."""
    return Path(os.path.normpath(os.path.join(root, *rel.split("/"))))


def _manifest_location(path: Path) -> Path:
    """Accept a Parquet file, a directory of shards, or a synthesize output dir (``OUT/manifest``)."""
    if path.is_dir() and (path / "manifest").is_dir():
        return path / "manifest"
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest. Raises ``ManifestError`` naming the input and the fix."""
    given = Path(path)
    if not given.exists():
        raise ManifestError(
            f"{given}: no such manifest — pass a .parquet written by 'blurforge build-manifest' "
            "or the output directory of 'blurforge synthesize'"
        )
    loc = _manifest_location(given)
    files = sorted(loc.glob("*.parquet")) if loc.is_dir() else [loc]
    if not files:
        raise ManifestError(f"{loc}: directory holds no .parquet shards — did the run finish any shard?")
    try:
        table = ds.dataset([str(f) for f in files], format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{loc}: not a readable Parquet manifest ({exc})") from exc
    for f in files:
        meta = pq.read_schema(f).metadata or {}
        version = meta.get(VERSION_KEY)
        if version is None:
            raise ManifestError(
                f"{f}: no 'blurforge.schema_version' metadata — was it written by blurforge?"
            )
        if version.decode() != SCHEMA_VERSION:
            raise ManifestError(
                f"{f}: schema version {version.decode()!r}, this blurforge reads {SCHEMA_VERSION!r} — "
                "rebuild it with this version's 'blurforge build-manifest'"
            )
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ManifestError(
            f"{loc}: column(s) {', '.join(repr(m) for m in missing)} missing — "
            "was it written by 'blurforge synthesize' or 'blurforge build-manifest'?"
        )
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    root = loc if loc.is_dir() else loc.parent
    if loc.is_dir() and loc.name == "manifest":
        root = loc.parent  # synthesize outputs keep paths relative to OUT
    return Manifest(table=table, root=root, location=loc)


def read_errors(out_dir: str | os.PathLike) -> pa.Table:
    """The errors table of a synthesize output directory (empty if none)."""
    d = Path(out_dir) / "errors"
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return ERRORS_SCHEMA.empty_table()
    return ds.dataset([str(f) for f in files], format="parquet").to_table()


# ---------------------------------------------------------------------------------------- splits


def split_for(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of ``key``: a hash of the key alone, so order and merging never change it."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise ValueError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must be in [0, 1] "
            "and sum to at most 1"
        )


# ----------------------------------------------------------------------------------------- merge


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _relocate(rel: str, src_root: Path, dst_root: Path) -> str:
    """Rewrite a path relative to ``src_root`` so it is relative to ``dst_root`` (POSIX)."""
    absolute = os.path.abspath(resolve(src_root, rel))
    return Path(os.path.relpath(absolute, os.path.abspath(dst_root))).as_posix()


def merge_manifests(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    extra_tables: Iterable[tuple[str, pa.Table, Path]] = (),
) -> pa.Table:
    """Merge manifests into one table whose paths are relative to ``out``'s directory.

    ``inputs``: manifests (files, shard directories or synthesize outputs). ``extra_tables``:
    already-built ``(name, table, root)`` triples (e.g. imports). Splits are re-assigned from the
    keys when a fraction is given, otherwise kept. Duplicate keys are an error naming both inputs.
    """
    out = Path(out)
    dst_root = out.parent
    parts: list[tuple[str, pa.Table, Path]] = []
    for inp in inputs:
        m = read_manifest(inp)
        parts.append((str(inp), m.table, m.root))
    parts.extend(extra_tables)
    if not parts:
        raise ManifestError("nothing to merge — name at least one manifest or output directory")

    seen: dict[str, str] = {}
    merged: list[pa.Table] = []
    for name, table, root in parts:
        keys = table.column("key").to_pylist()
        for k in keys:
            if k in seen:
                raise ManifestError(
                    f"duplicate key {k!r}: in {seen[k]} and {name} — keys must be unique; "
                    "give one of the runs a different --key-prefix"
                )
            seen[k] = name
        cols = {c: table.column(c) for c in MANIFEST_SCHEMA.names}
        cols["blur_path"] = pa.array(
            [_relocate(p, root, dst_root) for p in table.column("blur_path").to_pylist()], pa.string()
        )
        cols["sharp_path"] = pa.array(
            [_relocate(p, root, dst_root) for p in table.column("sharp_path").to_pylist()], pa.string()
        )
        merged.append(pa.table(cols, schema=MANIFEST_SCHEMA))
    table = pa.concat_tables(merged)
    if val_fraction is not None or test_fraction is not None:
        v, t = val_fraction or 0.0, test_fraction or 0.0
        check_fractions(v, t)
        splits = [split_for(k, v, t) for k in table.column("key").to_pylist()]
        table = table.set_column(
            table.schema.get_field_index("split"), MANIFEST_SCHEMA.field("split"), pa.array(splits, pa.string())
        )
    return table.sort_by("key")


def verify_manifest(table: pa.Table, root: Path, progress: bool = True) -> list[dict]:
    """Re-hash every file; returns error rows (missing file or hash mismatch)."""
    from tqdm import tqdm

    problems: list[dict] = []
    rows = table.select(["key", "blur_path", "sharp_path", "blur_sha256", "sharp_sha256"]).to_pylist()
    for row in tqdm(rows, desc="verify", unit="pair", disable=not progress):
        for which in ("blur", "sharp"):
            p = resolve(root, row[f"{which}_path"])
            if not p.is_file():
                problems.append(
                    {"input": str(p), "stage": "verify", "key": row["key"], "error": f"{p}: {which} image missing"}
                )
                continue
            digest = sha256_file(p)
            if digest != row[f"{which}_sha256"]:
                problems.append(
                    {
                        "input": str(p),
                        "stage": "verify",
                        "key": row["key"],
                        "error": f"{p}: sha256 {digest[:12]}… does not match the manifest's "
                        f"{row[f'{which}_sha256'][:12]}… — the file changed after it was written",
                    }
                )
    return problems
