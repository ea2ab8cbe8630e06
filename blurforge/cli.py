"""The ``blurforge`` command line: kernels, synthesize, frames, build-manifest, inspect, demo.

This module parses arguments; what each command does is in ``blurforge.commands`` (the demo is
``blurforge.demo``). Dependencies point one way: cli -> demo -> commands -> the library. Heavy
imports happen inside each command so ``blurforge --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from blurforge.commands import (EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_RULE, EXIT_USAGE, SAM2_CONFIG, UserError,
                                build_manifest, frames, inspect, kernels, synthesize, usable_cpus)

EPILOG = f"""\
a first dataset (each command's --help has more examples):
  blurforge kernels --count 10000 --seed 0 --out kernels.parquet --preview kernels.png
  blurforge synthesize --sharp photos/ --kernels kernels.parquet --out pairs/ --seed 0
  blurforge build-manifest pairs/ --out manifest.parquet --val-fraction 0.01 --test-fraction 0.01
  blurforge inspect manifest.parquet --preview pairs.png
or try everything on bundled photographs first:
  blurforge demo --out demo_out

{EXIT_RULE}
"""

# what --sharp reads (= blurforge.imageio.IMAGE_EXTENSIONS) and --videos (= blurforge.video.VIDEO_EXTENSIONS);
# written out here so --help does not import OpenCV; tests/test_cli.py checks they agree
IMAGE_TYPES = ".png .jpg .jpeg .bmp .tif .tiff .webp"
VIDEO_TYPES = ".mp4 .mkv .avi .mov .webm .m4v .mpg .mpeg .wmv .flv"
RESUMABLE = ("synthesize", "frames", "demo")  # commands whose finished work a re-run keeps


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a value worth showing (not for
    required options, flags, empty values, or help that already names its default); keeps text
    with line breaks (example epilogs) as written."""

    def _fill_text(self, text, width, indent):
        return text if "\n" in text else super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.required or not action.option_strings:
            return text
        if action.default is None or action.default is argparse.SUPPRESS or action.default in (False, "", [], ()):
            return text
        return f"{text} (default: %(default)s)"


WORKERS_HELP = ("worker processes (or Ray tasks in flight); the output is the same for any value (default: the "
                f"CPUs this process may use, affinity and cgroup quota aware: {usable_cpus()} here)")
PNG_COMPRESSOR_HELP = ("how the PNG files are compressed, lossless either way: isal (Intel ISA-L, about 2x faster) or "
                       "libdeflate (its bytes do not depend on the CPU, only on its version; ISA-L picks code "
                       "paths by CPU features, the pixels are the same)")
PNG_LEVEL_HELP = ("PNG compression level, lossless at every level: isal 0-3, libdeflate 0-12 (0 stores "
                  "uncompressed, ~2x larger files; 6-12 are a few percent smaller and several times slower) "
                  "(default: 1, the fastest level that compresses well)")
RETRIES_HELP = "times a shard that failed as a whole (a crashed worker) is retried before it is reported"


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _png_level(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 12:
        raise argparse.ArgumentTypeError(f"must be in 0..3 (isal) or 0..12 (libdeflate), got {text}")
    return v


def add_png(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--png-compressor", choices=("isal", "libdeflate"), default="isal", help=PNG_COMPRESSOR_HELP)
    parser.add_argument("--png-level", type=_png_level, default=1, metavar="L", help=PNG_LEVEL_HELP)


def _window(text: str):
    from blurforge.frames import parse_window  # imports OpenCV: only when the option is used

    return parse_window(text)


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def _parse_import(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. gopro=/data/GOPRO_Large), got {text!r}")
    return name, path


def _demo(*, out: str = "demo_out", quiet: bool = False) -> int:
    from pathlib import Path

    from blurforge.demo import run_demo

    return run_demo(Path(out), quiet=quiet)


def _examples(*lines: str) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


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
                        help="local: processes on this machine; ray: Ray tasks (same output, byte for byte; the "
                             "progress bar then moves a shard at a time)")
        sp.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: start a local Ray)")

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

    def add(name, func, help_, description, examples, quiet="no progress bars (the summary is still printed)"):
        sp = sub.add_parser(name, help=help_, description=description, epilog=_examples(*examples),
                            allow_abbrev=False, formatter_class=_HelpFormatter)
        sp.set_defaults(func=func)
        sp.add_argument("--quiet", action="store_true", help=quiet)
        return sp

    k = add("kernels", kernels, "make a Boracchi–Foi motion-blur kernel bank (Parquet)",
            "Random camera-shake trajectories (Boracchi & Foi 2012) splatted into PSFs, normalised to sum 1 "
            "and centred on their centroid. Trajectories that leave the --working-size window are resampled "
            "and counted; with a --working-size larger than --size, long walks that do not fit --size are kept "
            "at their own (odd) size instead of being redrawn. Each row records the kernel's extent and radius "
            "of gyration. The same --seed gives the same bank for any --workers.",
            ["blurforge kernels --count 10000 --seed 0 --out kernels.parquet --preview kernels.png",
             "blurforge kernels --count 10000 --size 63 --working-size 255 --out kernels-wide.parquet"])
    k.add_argument("--count", type=_positive_int, required=True, help="number of kernels")
    k.add_argument("--seed", type=int, default=0, help="run seed; kernel i uses a generator derived from (seed, id)")
    k.add_argument("--size", type=int, default=63, help="kernel support in pixels (odd)")
    k.add_argument("--working-size", type=int, metavar="N",
                   help="odd window (>= --size) a trajectory must fit; kernels that need more than --size "
                        "are stored at their own size up to N (default: --size, the paper's setting)")
    k.add_argument("--out", required=True, help="output Parquet file, e.g. kernels.parquet (an existing one is "
                   "refused unless --overwrite)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing --out bank")
    k.add_argument("--length-min", type=float, default=1.0, metavar="PX", help="shortest trajectory length (px)")
    k.add_argument("--length-max", type=float, default=1000.0, metavar="PX", help="longest trajectory length (px)")
    k.add_argument("--exposure", type=float, default=1.0, metavar="T", help="exposure fraction T in (0, 1]")
    k.add_argument("--workers", type=_positive_int, default=usable_cpus(), metavar="N", help=WORKERS_HELP)
    k.add_argument("--preview", metavar="PNG", help="also write a contact sheet of kernels")
    k.add_argument("--preview-count", type=_positive_int, default=64, metavar="N", help="kernels in the contact sheet")
    add_backend(k)

    s = add("synthesize", synthesize, "render blurry/sharp pairs from sharp images and a kernel bank",
            "Blurs every sharp image under --sharp (searched recursively; files ending in "
            f"{IMAGE_TYPES.replace(' ', ', ')}, any case, 8 or 16 bit) with a kernel drawn from the bank, "
            "in linear light, optionally adding RSBlur's saturation and camera-pipeline noise and JPEG, and "
            "crops both images to the pixels that saw only real content (--borders valid). Writes OUT/blur, "
            "OUT/sharp, OUT/manifest/*.parquet and OUT/errors/*.parquet; --out must lie outside --sharp "
            "(blurforge output folders inside --sharp are skipped). Every pair records its source photo's "
            "content hash as its group, so build-manifest keeps a photo's pairs in one split. Unreadable or "
            "too-small images become rows of the errors table and are named at the end; re-running the same "
            "command resumes a killed run.",
            ["blurforge synthesize --sharp photos/ --kernels kernels.parquet --out pairs/ --seed 0",
             "blurforge synthesize --sharp photos/ --kernels kernels.parquet --out realistic/ --seed 1 "
             "--noise rsblur --saturation --jpeg-quality 90 --key-prefix realistic",
             "blurforge synthesize --sharp photos/ --kernels kernels.parquet --out nonuniform/ --mode nonuniform"])
    s.add_argument("--sharp", required=True, metavar="DIR",
                   help=f"folder of sharp images ({IMAGE_TYPES}), searched recursively")
    s.add_argument("--kernels", required=True, metavar="PARQUET", help="kernel bank from 'blurforge kernels'")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="output folder, outside --sharp (e.g. --sharp photos/ --out pairs/)")
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
    s.add_argument("--sam2-config", default=SAM2_CONFIG, metavar="NAME",
                   help="SAM 2 config name inside the sam2 package; must match --sam2-checkpoint")
    s.add_argument("--sam2-checkpoint", metavar="PATH",
                   help="SAM 2 checkpoint file you downloaded (e.g. sam2.1_hiera_tiny.pt); nothing is downloaded")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where SAM 2 runs")
    s.add_argument("--max-objects", type=int, default=6, metavar="N",
                   help="nonuniform: at most N objects per image get their own kernel (0: background only)")
    s.add_argument("--workers", type=_positive_int, default=usable_cpus(), metavar="N", help=WORKERS_HELP)
    add_realism(s)
    s.add_argument("--jpeg-quality", type=int, metavar="Q",
                   help="store blurry images as JPEG of quality Q, 1-100 (default: lossless PNG)")
    s.add_argument("--pairs-per-image", type=_positive_int, default=1, metavar="N",
                   help="pairs drawn from each sharp image, each with its own kernel")
    s.add_argument("--borders", choices=["valid", "reflect"], default="valid",
                   help="valid: crop both images by the reach of the kernel(s) applied, so no pixel blurs a "
                        "reflected border (pairs are smaller than the source by up to the kernel size - 1); "
                        "reflect: keep the source size, with reflected borders in a band of half the kernel")
    s.add_argument("--shard-size", type=_positive_int, default=64, metavar="N",
                   help="pairs per shard, the unit of resume (the progress bar counts pairs)")
    s.add_argument("--key-prefix", metavar="PREFIX",
                   help="prefix of the pairs' keys; names only, the kernels drawn do not change — needed only to "
                        "merge runs of one mode and seed over different folders (default: the --mode)")
    s.add_argument("--retries", type=int, default=2, metavar="N", help=RETRIES_HELP)
    add_png(s)
    add_backend(s)

    f = add("frames", frames, "average video frames into blurry/sharp pairs (REDS/GoPro style)",
            "Averages a window of consecutive frames in linear signal space (inverse camera response), "
            "optionally interpolating K frames between each pair with optical flow (no network weights) to "
            "a virtual high frame rate; the centre original frame is the sharp target. REDS: --window 5 "
            "--interpolate 15 --stride 5 (65 virtual frames, 120 -> 1920 fps). GoPro: --window 7:13 "
            "--response gamma2.2 (a window drawn per sample). --noise rsblur / --saturation add RSBlur's "
            "realism stage to the blurry average. Clips that cannot be decoded, or whose decoder misreports "
            "their length or hangs, become rows of the errors table and are named at the end; the decoders' "
            "own log output is kept off the console. Re-running the same command resumes a killed run.",
            ["blurforge frames --videos clips/ --out frames/ --seed 0 --window 5 --interpolate 15 --stride 5",
             "blurforge frames --videos clips/ --out frames-gopro/ --seed 0 --window 7:13 --response gamma2.2"])
    f.add_argument("--videos", required=True, metavar="DIR",
                   help=f"folder of video clips ({VIDEO_TYPES}), searched recursively")
    f.add_argument("--out", required=True, metavar="DIR",
                   help="output folder outside --videos (or a pyarrow filesystem URI)")
    f.add_argument("--seed", type=int, default=0,
                   help="run seed; each pair's seed derives from (seed, clip, centre frame); keys carry it")
    f.add_argument("--decoder", choices=["decord", "av"], default="decord", help="video decoder")
    f.add_argument("--window", type=_window, default="7", metavar="N|LO:HI",
                   help="odd number of original frames averaged, or a range drawn per sample")
    f.add_argument("--interpolate", type=int, default=0, metavar="K", help="flow-interpolated frames between each pair")
    f.add_argument("--response", choices=["srgb", "gamma2.2", "linear"], default="srgb",
                   help="camera response inverted before averaging")
    f.add_argument("--stride", type=_positive_int, metavar="M",
                   help="frames between centre frames (default: the largest --window, so windows do not overlap)")
    f.add_argument("--workers", type=_positive_int, default=usable_cpus(), metavar="N", help=WORKERS_HELP)
    f.add_argument("--shard-size", type=_positive_int, default=1, metavar="N",
                   help="clips per shard, the unit of resume (the progress bar counts clips)")
    add_realism(f, "the blurry average (the sharp frame is kept as decoded)")
    f.add_argument("--key-prefix", default="frames", metavar="PREFIX",
                   help="prefix of the pairs' keys (names only: seeds do not change)")
    f.add_argument("--retries", type=int, default=2, metavar="N", help=RETRIES_HELP)
    add_png(f)
    add_backend(f)

    b = add("build-manifest", build_manifest, "merge outputs and imported datasets into one manifest",
            "Merges synthesize/frames outputs, manifests and imported datasets into one Parquet manifest whose "
            "image paths are relative to its folder. With a fraction, splits are drawn from a hash of each "
            "pair's group (its source photo, clip or imported scene), so no source is ever in two splits; "
            "without, the splits are kept. Refuses the same run given twice and clashing keys; reports any "
            "source in two splits (--verify refuses to write it). The failed inputs of all inputs go to "
            "NAME.errors.parquet beside the manifest. A folder of photos or videos is not an input: make pairs "
            "from it with synthesize or frames first.",
            ["blurforge build-manifest uniform/ nonuniform/ frames/ --out manifest.parquet "
             "--val-fraction 0.01 --test-fraction 0.01 --verify",
             "blurforge build-manifest pairs/ --import gopro=/data/GOPRO_Large --out all.parquet",
             "blurforge build-manifest old.parquet --out checked.parquet --verify   # keep splits, check them"],
            quiet="no progress bar for --verify")
    b.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="synthesize/frames output folders or manifest files (not folders of photos)")
    b.add_argument("--import", dest="imports", action="append", default=[], type=_parse_import, metavar="NAME=PATH",
                   help="bring an existing paired dataset in as source import:NAME: a folder with blur/ and "
                        "sharp/ per sequence (GoPro, REDS-like) or a list file of 'blur_path sharp_path' lines "
                        "(RealBlur/RSBlur); repeatable")
    b.add_argument("--out", required=True, metavar="PARQUET", help="output manifest, e.g. manifest.parquet")
    b.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="fraction of source groups (photos, clips, scenes) in val (default: keep the inputs' splits)")
    b.add_argument("--test-fraction", type=_fraction, metavar="F",
                   help="fraction of source groups in test (default: keep the inputs' splits)")
    b.add_argument("--verify", action="store_true",
                   help="re-hash every image and check that no source group is in two splits; write nothing if not")

    i = add("inspect", inspect, "summarise a manifest and preview its pairs",
            "Counts by source and split, image sizes, kernel statistics, source groups and any source in two "
            "splits (leakage), and the failed inputs (counts by stage, the first messages) of a synthesize/frames "
            "output or of a manifest with NAME.errors.parquet beside it.",
            ["blurforge inspect manifest.parquet --preview pairs.png",
             "blurforge inspect pairs/            # a synthesize output: also lists its failed inputs",
             "blurforge inspect manifest.parquet --json"],
            quiet="accepted like in the other commands; inspect shows no progress bar")
    i.add_argument("manifest", help="manifest file, shard folder or synthesize/frames output folder")
    i.add_argument("--preview", metavar="PNG", help="write a contact sheet of pairs (blurry | sharp)")
    i.add_argument("--preview-count", type=_positive_int, default=8, metavar="N", help="pairs in the contact sheet")
    i.add_argument("--json", dest="as_json", action="store_true", help="print the summary as JSON")

    d = add("demo", _demo, "make a small example dataset from bundled photographs (no downloads)",
            "Makes a dataset end to end from scikit-image's bundled photographs and a camera pan it renders "
            "itself, printing each step as the blurforge command it runs: a kernel bank, uniform pairs, pairs "
            "with RSBlur noise and saturation, object-wise non-uniform pairs, frame-averaged pairs, one "
            "manifest with train/val/test splits (verified), and contact sheets to look at. One input is a "
            "deliberately broken file: it lands in the errors tables and the run goes on. Under a minute "
            "on 2 CPUs; re-running it with the same --out resumes.",
            ["blurforge demo --out demo_out",
             "blurforge inspect demo_out/manifest.parquet   # afterwards: what was made"],
            quiet="no progress bars (each step's summary is still printed)")
    d.add_argument("--out", default="demo_out", metavar="DIR", help="output folder")
    return p


