"""What each ``blurforge`` command does once its options are known: run the job, print what it
did, return the exit status.

``blurforge.cli`` parses the command line into these functions (keyword arguments named like the
options: ``--pairs-per-image`` is ``pairs_per_image``, with the same defaults); ``blurforge.demo``
calls them directly. They print the summary and the failed inputs; errors in the inputs raise
``UserError`` / ``ValueError`` / ``FileNotFoundError`` for the caller to report (exit status 2).
Heavy imports happen inside each function, so importing this module is instant.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

# the exit-status rule of every command (blurforge --help and the README say the same)
EXIT_OK = 0  # finished; inputs that could not be used are in the errors table and named in the summary
EXIT_INCOMPLETE = 1  # nothing usable was made, or a shard still failed after its retries
EXIT_USAGE = 2  # bad arguments or inputs, found before any work
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_RULE = """\
exit status (every command):
  0    finished. Partial success is success: inputs that could not be used (corrupt images,
       undecodable clips) are rows of the errors table and named, with reasons, in the summary
  1    nothing usable was made (no pair succeeded, no pair to write), or a shard still failed after
       its --retries: the output is incomplete; re-run the same command to resume
  2    bad arguments or inputs, found before any work; the message names the input and the fix
  130  interrupted (Ctrl-C); the message gives the command that resumes"""

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # = blurforge.segment.DEFAULT_SAM2_CONFIG (tested)


def usable_cpus() -> int:
    """CPUs this process may use: the affinity mask (taskset, Slurm, containers' cpusets), further
    limited by a cgroup CPU quota (Docker/Kubernetes ``--cpus``: cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded up; at least 1. The ``--workers`` default."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """CPUs allowed by this process's cgroup quota (None: no quota, or nothing readable)."""
    base = Path(root)
    try:
        groups = [line.split(":", 2) for line in Path(proc).read_text().splitlines() if line.count(":") >= 2]
    except OSError:
        groups = []
    candidates = []  # (kind, folder) from the process's own group up to the hierarchy's root
    for _, controllers, rel in groups:
        rel = rel.strip().lstrip("/")
        if controllers == "":  # cgroup v2 (unified)
            candidates += [("v2", base / rel), ("v2", base)]
        elif "cpu" in controllers.split(","):
            for mount in (base / controllers, base / "cpu", base / "cpu,cpuacct"):
                candidates += [("v1", mount / rel), ("v1", mount)]
    for kind, folder in candidates:
        try:
            if kind == "v2":
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                return None if quota == "max" else int(quota) / int(period)
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            return quota / period if quota > 0 and period > 0 else None
        except (OSError, ValueError):
            continue
    return None


class UserError(Exception):
    """An error caused by the command's inputs; printed without a traceback (exit status 2)."""


# --------------------------------------------------------------------------------------- kernels


def kernels(*, count: int, out: str, seed: int = 0, size: int = 63, working_size: int | None = None,
            overwrite: bool = False, length_min: float = 1.0, length_max: float = 1000.0, exposure: float = 1.0,
            workers: int | None = None, preview: str | None = None, preview_count: int = 64,
            backend: str = "local", ray_address: str | None = None, quiet: bool = False) -> int:
    """``blurforge kernels``: generate a bank, write it (and a contact sheet), print its summary."""
    from blurforge.kernels import bank_summary, generate_bank, kernel_contact_sheet, read_bank, write_bank
    from blurforge.storage import file_exists

    if file_exists(out) and not overwrite:
        raise UserError(f"--out {out} already exists — pairs made with it name its kernels; pass --overwrite "
                        "to replace it, or choose another --out")
    t0 = time.perf_counter()
    table = generate_bank(
        count=count, seed=seed, size=size, length_min=length_min, length_max=length_max, exposure=exposure,
        workers=workers or usable_cpus(), progress=not quiet, backend=backend, ray_address=ray_address,
        working_size=working_size,
    )
    write_bank(table, out)
    s = bank_summary(table)
    extra = ""
    if preview:
        bank = read_bank(out)
        kernel_contact_sheet(bank.padded(range(min(len(bank), preview_count))), preview)
        extra = f", preview {preview}"
    larger = f" ({s['larger_than_size']} larger, up to {s['size_max']})" if s["larger_than_size"] else ""
    print(
        f"kernels: {s['count']} kernels {size}x{size}{larger} in {time.perf_counter() - t0:.1f} s, "
        f"median extent {s['extent_q'][2]:.0f} px (95%: {s['extent_q'][4]:.0f}), median radius of gyration "
        f"{s['rg_q'][2]:.1f} px, {s['total_resamples']} trajectories resampled "
        f"({100 * s['rejection_rate']:.1f}% rejected) -> {out}{extra}"
    )
    return EXIT_OK


# ------------------------------------------------------------------------------ sharded jobs


def synthesize(*, sharp: str, kernels: str, out: str, seed: int = 0, mode: str = "uniform",
               segmenter: str = "classical", sam2_config: str = SAM2_CONFIG, sam2_checkpoint: str | None = None,
               device: str = "cpu", max_objects: int = 6, workers: int | None = None, noise: str = "none",
               noise_preset: str = "realblur", saturation: bool = False, jpeg_quality: int | None = None,
               pairs_per_image: int = 1, borders: str = "valid", shard_size: int = 64, key_prefix: str | None = None,
               retries: int = 2, png_level: int = 1, png_compressor: str = "isal", backend: str = "local",
               ray_address: str | None = None, quiet: bool = False, rerun: str | None = None) -> int:
    """``blurforge synthesize``: run the job (resuming finished shards), print its summary.
    ``rerun``: the command line that resumes it, named if a shard still fails."""
    from blurforge.synthesize import run_synthesize, summarize_timing

    s = run_synthesize(
        sharp=sharp, kernels=kernels, out=out, seed=seed, mode=mode, workers=workers or usable_cpus(), noise=noise,
        saturation=saturation, jpeg_quality=jpeg_quality, pairs_per_image=pairs_per_image, shard_size=shard_size,
        key_prefix=key_prefix, progress=not quiet, backend=backend, ray_address=ray_address, retries=retries,
        segmenter=segmenter, sam2_config=sam2_config, sam2_checkpoint=sam2_checkpoint, device=device,
        max_objects=max_objects, noise_preset=noise_preset, borders=borders, png_level=png_level,
        png_compressor=png_compressor,
    )
    return report_job("synthesize", s, summarize_timing(s.stats), out, {"--sharp": sharp}, retries, rerun)


def frames(*, videos: str, out: str, seed: int = 0, decoder: str = "decord", window: str | tuple = "7",
           interpolate: int = 0, response: str = "srgb", stride: int | None = None, workers: int | None = None,
           shard_size: int = 1, noise: str = "none", noise_preset: str = "realblur", saturation: bool = False,
           key_prefix: str = "frames", retries: int = 2, png_level: int = 1, png_compressor: str = "isal",
           backend: str = "local", ray_address: str | None = None, quiet: bool = False,
           rerun: str | None = None) -> int:
    """``blurforge frames``: run the job (resuming finished shards), print its summary."""
    from blurforge.frames import run_frames

    s = run_frames(
        videos=videos, out=out, seed=seed, decoder=decoder, window=window, interpolate=interpolate,
        response=response, stride=stride, workers=workers or usable_cpus(), shard_size=shard_size,
        key_prefix=key_prefix, progress=not quiet, backend=backend, ray_address=ray_address, retries=retries,
        noise=noise, noise_preset=noise_preset, saturation=saturation, png_level=png_level,
        png_compressor=png_compressor,
    )
    keys = ("decode_s", "interpolate_s", "average_s", "encode_s")
    return report_job("frames", s, {k: sum(x.get(k, 0.0) for x in s.stats) for k in keys}, out,
                      {"--videos": videos}, retries, rerun)


def report_job(command: str, s, timing: dict[str, float], out: str, inputs: dict[str, str], retries: int,
               rerun: str | None) -> int:
    """The end of a sharded job (synthesize, frames): notes, the output's failed inputs with their
    reasons, the one-line summary, and the exit status.

    Paths are shown as typed: ``out`` and the input folders ``inputs`` (flag -> folder as typed),
    whose absolute form the error rows carry. Failed inputs are counted once however many error
    rows they have (synthesize writes one per pair an image was to give)."""
    from blurforge.summary import typed_roots

    out = str(out).rstrip("/") or "/"
    roots = typed_roots(*[(str(Path(p).resolve()), p) for p in inputs.values()],  # what run.json records
                        *[(os.path.abspath(p), p) for p in inputs.values()])
    for note in s.notes:
        print(f"{command}: {note}", file=sys.stderr)
    error_shards = [st["shard"] for st in s.earlier + s.stats if st.get("errors")]
    failed_inputs = _print_failed_inputs(command, out, error_shards, roots)
    failed = f", {failed_inputs} failed input{'s' if failed_inputs != 1 else ''}" if failed_inputs else ""
    where = f" (failed inputs: {out}/errors)" if failed_inputs else ""
    earlier = f"{s.earlier_pairs} pairs in {s.skipped} shard{'s' if s.skipped != 1 else ''} already done"
    if s.skipped == s.shards:
        print(f"{command}: nothing left to do: {earlier}{failed} -> {out}/manifest{where}")
    else:
        busy = sum(timing.values())
        split = "; " + ", ".join(f"{k[:-2]} {100 * v / busy:.0f}%" for k, v in timing.items()) if busy else ""
        resumed = f"; {earlier}, {s.total_pairs} in all" if s.skipped else ""
        retried = f", {s.retried} shard attempt{'s' if s.retried != 1 else ''} retried" if s.retried else ""
        print(f"{command}: {s.pairs} pairs in {s.seconds:.1f} s ({s.rate:.2f} pairs/s{split}){resumed}{retried}"
              f"{failed} -> {out}/manifest{where}")
    resume = f"re-run the same command to resume:\n  {rerun}" if rerun else "re-run the same command to resume"
    for f in s.failed:
        print(f"  shard {f['shard']} failed after {retries} retries: {f.get('error')}", file=sys.stderr)
    if s.failed:
        print(f"{command}: {len(s.failed)} shard(s) failed, the output is incomplete — {resume}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if s.total_pairs == 0:
        print(f"{command}: no pair succeeded — every input failed (see above and {out}/errors)", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _print_failed_inputs(command: str, out: str, shards: list[str], roots: dict[str, str], limit: int = 5) -> int:
    """Name the first ``limit`` failed inputs of ``shards`` in the output ``out``, with reasons;
    returns how many inputs failed."""
    if not shards:
        return 0
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from blurforge.storage import Location
    from blurforge.summary import errors_summary, format_errors, shown_paths

    loc = Location(out)
    tables = [pq.read_table(io.BytesIO(loc.read_bytes(f"errors/{n}.parquet"))) for n in sorted(set(shards))
              if loc.exists(f"errors/{n}.parquet")]
    if not tables:
        return 0
    summary = errors_summary(pa.concat_tables(tables), limit)
    lines = [shown_paths(line, roots) for line in format_errors(summary, f"{out}/errors")]
    print("\n".join([f"{command}: {lines[0]}", *lines[1:]]), file=sys.stderr)
    return summary["inputs"]


# --------------------------------------------------------------------------------- manifests


def build_manifest(*, out: str, inputs: list[str] | tuple = (), imports: list[tuple[str, str]] | tuple = (),
                   val_fraction: float | None = None, test_fraction: float | None = None, verify: bool = False,
                   quiet: bool = False) -> int:
    """``blurforge build-manifest``: merge outputs, manifests and imports; write the manifest and
    the errors of all inputs beside it; print the summary."""
    import pyarrow as pa

    from blurforge.manifest import (ERRORS_SCHEMA, errors_beside, errors_path_for, errors_table, leakage,
                                    leakage_lines, leakage_report, merge_manifests, read_manifest, verify_manifest,
                                    write_parquet_atomic)
    from blurforge.summary import errors_summary, format_errors, shown_paths, typed_roots

    out_path = Path(out)
    extra, import_errors = [], []
    if not inputs and not imports:
        raise UserError("nothing to merge — name output directories/manifests or --import NAME=PATH")
    for name, path in imports:
        from blurforge.imports import import_pairs

        table, root, errors = import_pairs(name, path)
        print(f"build-manifest: import {name}: {table.num_rows} pairs, {len(errors)} problems from {path}")
        extra.append((f"import {name}={path}", table, root))
        import_errors += errors
    notes: list[str] = []
    table = merge_manifests(inputs, out_path, val_fraction=val_fraction, test_fraction=test_fraction,
                            extra_tables=extra, notes=notes)
    for note in notes:
        print(f"build-manifest: {note}", file=sys.stderr)
    # failed inputs never vanish: the inputs' errors tables and the import problems go beside the manifest
    carried = [t for t in (errors_beside(inp)[0] for inp in inputs) if t.num_rows]
    errors = pa.concat_tables([t.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA) for t in carried]
                              + [errors_table(import_errors)])
    errors_path = errors_path_for(out_path)
    typed = [*inputs, *(p for _, p in imports), out]
    roots = typed_roots((os.getcwd(), "")) if not any(os.path.isabs(str(p)) for p in typed) else {}
    failed = errors_summary(errors)
    lines = [shown_paths(line, roots) for line in format_errors(failed, errors_path)]
    if lines:
        print("\n".join([f"build-manifest: {lines[0]}", *lines[1:]]), file=sys.stderr)
    if table.num_rows == 0:
        print(f"build-manifest: the inputs hold no pair — nothing written to {out}", file=sys.stderr)
        return EXIT_INCOMPLETE
    report = leakage_report(leakage(table))
    for line in leakage_lines(report):
        print(f"build-manifest: {line}" if not line.startswith(" ") else line, file=sys.stderr)
    if verify:
        problems = verify_manifest(table, out_path.parent, progress=not quiet)
        for p in problems[:20]:
            print(f"  {shown_paths(p['error'], roots)}", file=sys.stderr)
        if problems or report["groups"]:
            what = [f"{len(problems)} file(s) failed verification"] if problems else []
            what += [f"{report['groups']} source group(s) are in more than one split"] if report["groups"] else []
            print(f"build-manifest: {' and '.join(what)}; manifest not written", file=sys.stderr)
            return EXIT_INCOMPLETE
    write_parquet_atomic(table, out_path, kind="manifest")
    errors_note = ""
    if errors.num_rows:
        write_parquet_atomic(errors, errors_path, kind="errors")
        from_imports = f", {len(import_errors)} from imports" if import_errors else ""
        plural = "s" if failed["inputs"] != 1 else ""
        errors_note = f", {failed['inputs']} failed input{plural}{from_imports} (failed inputs: {errors_path})"
    elif errors_path.exists():
        errors_path.unlink()  # a stale table from an earlier build would be read as this manifest's
    m = read_manifest(out_path)
    splits = {s: 0 for s in ("train", "val", "test")}
    for s in m.table.column("split").to_pylist():
        splits[s] = splits.get(s, 0) + 1
    groups = len(set(m.table.column("group").to_pylist()))
    verified = ", all files verified" if verify else ""
    leak = ("no source in two splits" if not report["groups"]
            else f"{report['groups']} source group(s) in several splits")
    print(
        f"build-manifest: {len(m)} pairs from {len(inputs) + len(extra)} input(s) "
        f"(train {splits['train']}, val {splits['val']}, test {splits['test']}; {groups} source groups, "
        f"{leak}){verified} -> {out}{errors_note}"
    )
    return EXIT_OK


def inspect(*, manifest: str, preview: str | None = None, preview_count: int = 8, as_json: bool = False,
            quiet: bool = False) -> int:
    """``blurforge inspect``: print a manifest's summary (or JSON), optionally a contact sheet."""
    import json

    from blurforge.manifest import errors_beside, read_manifest
    from blurforge.summary import format_summary, manifest_summary, pairs_contact_sheet, shown_paths, typed_roots

    m = read_manifest(manifest)
    errors, where = errors_beside(manifest)
    s = manifest_summary(m, errors if where is not None else None)
    if as_json:
        print(json.dumps(s, indent=1))
    else:
        roots = typed_roots((os.getcwd(), "")) if not os.path.isabs(str(manifest)) else {}
        print(shown_paths(format_summary(s, m.location, where), roots))
    if m.legacy_note():
        print(f"inspect: {m.legacy_note()}", file=sys.stderr)
    if preview:
        pairs_contact_sheet(m, preview, count=preview_count)
        print(f"inspect: preview of {min(preview_count, len(m))} pairs (blurry | sharp) -> {preview}")
    return EXIT_OK
