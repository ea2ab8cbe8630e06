"""The ``deblurdiff`` command line: describe, train, infer, evaluate, convert, demo — for both
model families, DeblurDiff (``tiny``/``sd*`` presets) and MSGD (``msgd-*`` presets,
:mod:`deblurdiff.msgd`).

Each command's options and implementation live in its module (``train.py``, ``infer.py``,
``evaluate.py``); torch and diffusers are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
typical run:
  deblurdiff train --manifest manifest.parquet --preset sd21-base --pretrained SD_DIR --output-dir run/ \\
      --mixed-precision bf16 --gradient-checkpointing
  deblurdiff infer --checkpoint run/final --input blurry/ --output deblurred/ --sampler ddim --steps 20
  deblurdiff evaluate --manifest manifest.parquet --split test --predictions deblurred/ --out report.csv

the authors' released weights (model.pth of github.com/kkkls/DeblurDiff):
  deblurdiff convert --checkpoint model.pth --output deblurdiff-released/
  deblurdiff infer --checkpoint deblurdiff-released/ --input blurry/ --output deblurred/

MSGD (trained from scratch, no pretrained weights):
  deblurdiff train --manifest manifest.parquet --preset msgd-cpu --resolution 64 --batch-size 8 --lr 2e-3 \
      --max-steps 600 --output-dir run-msgd/
  deblurdiff infer --checkpoint run-msgd/final --input blurry/ --output deblurred/ --samples 4
"""


def cmd_describe(args: argparse.Namespace) -> int:
    from deblurdiff.msgd import build_msgd, is_msgd_preset
    from deblurdiff.presets import build_model

    if is_msgd_preset(args.preset):  # the MSGD family: guidance networks + icDPM UNet, all trained
        model, parts, args.variant = build_msgd(args.preset, seed=args.seed), ("guidance", "unet"), "-"
    else:
        model = build_model(args.preset, pretrained=args.pretrained, variant=args.variant, seed=args.seed)
        parts = ("vae", "unet", "controlnet", "lkpn")
    rows = []
    for name in parts:
        part = getattr(model, name, None)
        if part is None:
            continue
        n = sum(p.numel() for p in part.parameters())
        trainable = any(p.requires_grad for p in part.parameters())
        rows.append((name, n, "trainable" if trainable else "frozen"))
    print(f"{'part':<12}{'parameters':>16}  status")
    for name, n, status in rows:
        print(f"{name:<12}{n:>16,}  {status}")
    total_trainable = sum(n for _, n, s in rows if s == "trainable")
    print(f"describe: preset {args.preset}, variant {args.variant}: {total_trainable:,} trainable parameters")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deblurdiff.demo import run_demo

    return run_demo(args)


DEMO_STEPS = 600  # MSGD training steps of the default demo (README: measured PSNR and wall time)


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from deblurdiff import __version__
    from deblurdiff.convert import add_convert_arguments, run_convert
    from deblurdiff.evaluate import add_evaluate_arguments, run_evaluate
    from deblurdiff.infer import add_infer_arguments, run_infer
    from deblurdiff.msgd import PRESETS as MSGD_PRESETS
    from deblurdiff.train import add_train_arguments, run_train

    p = argparse.ArgumentParser(
        prog="deblurdiff",
        description="Train and run DeblurDiff (LKPN + EAC + ControlNet on Stable Diffusion) on blurforge manifests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"deblurdiff {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_, formatter=argparse.ArgumentDefaultsHelpFormatter):
        sp = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False, formatter_class=formatter)
        sp.set_defaults(func=func)
        return sp

    d = add("describe", cmd_describe, "build a model from a preset and list its parts and parameter counts")
    d.add_argument("--preset", choices=["tiny", "sd21-base", "sd15", *MSGD_PRESETS], default="tiny",
                   help="tiny: seeded random model for CPU tests; sd*: load from --pretrained; msgd-*: the MSGD "
                        "family (tiny for tests, cpu for the demo, base for GPUs)")
    d.add_argument("--pretrained", metavar="SD_DIR", help="local diffusers folder of Stable Diffusion (sd presets)")
    d.add_argument("--variant", choices=["lkpn", "blurry", "lkpn-direct", "lkpn-static"], default="lkpn",
                   help="conditioning variant (the paper's ablations)")
    d.add_argument("--seed", type=int, default=0, help="seed of the tiny preset's random weights")

    add_train_arguments(add("train", run_train, "train DeblurDiff (ControlNet + LKPN) on blurforge manifests",
                            argparse.RawDescriptionHelpFormatter))
    add_infer_arguments(add("infer", run_infer, "deblur images, a folder or a manifest split with a checkpoint"))
    add_evaluate_arguments(add("evaluate", run_evaluate,
                               "score predictions against a manifest split (PSNR/SSIM, optional LPIPS and "
                               "no-reference metrics)"))
    add_convert_arguments(add(
        "convert", run_convert,
        "convert the released DeblurDiff weights (model.pth of github.com/kkkls/DeblurDiff: the whole ControlLDM "
        "state_dict, SD 2.1-base and OpenCLIP included) into a checkpoint folder that 'deblurdiff infer "
        "--checkpoint' loads; the released architecture and preprocessing are recorded in it",
        argparse.RawDescriptionHelpFormatter))
    demo = add("demo", cmd_demo, "the whole mission on the embedded default, on a CPU: blurforge demo data -> "
                                 "train MSGD (msgd-cpu) for a few minutes -> deblur the test split -> evaluate "
                                 "against the blurry input; plus DeblurDiff's tiny preset as a pipeline check")
    demo.add_argument("--out", default="demo_out", help="output directory")
    demo.add_argument("--steps", type=_positive, default=DEMO_STEPS, help="training steps of the MSGD model")
    demo.add_argument("--samples", type=_positive, default=1, help="MSGD samples averaged per test image")
    demo.add_argument("--check-steps", type=_positive, default=20,
                      help="training steps of the DeblurDiff tiny pipeline check")
    demo.add_argument("--threads", type=_positive, default=1,
                      help="torch intra-op threads: the demo's models are small and gain little from more, and "
                           "on a machine shared with other work OpenMP's spinning threads made a 2-thread run "
                           "5x slower than a 1-thread one")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"deblurdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, NotImplementedError,
            ImportError) as exc:
        print(f"deblurdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
