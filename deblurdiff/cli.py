"""The ``deblurdiff`` command line.

``describe`` builds a model from a preset and reports its parts. ``train``, ``infer`` and
``evaluate`` are not implemented in this version: they say so and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

NOT_YET = {
    "train": "train the model on blurforge manifests",
    "infer": "deblur images with a trained checkpoint",
    "evaluate": "score predictions against a manifest's test split",
}


def cmd_describe(args: argparse.Namespace) -> int:
    from deblurdiff.presets import build_model

    model = build_model(args.preset, pretrained=args.pretrained, variant=args.variant, seed=args.seed)
    rows = []
    for name in ("vae", "unet", "controlnet", "lkpn"):
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


def _not_implemented(args: argparse.Namespace) -> int:
    print(
        f"deblurdiff {args.command}: NOT IMPLEMENTED in this version — only the model "
        "('deblurdiff describe') exists so far.",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    from deblurdiff import __version__

    p = argparse.ArgumentParser(
        prog="deblurdiff",
        description="Train and run DeblurDiff (LKPN + EAC + ControlNet on Stable Diffusion) on blurforge manifests.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"deblurdiff {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("describe", help="build a model from a preset and list its parts and parameter counts",
                       allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--preset", choices=["tiny", "sd21-base", "sd15"], default="tiny",
                   help="tiny: seeded random model for CPU tests; sd*: load from --pretrained")
    d.add_argument("--pretrained", metavar="SD_DIR", help="local diffusers folder of Stable Diffusion (sd presets)")
    d.add_argument("--variant", choices=["lkpn", "blurry", "lkpn-direct", "lkpn-static"], default="lkpn",
                   help="conditioning variant (the paper's ablations)")
    d.add_argument("--seed", type=int, default=0, help="seed of the tiny preset's random weights")
    d.set_defaults(func=cmd_describe)
    for name, help_ in NOT_YET.items():
        sp = sub.add_parser(name, help=f"{help_} (not implemented yet)", add_help=True)
        sp.set_defaults(func=_not_implemented)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command in NOT_YET:
        return _not_implemented(args)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        print(f"deblurdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
