"""The ``deblurdiff`` command line: describe, train, infer, evaluate, convert, demo — for both
model families, DeblurDiff (``tiny``/``sd*`` presets) and MSGD (``msgd-*`` presets,
:mod:`deblurdiff.msgd`).

Each command's options and implementation live in its module (``train.py``, ``infer.py``,
``evaluate.py``, ``convert.py``), which import torch and diffusers only when the command runs:
building the parser reads the option names from :mod:`deblurdiff.choices`, so ``--help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from deblurdiff.choices import PRESET_HELP, PRESETS, VARIANTS

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_RULE = """\
exit status (every command):
  0    finished. Partial success is success: inputs that could not be used (unreadable images,
       missing predictions) are listed in infer.json or the report and named, with reasons, in
       the summary
  1    nothing usable was made: no image deblurred, no pair scored, or every training step of the
       run was non-finite (the weights did not change)
  2    bad arguments or inputs, found before any work; the message names the input and the fix
  130  interrupted (Ctrl-C); the message gives the command that resumes"""

EPILOG = f"""\
a typical run (each command's --help has more examples):
  deblurdiff train --manifest manifest.parquet --preset sd21-base --pretrained SD_DIR --output-dir run/ \\
      --mixed-precision bf16 --gradient-checkpointing
  deblurdiff infer --checkpoint run/final --input blurry/ --output deblurred/ --sampler ddim --steps 20
  deblurdiff evaluate --manifest manifest.parquet --split test --predictions deblurred/ --out report.csv

the authors' released weights (model.pth of github.com/kkkls/DeblurDiff):
  deblurdiff convert --checkpoint model.pth --output deblurdiff-released/
  deblurdiff infer --checkpoint deblurdiff-released/ --input photo.png --output photo-sharp.png

MSGD (trained from scratch, no pretrained weights), or everything on bundled photographs:
  deblurdiff train --manifest manifest.parquet --preset msgd-cpu --resolution 96 --batch-size 4 --lr 1e-3 \\
      --max-steps 600 --output-dir run-msgd/
  deblurdiff demo --out demo_out

{EXIT_RULE}
"""

# what a re-run does after Ctrl-C, per command (the command line itself is appended)
RESUME = {
    "train": "checkpoints are kept; resume from the newest with",
    "infer": "the images written so far are kept; the same command deblurs them all again",
    "evaluate": "nothing half-written is kept; run it again with",
    "convert": "nothing half-written is kept; run it again with",
    "demo": "finished steps of the data are kept; run it again with",
}


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when its default is worth showing — not for
    required options, flags, None or empty values, or help that already names its default (as
    ``blurforge --help`` does) — and keeps text with line breaks (example epilogs) as written."""

    def _fill_text(self, text, width, indent):
        return text if "\n" in text else super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.required or not action.option_strings or action.nargs == 0:
            return text  # nargs 0: store_true / store_false / BooleanOptionalAction flags
        if action.default is None or action.default is argparse.SUPPRESS or action.default in ("", [], ()):
            return text
        return f"{text} (default: %(default)s)"


def cmd_describe(args: argparse.Namespace) -> int:
    from deblurdiff.choices import is_msgd_preset

    if is_msgd_preset(args.preset):  # the MSGD family: guidance networks + icDPM UNet, all trained
        from deblurdiff.msgd import build_msgd

        if args.pretrained:
            raise ValueError(f"--preset {args.preset} is MSGD, trained from scratch without pretrained parts — "
                             "drop --pretrained")
        model, parts, args.variant = build_msgd(args.preset, seed=args.seed), ("guidance", "unet"), "-"
    else:
        from deblurdiff.presets import build_model

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
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from deblurdiff.train import run_train

    return run_train(args)


def cmd_infer(args: argparse.Namespace) -> int:
    from deblurdiff.infer import run_infer

    return run_infer(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from deblurdiff.evaluate import run_evaluate

    return run_evaluate(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from deblurdiff.convert import run_convert

    return run_convert(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from deblurdiff.demo import run_demo

    return run_demo(args)


DEMO_STEPS = 600  # MSGD training steps of the default demo (README: measured PSNR and wall time)


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _examples(*lines: str) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    from deblurdiff import __version__
    from deblurdiff.convert import CONVERT_DESCRIPTION, CONVERT_EPILOG, add_convert_arguments
    from deblurdiff.evaluate import EVALUATE_DESCRIPTION, EVALUATE_EXAMPLES, add_evaluate_arguments
    from deblurdiff.infer import INFER_DESCRIPTION, INFER_EXAMPLES, add_infer_arguments
    from deblurdiff.train import TRAIN_DESCRIPTION, add_train_arguments

    p = argparse.ArgumentParser(
        prog="deblurdiff",
        description="Train, run and score diffusion deblurring models on blurforge manifests: DeblurDiff "
                    "(LKPN + EAC + ControlNet on a frozen Stable Diffusion; Kong et al. 2025) and MSGD "
                    "(multiscale structure guided diffusion, trained from scratch; Ren et al. 2023).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"deblurdiff {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_, description, epilog):
        sp = sub.add_parser(name, help=help_, description=description, epilog=epilog, allow_abbrev=False,
                            formatter_class=HelpFormatter)
        sp.set_defaults(func=func)
        return sp

    d = add("describe", cmd_describe, "list a preset's parts and parameter counts",
            "Build a model from a preset and list its parts, their parameter counts and which of them train. "
            "The tiny and msgd-* presets need no weights; sd21-base and sd15 read Stable Diffusion from "
            "--pretrained.",
            _examples("deblurdiff describe --preset tiny",
                      "deblurdiff describe --preset msgd-cpu",
                      "deblurdiff describe --preset sd21-base --pretrained /models/stable-diffusion-2-1-base"))
    d.add_argument("--preset", choices=PRESETS, required=True, help=PRESET_HELP)
    d.add_argument("--pretrained", metavar="SD_DIR",
                   help="local diffusers folder of Stable Diffusion (sd21-base, sd15; never downloaded)")
    d.add_argument("--variant", choices=VARIANTS, default="lkpn",
                   help="DeblurDiff conditioning variant: lkpn (the paper's model) or one of the paper's ablations")
    d.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the new weights (all of the tiny preset's)")

    add_train_arguments(add("train", cmd_train, "train DeblurDiff or MSGD on blurforge manifests",
                            TRAIN_DESCRIPTION, None))
    add_infer_arguments(add("infer", cmd_infer, "deblur an image, a folder or a manifest split with a checkpoint",
                            INFER_DESCRIPTION, INFER_EXAMPLES))
    add_evaluate_arguments(add("evaluate", cmd_evaluate, "score predictions against a manifest split (PSNR/SSIM, "
                                                         "optional LPIPS and no-reference metrics)",
                               EVALUATE_DESCRIPTION, EVALUATE_EXAMPLES))
    add_convert_arguments(add("convert", cmd_convert, "convert the authors' released model.pth into a checkpoint "
                                                      "folder", CONVERT_DESCRIPTION, CONVERT_EPILOG))
    demo = add("demo", cmd_demo, "the whole mission on bundled photographs, on a CPU, in minutes",
               "The whole mission on the embedded default, on a CPU: blurforge demo data -> train MSGD "
               "(msgd-cpu) for a few minutes -> deblur the test split -> evaluate against the blurry input; "
               "plus DeblurDiff's tiny preset as a pipeline check.",
               _examples("deblurdiff demo --out demo_out",
                         "deblurdiff demo --out demo_quick --steps 100 --check-steps 5"))
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output directory")
    demo.add_argument("--steps", type=_positive, default=DEMO_STEPS, metavar="N",
                      help="training steps of the MSGD model")
    demo.add_argument("--samples", type=_positive, default=1, metavar="N", help="MSGD samples averaged per test image")
    demo.add_argument("--check-steps", type=_positive, default=20, metavar="N",
                      help="training steps of the DeblurDiff tiny pipeline check")
    demo.add_argument("--threads", type=_positive, default=1, metavar="N",
                      help="torch intra-op threads: the demo's models are small and gain little from more, and "
                           "on a machine shared with other work OpenMP's spinning threads made a 2-thread run "
                           "5x slower than a 1-thread one")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def resume_command(command: str, argv: list[str]) -> str:
    """The command line that continues ``argv`` after an interruption."""
    if command == "train" and "--resume" not in argv and not any(a.startswith("--resume=") for a in argv):
        argv = [*argv, "--resume", "latest"]
    return shlex.join(["deblurdiff", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader of stdout left early ('deblurdiff describe ... | head'): no traceback, and later
        # writes (the interpreter's final flush included) go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        # describe only prints, so what the reader took is all it wanted; any other command was cut short
        return 0 if args.command == "describe" else EXIT_INCOMPLETE
    except KeyboardInterrupt:
        note = RESUME.get(args.command, "run it again with")
        print(f"deblurdiff {args.command}: interrupted — {note}:\n  {resume_command(args.command, argv)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, NotImplementedError,
            ImportError) as exc:
        print(f"deblurdiff {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