def entry() -> None:
    """The ``blurforge`` console script and ``python -m blurforge``: :func:`main`, then the process
    ends (:func:`_end_process`). Call :func:`main` to run a command inside a Python program."""
    _end_process(main())


def _end_process(status: int) -> None:
    """End a command-line run with ``status`` after the exit handlers, without the interpreter's
    teardown.

    After a decoding error, a native library's threads can abort that teardown ("terminate called
    without an active exception", status 134 / -6) although the run is complete — seen with
    decord in the command's process, and in the driver of a 2-worker ``frames`` run. Exit
    handlers (logging, multiprocessing, Ray) still run and the console is flushed; every output
    file is already closed (written whole, then renamed)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    command_line = shlex.join(["blurforge", *argv])
    if args.command in ("synthesize", "frames"):
        options["rerun"] = command_line
    try:
        return int(args.func(**options) or 0)
    except BrokenPipeError:
        # the reader of stdout left early ('blurforge inspect ... | head'): no traceback, and later
        # writes (the interpreter's final flush included) go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        # inspect only prints, so what the reader took is all it wanted; any other command was cut short
        return 0 if args.command == "inspect" else EXIT_INCOMPLETE
    except KeyboardInterrupt:
        kept = "finished work is kept; resume with" if args.command in RESUMABLE else "nothing half-written is kept; " \
               "run it again with"
        print(f"blurforge {args.command}: interrupted — {kept}:\n  {command_line}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as exc:
        print(f"blurforge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, NotImplementedError) as exc:
        print(f"blurforge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    entry()
