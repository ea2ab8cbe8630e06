"""The manifest (schema v2): the contract between blurforge and deblurdiff.

A manifest is a Parquet dataset (one file or a directory of shards) plus image files whose
paths are POSIX paths relative to the manifest's directory. File metadata carries
``blurforge.schema_version = "2"``. One row per pair (see ``MANIFEST_SCHEMA``).

Splits are by source, never by pair: every row names its ``group`` (the source photo's or clip's
content hash, an imported dataset's scene), ``build-manifest`` draws a group's split from a hash
of the group alone, and :func:`leakage` finds any group (or sharp image) in two splits.
Version-1 manifests (no ``group`` column) stay readable: :func:`legacy_group` derives a group
for each of their rows.

Failed inputs go to an errors table beside the manifest (``ERRORS_SCHEMA``): never silently
dropped. Every write here is atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from blurforge.storage import write_local_atomic

SCHEMA_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # version 1: no ``group`` column (derived on reading, see legacy_group)
VERSION_KEY = b"blurforge.schema_version"
KIND_KEY = b"blurforge.kind"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # stable id, independent of processing order
        pa.field("blur_path", pa.string(), nullable=False),  # relative to the manifest's directory
        pa.field("sharp_path", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / val / test
        pa.field("group", pa.string(), nullable=False),  # the source (photo, clip, scene): one split per group
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
    """Manifest rows (dicts with the schema's columns) as a table of ``MANIFEST_SCHEMA``.

    Every row must name its ``group``: a row without one could leak into two splits."""
    rows = list(rows)
    for r in rows:
        if not r.get("group"):
            raise ValueError(f"manifest row {r.get('key')!r} has no 'group' — every row must name its source "
                             "(the photo's or clip's content hash, the imported scene) so splits stay by source")
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


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
    legacy_files: int = 0  # schema-v1 files among those read: their groups were derived (legacy_group)

    def __len__(self) -> int:
        return self.table.num_rows

    def abspath(self, rel: str) -> Path:
        return resolve(self.root, rel)

    def legacy_note(self) -> str | None:
        """A one-line note when groups were derived from a schema-v1 manifest, else None."""
        if not self.legacy_files:
            return None
        return (f"note: {self.location} is schema v1 (no 'group' column): groups derived from sharp_sha256 "
                "(synthesize), params.video (frames), the scene folder (imports) — rebuild it with "
                "'blurforge build-manifest' to store them")


def resolve(root: Path, rel: str) -> Path:
    """The file a manifest path names: ``root`` joined with the POSIX path ``rel``, normalised
    lexically (so ``..`` works even where an intermediate directory does not exist yet)."""
    return Path(os.path.normpath(os.path.join(root, *rel.split("/"))))


def _manifest_location(path: Path) -> Path:
    """Accept a Parquet file, a directory of shards, or a synthesize output dir (``OUT/manifest``)."""
    if path.is_dir() and (path / "manifest").is_dir():
        return path / "manifest"
    return path


def legacy_group(row: dict) -> str:
    """The best group a schema-v1 row allows (v1 rows carry no content hash of their source):

    - ``uniform`` / ``nonuniform``: ``sharp:<sharp_sha256>`` — every pair of one photo stores the
      same sharp image, so its pairs (of any run and mode) share it;
    - ``frames``: ``clip:<params.video>``, the clip's path relative to ``--videos``;
    - ``import:NAME``: the scene, as :func:`blurforge.imports.scene_group` derives it from params;
    - anything else: ``key:<key>`` (the pair alone).
    """
    source = row.get("source") or ""
    try:
        params = json.loads(row.get("params") or "{}")
    except ValueError:
        params = {}
    if source in ("uniform", "nonuniform") and row.get("sharp_sha256"):
        return f"sharp:{row['sharp_sha256']}"
    if source == "frames" and params.get("video"):
        return f"clip:{params['video']}"
    if source.startswith("import:"):
        from blurforge.imports import scene_group

        group = scene_group(params)
        if group:
            return group
    return f"key:{row['key']}"


def _read_file(f: Path) -> tuple[pa.Table, bool]:
    """One manifest file as a table of ``MANIFEST_SCHEMA``; True when it was schema v1."""
    meta = pq.read_schema(f).metadata or {}
    version = meta.get(VERSION_KEY)
    if version is None:
        raise ManifestError(f"{f}: no 'blurforge.schema_version' metadata — was it written by blurforge?")
    version = version.decode()
    if version not in READABLE_VERSIONS:
        raise ManifestError(
            f"{f}: schema version {version!r}, this blurforge reads {' and '.join(READABLE_VERSIONS)} — "
            "rebuild it with this version's 'blurforge build-manifest', or update blurforge"
        )
    table = pq.ParquetFile(f).read()
    legacy = version == "1"
    wanted = [n for n in MANIFEST_SCHEMA.names if not (legacy and n == "group")]
    missing = [n for n in wanted if n not in table.column_names]
    if missing:
        raise ManifestError(
            f"{f}: column(s) {', '.join(repr(m) for m in missing)} missing — "
            "was it written by 'blurforge synthesize' or 'blurforge build-manifest'?"
        )
    if legacy:
        groups = [legacy_group(r) for r in table.select(["key", "source", "params", "sharp_sha256"]).to_pylist()]
        table = table.drop_columns([c for c in ("group",) if c in table.column_names])
        table = table.append_column("group", pa.array(groups, pa.string()))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA), legacy


def not_a_manifest(given: Path, loc: Path) -> str:
    """Why the folder ``given`` (read at ``loc``) holds no manifest, and what to run instead: a
    run that finished no shard yet, a folder of photos or videos, or a paired dataset."""
    if loc != given and (given / "run.json").is_file():
        return (f"{given}: a synthesize/frames output with no finished shard yet (manifest/ is empty) — re-run "
                "the command that made it (it resumes), then merge it")
    from blurforge.imageio import IMAGE_EXTENSIONS
    from blurforge.imports import detect_layout
    from blurforge.video import VIDEO_EXTENSIONS

    try:
        layout = detect_layout(given)
    except (ValueError, OSError):
        layout = None
    if layout in ("gopro", "reds"):
        return (f"{given}: a dataset of existing blurry/sharp pairs ({'GoPro' if layout == 'gopro' else 'REDS'}-like folders), not a blurforge "
                f"output — bring it in with 'blurforge build-manifest --import NAME={given} --out manifest.parquet'")
    images = videos = 0
    for _, _, files in os.walk(given):
        for f in files:
            ext = os.path.splitext(f)[1].lower()
            images += ext in IMAGE_EXTENSIONS
            videos += ext in VIDEO_EXTENSIONS
    if images:
        return (f"{given}: a folder of {images} image(s), not a blurforge output or manifest — make pairs from them "
                f"first: 'blurforge synthesize --sharp {given} --kernels kernels.parquet --out pairs/' (a bank from "
                "'blurforge kernels'), then merge pairs/; a dataset of existing blurry/sharp pairs comes in with "
                "--import NAME=PATH")
    if videos:
        return (f"{given}: a folder of {videos} video(s), not a blurforge output or manifest — make pairs from them "
                f"first: 'blurforge frames --videos {given} --out frames/', then merge frames/")
    return (f"{given}: holds no manifest (no .parquet file) — pass a synthesize/frames output folder, its manifest/ "
            "folder or a manifest .parquet written by 'blurforge build-manifest'")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest (schema v2, or v1 with derived groups). Raises
    ``ManifestError`` naming the input and the fix."""
    given = Path(path)
    if not given.exists():
        raise ManifestError(
            f"{given}: no such manifest — pass a .parquet written by 'blurforge build-manifest' "
            "or the output directory of 'blurforge synthesize'"
        )
    loc = _manifest_location(given)
    files = sorted(loc.glob("*.parquet")) if loc.is_dir() else [loc]
    if not files:
        raise ManifestError(not_a_manifest(given, loc))
    tables, legacy = [], 0
    for f in files:
        try:
            table, old = _read_file(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ManifestError(f"{f}: not a readable Parquet manifest ({exc})") from exc
        tables.append(table)
        legacy += old
    table = pa.concat_tables(tables)
    root = loc if loc.is_dir() else loc.parent
    if loc.is_dir() and loc.name == "manifest":
        root = loc.parent  # synthesize outputs keep paths relative to OUT
    return Manifest(table=table, root=root, location=loc, legacy_files=legacy)


def read_errors(out_dir: str | os.PathLike) -> pa.Table:
    """The errors table of a synthesize/frames output directory (empty if none)."""
    d = Path(out_dir) / "errors"
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return ERRORS_SCHEMA.empty_table()
    return ds.dataset([str(f) for f in files], format="parquet").to_table()


def errors_path_for(manifest: str | os.PathLike) -> Path:
    """Where build-manifest writes the errors table of a manifest file: ``NAME.errors.parquet``."""
    m = Path(manifest)
    return m.with_name(f"{m.stem}.errors.parquet")


def errors_beside(manifest: str | os.PathLike) -> tuple[pa.Table, Path | None]:
    """The errors table beside a manifest (a file, a shard directory or an output folder) and where
    it lives: ``OUT/errors/`` of a synthesize or frames output, ``NAME.errors.parquet`` beside a
    manifest file; ``(empty table, None)`` when there is none."""
    loc = _manifest_location(Path(manifest))
    if loc.is_dir():
        errors_dir = loc.parent / "errors"
        if errors_dir.is_dir():
            return read_errors(errors_dir.parent), errors_dir
        return ERRORS_SCHEMA.empty_table(), None
    path = errors_path_for(loc)
    if path.is_file():
        return pq.ParquetFile(path).read(), path
    return ERRORS_SCHEMA.empty_table(), None


# ---------------------------------------------------------------------------------------- splits


def split_for(group: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a ``group`` (a source: photo, clip, scene): a hash of the group alone,
    so every pair of one source lands in one split, and order and merging never change it."""
    u = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "little") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def leakage(table: pa.Table) -> dict:
    """Sources found in more than one split.

    Returns ``{"groups": {group: [splits]}, "sharp": {sharp_sha256: [splits]}}``: groups in two
    or more splits (a leak by construction), and sharp images (by content) in two or more splits
    — the same image reaching two splits through different groups (e.g. one photo both
    synthesised and imported, or a lossless re-save of a photo under another name).
    """
    def spread(column: str) -> dict[str, list[str]]:
        splits: dict[str, set] = defaultdict(set)
        for value, split in zip(table.column(column).to_pylist(), table.column("split").to_pylist()):
            splits[value].add(split)
        return {v: sorted(s) for v, s in sorted(splits.items()) if len(s) > 1}

    return {"groups": spread("group"), "sharp": spread("sharp_sha256")}


def leakage_report(leaks: dict, limit: int = 5) -> dict:
    """:func:`leakage`'s result made short: counts and the first ``limit`` examples of each kind."""
    return {"groups": len(leaks["groups"]), "sharp": len(leaks["sharp"]),
            "group_examples": dict(list(leaks["groups"].items())[:limit]),
            "sharp_examples": dict(list(leaks["sharp"].items())[:limit])}


def leakage_lines(report: dict) -> list[str]:
    """Human-readable lines for a :func:`leakage_report` (empty when nothing leaks)."""
    lines = []
    if report["groups"]:
        lines.append(f"LEAKAGE: {report['groups']} source group(s) in more than one split — all pairs of a "
                     "photo, clip or scene must share a split; re-assign with --val-fraction/--test-fraction")
        lines += [f"  {g} in {', '.join(s)}" for g, s in report["group_examples"].items()]
    if report["sharp"]:
        lines.append(f"warning: {report['sharp']} sharp image(s) in more than one split through different groups "
                     "— one picture entered twice (e.g. synthesised and imported, or saved under two names)")
        lines += [f"  sharp_sha256 {h[:16]}… in {', '.join(s)}" for h, s in report["sharp_examples"].items()]
    return lines


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
    notes: list | None = None,
) -> pa.Table:
    """Merge manifests into one table whose paths are relative to ``out``'s directory.

    ``inputs``: manifests (files, shard directories or synthesize outputs). ``extra_tables``:
    already-built ``(name, table, root)`` triples (e.g. imports). When a fraction is given every
    row's split is re-drawn from its ``group`` (:func:`split_for`), so all pairs of a source
    share a split; otherwise the splits are kept. A key seen twice is an error naming both
    inputs: the same pair twice (one run given twice) or two different pairs under one key.
    ``notes``: a list that receives a line per schema-v1 input (its groups were derived).
    """
    out = Path(out)
    dst_root = out.parent
    parts: list[tuple[str, pa.Table, Path]] = []
    for inp in inputs:
        m = read_manifest(inp)
        parts.append((str(inp), m.table, m.root))
        if notes is not None and m.legacy_note():
            notes.append(m.legacy_note())
    parts.extend(extra_tables)
    if not parts:
        raise ManifestError("nothing to merge — name at least one manifest or output directory")

    seen: dict[str, tuple[str, str, str]] = {}  # key -> (input, blur_sha256, sharp_sha256)
    merged: list[pa.Table] = []
    for name, table, root in parts:
        keys = table.column("key").to_pylist()
        hashes = zip(table.column("blur_sha256").to_pylist(), table.column("sharp_sha256").to_pylist())
        for k, (blur_hash, sharp_hash) in zip(keys, hashes):
            if k in seen:
                _duplicate(k, seen[k], (name, blur_hash, sharp_hash))
            seen[k] = (name, blur_hash, sharp_hash)
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
        by_group = {g: split_for(g, v, t) for g in set(table.column("group").to_pylist())}
        splits = [by_group[g] for g in table.column("group").to_pylist()]
        table = table.set_column(
            table.schema.get_field_index("split"), MANIFEST_SCHEMA.field("split"), pa.array(splits, pa.string())
        )
    return table.sort_by("key")


def _duplicate(key: str, first: tuple[str, str, str], second: tuple[str, str, str]) -> None:
    """Raise the error for a key seen twice: the same pair twice, or a clash of two pairs."""
    if first[1:] == second[1:]:
        where = f"twice in {first[0]}" if first[0] == second[0] else f"in {first[0]} and {second[0]}"
        raise ManifestError(
            f"the same pair {key!r} is {where} (same key, same images) — the same run (same mode, seed "
            "and inputs) was given twice; merge each run once"
        )
    raise ManifestError(
        f"duplicate key {key!r}: in {first[0]} and {second[0]}, naming different images — two runs of the "
        "same mode and seed over different folders with the same file names; re-run one of them with "
        "another --key-prefix (its kernels do not change), or with another --seed"
    )


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
