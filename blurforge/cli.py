"""The ``blurforge`` command line: kernels, synthesize, build-manifest, inspect, demo.

Heavy imports happen inside each command so ``blurforge --help`` is instant.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

EPILOG = """\
typical run:
  blurforge kernels --count 10000 --seed 0 --out kernels.parquet --preview kernels.png
  blurforge synthesize --sharp photos/ --kernels kernels.parquet --out pairs/ --seed 0 --workers 2
  blurforge build-manifest pairs/ --out manifest.parquet --val-fraction 0.01 --test-fraction 0.01
  blurforge inspect manifest.parquet --preview pairs.png
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown; descriptions wrapped; text with line breaks (example epilogs) kept as written."""

    def _fill_text(self, text, width, indent):
        return text if "\n" in text else super()._fill_text(text, width, indent)


WORKERS_HELP = ("worker processes (or Ray tasks in flight); default: the CPUs this process may use (affinity and "
                "cgroup quota aware) — the output is the same for any value")
PNG_LEVEL_HELP = ("PNG compression, libdeflate level 0-12: 1 (default) is the fastest that compresses; 0 stores "
                  "uncompressed (~2x larger files); 6-12 are a few percent smaller and several times slower. "
                  "Lossless at every level")


class UserError(Exception):
    """An error caused by the command's inputs; printed without a traceback."""


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def usable_cpus() -> int:
    """CPUs this process may use: the affinity mask (taskset, Slurm, containers' cpusets), further
    limited by a cgroup CPU quota (Docker/Kubernetes ``--cpus``: cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded up; at least 1. The ``--workers`` default."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
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


def _png_level(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 12:
        raise argparse.ArgumentTypeError(f"must be in 0..12 (libdeflate levels), got {text}")
    return v


def _window(text: str):
    from blurforge.frames import parse_window  # imports OpenCV: only when the option is used

    return parse_window(text)


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


# ------------------------------------------------------------------------------------- commands


def cmd_kernels(args: argparse.Namespace) -> int:
    from blurforge.kernels import bank_summary, generate_bank, kernel_contact_sheet, read_bank, write_bank
    from blurforge.storage import file_exists

    if file_exists(args.out) and not args.overwrite:
        raise UserError(f"--out {args.out} already exists — pairs made with it name its kernels; pass --overwrite "
                        "to replace it, or choose another --out")
    t0 = time.perf_counter()
    table = generate_bank(
        count=args.count,
        seed=args.seed,
        size=args.size,
        length_min=args.length_min,
        length_max=args.length_max,
        exposure=args.exposure,
        workers=args.workers,
        progress=not args.quiet,
        backend=args.backend,
        ray_address=args.ray_address,
        working_size=args.working_size,
    )
    write_bank(table, args.out)
    s = bank_summary(table)
    extra = ""
    if args.preview:
        bank = read_bank(args.out)
        kernel_contact_sheet(bank.padded(range(min(len(bank), args.preview_count))), args.preview)
        extra = f", preview {args.preview}"
    larger = f" ({s['larger_than_size']} larger, up to {s['size_max']})" if s["larger_than_size"] else ""
    print(
        f"kernels: {s['count']} kernels {args.size}x{args.size}{larger} in {time.perf_counter() - t0:.1f} s, "
        f"median extent {s['extent_q'][2]:.0f} px (95%: {s['extent_q'][4]:.0f}), median radius of gyration "
        f"{s['rg_q'][2]:.1f} px, {s['total_resamples']} trajectories resampled "
        f"({100 * s['rejection_rate']:.1f}% rejected) -> {args.out}{extra}"
    )
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from blurforge.synthesize import run_synthesize, summarize_timing

    s = run_synthesize(
        sharp=args.sharp,
        kernels=args.kernels,
        out=args.out,
        seed=args.seed,
        mode=args.mode,
        workers=args.workers,
        noise=args.noise,
        saturation=args.saturation,
        jpeg_quality=args.jpeg_quality,
        pairs_per_image=args.pairs_per_image,
        shard_size=args.shard_size,
        key_prefix=args.key_prefix,
        progress=not args.quiet,
        backend=args.backend,
        ray_address=args.ray_address,
        retries=args.retries,
        segmenter=args.segmenter,
        sam2_config=args.sam2_config,
        sam2_checkpoint=args.sam2_checkpoint,
        device=args.device,
        max_objects=args.max_objects,
        noise_preset=args.noise_preset,
        borders=args.borders,
        png_level=args.png_level,
    )
    return report_job(args, s, summarize_timing(s.stats))


def report_job(args: argparse.Namespace, s, timing: dict[str, float]) -> int:
    """The summary of a sharded job (synthesize, frames): notes, the first failed inputs with their
    reasons, the one-line summary, and the exit status."""
    busy = sum(timing.values()) or 1.0
    split = ", ".join(f"{k[:-2]} {100 * v / busy:.0f}%" for k, v in timing.items())
    resumed = f", {s.skipped} of {s.shards} shards already done" if s.skipped else ""
    retried = f", {s.retried} shard attempts retried" if s.retried else ""
    out = str(args.out).rstrip("/")
    for note in s.notes:
        print(f"{args.command}: {note}", file=sys.stderr)
    _print_failed_inputs(args.command, out, [st["shard"] for st in s.stats if st.get("errors")])
    print(
        f"{args.command}: {s.pairs} pairs, {s.errors} errors in {s.seconds:.1f} s "
        f"({s.rate:.2f} pairs/s; {split}){resumed}{retried} -> {out}/manifest (errors: {out}/errors)"
    )
    for f in s.failed:
        print(f"  shard {f['shard']} failed after {args.retries} retries: {f.get('error')}", file=sys.stderr)
    if s.failed:
        print(f"{args.command}: {len(s.failed)} shard(s) failed — resume them with the same command:\n  "
              f"blurforge {' '.join(args.argv)}", file=sys.stderr)
        return 1
    if s.pairs == 0 and s.skipped == 0:
        print(f"{args.command}: no pair succeeded — see the errors table", file=sys.stderr)
        return 1
    return 0


def _print_failed_inputs(command: str, out: str, shards: list[str], limit: int = 5) -> None:
    """Name the first ``limit`` inputs that failed in ``shards`` of the output ``out``, with reasons."""
    if not shards:
        return
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from blurforge.storage import Location
    from blurforge.summary import errors_summary, format_errors

    loc = Location(out)
    tables = [pq.read_table(io.BytesIO(loc.read_bytes(f"errors/{n}.parquet"))) for n in sorted(shards)
              if loc.exists(f"errors/{n}.parquet")]
    if tables:
        lines = format_errors(errors_summary(pa.concat_tables(tables), limit), f"{out}/errors")
        print("\n".join([f"{command}: {lines[0]}", *lines[1:]]), file=sys.stderr)


def cmd_frames(args: argparse.Namespace) -> int:
    from blurforge.frames import run_frames

    s = run_frames(
        videos=args.videos,
        out=args.out,
        seed=args.seed,
        decoder=args.decoder,
        window=args.window,
        interpolate=args.interpolate,
        response=args.response,
        stride=args.stride,
        workers=args.workers,
        shard_size=args.shard_size,
        key_prefix=args.key_prefix,
        progress=not args.quiet,
        backend=args.backend,
        ray_address=args.ray_address,
        retries=args.retries,
        noise=args.noise,
        noise_preset=args.noise_preset,
        saturation=args.saturation,
        png_level=args.png_level,
    )
    keys = ("decode_s", "interpolate_s", "average_s", "encode_s")
    return report_job(args, s, {k: sum(x.get(k, 0.0) for x in s.stats) for k in keys})


def _parse_import(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. gopro=/data/GOPRO_Large), got {text!r}")
    return name, path


def cmd_build_manifest(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from blurforge.manifest import (ERRORS_SCHEMA, errors_beside, errors_path_for, errors_table, leakage,
                                    leakage_lines, leakage_report, merge_manifests, read_manifest, verify_manifest,
                                    write_parquet_atomic)

    out = Path(args.out)
    extra, import_errors = [], []
    for name, path in args.imports:
        from blurforge.imports import import_pairs

        table, root, errors = import_pairs(name, path)
        print(f"build-manifest: import {name}: {table.num_rows} pairs, {len(errors)} problems from {path}")
        extra.append((f"import {name}={path}", table, root))
        import_errors += errors
    if not args.inputs and not extra:
        raise UserError("nothing to merge — name output directories/manifests or --import NAME=PATH")
    notes: list[str] = []
    table = merge_manifests(args.inputs, out, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                            extra_tables=extra, notes=notes)
    for note in notes:
        print(f"build-manifest: {note}", file=sys.stderr)
    report = leakage_report(leakage(table))
    for line in leakage_lines(report):
        print(f"build-manifest: {line}" if not line.startswith(" ") else line, file=sys.stderr)
    if args.verify:
        problems = verify_manifest(table, out.parent, progress=not args.quiet)
        for p in problems[:20]:
            print(f"  {p['error']}", file=sys.stderr)
        if problems or report["groups"]:
            what = [f"{len(problems)} file(s) failed verification"] if problems else []
            what += [f"{report['groups']} source group(s) are in more than one split"] if report["groups"] else []
            print(f"build-manifest: {' and '.join(what)}; manifest not written", file=sys.stderr)
            return 1
    write_parquet_atomic(table, out, kind="manifest")
    # failed inputs never vanish: the inputs' errors tables and the import problems go beside the manifest
    carried = [t for t in (errors_beside(inp)[0] for inp in args.inputs) if t.num_rows]
    errors = pa.concat_tables([t.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA) for t in carried]
                              + [errors_table(import_errors)])
    errors_note = ""
    errors_path = errors_path_for(out)
    if errors.num_rows:
        write_parquet_atomic(errors, errors_path, kind="errors")
        for e in import_errors[:20]:
            print(f"  {e['error']}", file=sys.stderr)
        from_imports = f", {len(import_errors)} from imports" if import_errors else ""
        errors_note = f", {errors.num_rows} error row(s){from_imports} -> {errors_path}"
    elif errors_path.exists():
        errors_path.unlink()  # a stale table from an earlier build would be read as this manifest's
    m = read_manifest(out)
    splits = {s: 0 for s in ("train", "val", "test")}
    for s in m.table.column("split").to_pylist():
        splits[s] = splits.get(s, 0) + 1
    groups = len(set(m.table.column("group").to_pylist()))
    verified = ", all files verified" if args.verify else ""
    leak = ("no source in two splits" if not report["groups"]
            else f"{report['groups']} source group(s) in several splits")
    print(
        f"build-manifest: {len(m)} pairs from {len(args.inputs) + len(extra)} input(s) "
        f"(train {splits['train']}, val {splits['val']}, test {splits['test']}; {groups} source groups, "
        f"{leak}){verified}{errors_note} -> {out}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from blurforge.manifest import errors_beside, read_manifest
    from blurforge.summary import format_summary, manifest_summary, pairs_contact_sheet

    m = read_manifest(args.manifest)
    errors, where = errors_beside(args.manifest)
    s = manifest_summary(m, errors if where is not None else None)
    print(json.dumps(s, indent=1) if args.json else format_summary(s, m.location, where))
    if m.legacy_note():
        print(f"inspect: {m.legacy_note()}", file=sys.stderr)
    if args.preview:
        pairs_contact_sheet(m, args.preview, count=args.preview_count)
        print(f"inspect: preview of {min(args.preview_count, len(m))} pairs (blurry | sharp) -> {args.preview}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from blurforge.demo import run_demo

    return run_demo(Path(args.out), quiet=args.quiet)


# ---------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blurforge",
        description="Synthesise paired blurry/sharp training data for image deblurring into Parquet manifests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    from blurforge import __version__

    p.add_argument("--version", action="version", version=f"blurforge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add_backend(sp):
        sp.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local: processes on this machine; ray: Ray tasks (same output, byte for byte)")
        sp.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT); default: start a local Ray")

    def add_realism(sp, target="the blurry image"):
        sp.add_argument("--noise", choices=["none", "rsblur"], default="none",
                        help=f"rsblur: RSBlur's camera pipeline on {target} - Poisson-Gaussian noise on a random "
                             "Bayer mosaic between an inverse and a forward ISP (colour matrix, white balance, "
                             "demosaic); every sampled value goes into the row's params")
        sp.add_argument("--noise-preset", choices=["realblur", "rsblur"], default="realblur",
                        help="camera and noise levels for --noise rsblur: realblur = Sony A7R3 matrix, WB gains "
                             "R U(1.9,2.4) B U(1.5,1.9), beta1 8.89e-5, read-noise std beta2 2.94e-5 (RSBlur's "
                             "recipe for data made from other footage); rsblur = one of RSBlur's 19 capture "
                             "settings, beta1 1e-4, beta2 9.15e-4 (2-3x the noise in the shadows)")
        sp.add_argument("--saturation", action="store_true",
                        help="RSBlur saturation: clipped highlights of the sharp input(s) brighten the blurry "
                             "image by a*mask, a ~ U(0.25, 1.75)")

    def add(name, func, help_, description=None, epilog=None):
        sp = sub.add_parser(name, help=help_, description=description or help_, epilog=epilog, allow_abbrev=False,
                            formatter_class=_HelpFormatter)
        sp.set_defaults(func=func)
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        return sp

    k = add("kernels", cmd_kernels, "make a Boracchi–Foi motion-blur kernel bank (Parquet)",
            "Random camera-shake trajectories (Boracchi & Foi 2012) splatted into PSFs, normalised to sum 1 "
            "and centred on their centroid. Trajectories that leave the --working-size window (default: "
            "--size) are resampled and counted; with a larger --working-size, long walks that do not fit "
            "--size are kept at their own (odd) size instead of being redrawn, e.g. "
            "'blurforge kernels --count 10000 --size 63 --working-size 255 --out kernels.parquet'. "
            "Each row records the kernel's extent and radius of gyration. "
            "The same --seed gives the same bank for any --workers.")
    k.add_argument("--count", type=_positive_int, required=True, help="number of kernels")
    k.add_argument("--seed", type=int, default=0, help="run seed; kernel i uses a generator derived from (seed, id)")
    k.add_argument("--size", type=int, default=63, help="kernel support in pixels (odd)")
    k.add_argument("--working-size", type=int, metavar="N",
                   help="odd window (>= --size) a trajectory must fit; kernels that need more than --size "
                        "are stored at their own size up to N (default: --size, the paper's setting)")
    k.add_argument("--out", required=True, help="output Parquet file, e.g. kernels.parquet (an existing one is "
                   "refused unless --overwrite)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing --out bank")
    k.add_argument("--length-min", type=float, default=1.0, help="shortest trajectory length (px)")
    k.add_argument("--length-max", type=float, default=1000.0, help="longest trajectory length (px)")
    k.add_argument("--exposure", type=float, default=1.0, help="exposure fraction T in (0, 1]")
    k.add_argument("--workers", type=_positive_int, default=usable_cpus(), help=WORKERS_HELP)
    k.add_argument("--preview", metavar="PNG", help="also write a contact sheet of kernels")
    k.add_argument("--preview-count", type=_positive_int, default=64, help="kernels in the contact sheet")
    add_backend(k)

    s = add("synthesize", cmd_synthesize, "render blurry/sharp pairs from sharp images and a kernel bank",
            "Blurs every sharp image (recursively under --sharp) with a kernel drawn from the bank, in linear "
            "light, optionally adding RSBlur's saturation and camera-pipeline noise "
            "(--noise rsblur [--noise-preset realblur|rsblur] --saturation) and JPEG, and crops both images to the "
            "pixels that saw only real content (--borders valid; --borders reflect keeps the full size). "
            "Writes OUT/blur, OUT/sharp, OUT/manifest/*.parquet and OUT/errors/*.parquet; --out must lie outside "
            "--sharp (and blurforge output folders inside --sharp are skipped). Every pair records its source "
            "photo's content hash as its group, so build-manifest keeps a photo's pairs in one split. "
            "Re-running the same command resumes a killed run; failed inputs are named at the end.")
    s.add_argument("--sharp", required=True, help="directory of sharp images")
    s.add_argument("--kernels", required=True, help="kernel bank from 'blurforge kernels'")
    s.add_argument("--out", required=True, help="output directory, outside --sharp (e.g. --sharp photos/ --out pairs/)")
    s.add_argument("--seed", type=int, default=0,
                   help="run seed; pair j of a photo has the seed of (seed, mode, photo, j), and keys carry the seed, "
                        "so runs with different seeds merge")
    s.add_argument("--mode", choices=["uniform", "nonuniform"], default="uniform",
                   help="uniform: one kernel per image; nonuniform: segment each image and give every object "
                        "(and the background) its own kernel; the objects are layers moving over the background "
                        "in linear light, and what they hide is filled from the nearest visible pixels (an "
                        "estimate on textured backgrounds; see README)")
    s.add_argument("--segmenter", choices=["classical", "sam2"], default="classical",
                   help="nonuniform: how objects are found. sam2: object masks; needs the sam2 package, a "
                        "working torchvision and --sam2-checkpoint. classical: a weight-free fallback "
                        "for SAM 2 that finds colour regions, not objects; it warns once and each row records it")
    s.add_argument("--sam2-config", default="configs/sam2.1/sam2.1_hiera_t.yaml", metavar="NAME",
                   help="SAM 2 config name inside the sam2 package; must match --sam2-checkpoint")
    s.add_argument("--sam2-checkpoint", metavar="PATH",
                   help="SAM 2 checkpoint file you downloaded (e.g. sam2.1_hiera_tiny.pt); nothing is downloaded")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where SAM 2 runs")
    s.add_argument("--max-objects", type=int, default=6, metavar="N",
                   help="nonuniform: at most N objects per image get their own kernel (0: background only)")
    s.add_argument("--workers", type=_positive_int, default=usable_cpus(), help=WORKERS_HELP)
    add_realism(s)
    s.add_argument("--jpeg-quality", type=int, metavar="Q", help="store blurry images as JPEG of quality Q")
    s.add_argument("--pairs-per-image", type=_positive_int, default=1, help="pairs drawn from each sharp image")
    s.add_argument("--borders", choices=["valid", "reflect"], default="valid",
                   help="valid: crop both images by the reach of the kernel(s) applied, so no pixel blurs a "
                        "reflected border (pairs are smaller than the source by up to the kernel size - 1); "
                        "reflect: keep the source size, with reflected borders in a band of half the kernel")
    s.add_argument("--shard-size", type=_positive_int, default=64, help="pairs per shard (the unit of resume)")
    s.add_argument("--key-prefix", help="prefix of the pairs' keys (default: the mode); names only, the kernels "
                   "drawn do not change — needed only to merge runs of one mode and seed over different folders")
    s.add_argument("--retries", type=int, default=2, help="times a failed shard is retried before it is reported")
    s.add_argument("--png-level", type=_png_level, default=1, metavar="L", help=PNG_LEVEL_HELP)
    add_backend(s)

    f = add("frames", cmd_frames, "average video frames into blurry/sharp pairs (REDS/GoPro style)",
            "Averages a window of consecutive frames in linear signal space (inverse camera response), "
            "optionally interpolating K frames between each pair with optical flow (no network weights) to "
            "a virtual high frame rate; the centre original frame is the sharp target. REDS: --window 5 "
            "--interpolate 15 --stride 5 (65 virtual frames, 120 -> 1920 fps). GoPro: --window 7:13 "
            "--response gamma2.2 (a window drawn per sample). --noise rsblur / --saturation add RSBlur's "
            "realism stage to the blurry average, e.g. --window 7 --noise rsblur --saturation. "
            "Bad clips land in the errors table.")
    f.add_argument("--videos", required=True, help="directory of video clips (searched recursively)")
    f.add_argument("--out", required=True, help="output directory outside --videos (or a pyarrow filesystem URI)")
    f.add_argument("--seed", type=int, default=0,
                   help="run seed; each pair's seed derives from (seed, clip, centre frame); keys carry it")
    f.add_argument("--decoder", choices=["decord", "av"], default="decord", help="video decoder")
    f.add_argument("--window", type=_window, default="7", metavar="N|LO:HI",
                   help="odd number of original frames averaged, or a range drawn per sample")
    f.add_argument("--interpolate", type=int, default=0, metavar="K", help="flow-interpolated frames between each pair")
    f.add_argument("--response", choices=["srgb", "gamma2.2", "linear"], default="srgb",
                   help="camera response inverted before averaging")
    f.add_argument("--stride", type=_positive_int, metavar="M", help="frames between centre frames (default: window)")
    f.add_argument("--workers", type=_positive_int, default=usable_cpus(), help=WORKERS_HELP)
    f.add_argument("--shard-size", type=_positive_int, default=1, help="clips per shard (the unit of resume)")
    add_realism(f, "the blurry average (the sharp frame is kept as decoded)")
    f.add_argument("--key-prefix", default="frames", help="prefix of the pairs' keys (names only: seeds do not change)")
    f.add_argument("--retries", type=int, default=2, help="times a failed shard is retried before it is reported")
    f.add_argument("--png-level", type=_png_level, default=1, metavar="L", help=PNG_LEVEL_HELP)
    add_backend(f)

    b = add("build-manifest", cmd_build_manifest, "merge outputs and imported datasets into one manifest",
            "Merges outputs/manifests into one Parquet manifest whose image paths are relative to its "
            "directory. With a fraction, splits are drawn from a hash of each pair's group (its source photo, "
            "clip or imported scene), so no source is ever in two splits; without, the splits are kept. "
            "Refuses the same run given twice and clashing keys; reports any source in two splits "
            "(--verify refuses to write it). Failed inputs of all inputs go to NAME.errors.parquet.",
            epilog="examples:\n"
                   "  blurforge build-manifest uniform/ nonuniform/ frames/ --out manifest.parquet "
                   "--val-fraction 0.01 --test-fraction 0.01 --verify\n"
                   "  blurforge build-manifest pairs/ --import gopro=/data/GOPRO_Large --out all.parquet\n"
                   "  blurforge build-manifest old.parquet --out checked.parquet --verify   # keep splits, check them\n")
    b.add_argument("inputs", nargs="*", metavar="INPUT", help="synthesize/frames output dirs or manifest files")
    b.add_argument("--import", dest="imports", action="append", default=[], type=_parse_import, metavar="NAME=PATH",
                   help="bring an existing paired dataset in as source import:NAME: a folder with blur/ and "
                        "sharp/ per sequence (GoPro, REDS-like) or a list file of 'blur_path sharp_path' lines "
                        "(RealBlur/RSBlur); repeatable")
    b.add_argument("--out", required=True, help="output manifest, e.g. manifest.parquet")
    b.add_argument("--val-fraction", type=_fraction,
                   help="fraction of source groups (photos, clips, scenes) in val (default: keep splits)")
    b.add_argument("--test-fraction", type=_fraction,
                   help="fraction of source groups in test (default: keep splits)")
    b.add_argument("--verify", action="store_true",
                   help="re-hash every image and check that no source group is in two splits; write nothing if not")

    i = add("inspect", cmd_inspect, "summarise a manifest and preview its pairs",
            "Counts by source and split, image sizes, kernel statistics, source groups and any source in two "
            "splits (leakage), and the failed inputs (counts by stage, the first messages) of a synthesize/frames "
            "output or of a manifest with NAME.errors.parquet beside it.",
            epilog="examples:\n"
                   "  blurforge inspect manifest.parquet --preview pairs.png\n"
                   "  blurforge inspect pairs/            # a synthesize output: also lists its failed inputs\n"
                   "  blurforge inspect manifest.parquet --json\n")
    i.add_argument("manifest", help="manifest file, shard directory or synthesize output dir")
    i.add_argument("--preview", metavar="PNG", help="write a contact sheet of pairs (blurry | sharp)")
    i.add_argument("--preview-count", type=_positive_int, default=8, help="pairs in the contact sheet")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    d = add("demo", cmd_demo, "run the whole data pipeline on scikit-image's bundled photographs")
    d.add_argument("--out", default="demo_out", help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"blurforge {args.command}: interrupted — re-run the same command to resume", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(f"blurforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, NotImplementedError) as exc:
        print(f"blurforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
