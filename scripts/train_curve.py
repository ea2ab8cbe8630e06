"""Training curve on a CPU: held-out PSNR of an MSGD model against the blurry input, every N steps.

    python scripts/train_curve.py --demo-data curve/data --out curve/ --steps 600 --every 100
    python scripts/train_curve.py --manifest m.parquet --split val --out curve/ --steps 2000 --every 250 \\
        -- --guidance none                                  # anything after -- goes to 'deblurdiff train'

Trains once with the real trainer (``deblurdiff train``, a checkpoint every ``--every`` steps,
all kept), then deblurs the held-out split at full size with every checkpoint through the real
inference pipeline (:class:`deblurdiff.msgd_infer.MSGDDeblurrer`) and scores it with
:mod:`deblurdiff.metrics`. The baseline, in the same run, is the blurry input itself:
``gain = PSNR(output) − PSNR(input)``. ``train s`` is the trainer's elapsed time at that step
(from ``metrics.jsonl``). Defaults are the demo's (``deblurdiff demo``) training
settings; ``--demo-data DIR`` builds the demo's data first (blurforge, 192 px).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def held_out(manifest: Path, split: str):
    from deblurdiff.data import load_pairs, read_pair

    pairs = load_pairs([manifest], split)
    return [(p.key, *read_pair(p)) for p in pairs.pairs]


def evaluate(checkpoint: Path, pairs, settings) -> dict:
    """Mean PSNR/SSIM of the model's outputs and of the blurry inputs over ``pairs``."""
    import torch

    from deblurdiff.metrics import psnr, ssim
    from deblurdiff.msgd import MSGD
    from deblurdiff.msgd_infer import MSGDDeblurrer

    model = MSGD.from_pretrained(checkpoint).eval()
    run = MSGDDeblurrer(model, settings)
    scores = {"psnr": [], "ssim": [], "psnr_input": [], "ssim_input": []}
    with torch.no_grad():
        for key, blurry, sharp in pairs:
            out = run([blurry], [key])[0]
            scores["psnr"].append(psnr(out, sharp))
            scores["ssim"].append(ssim(out, sharp))
            scores["psnr_input"].append(psnr(blurry, sharp))
            scores["ssim_input"].append(ssim(blurry, sharp))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="blurforge manifest to train on (train split) and score (--split)")
    src.add_argument("--demo-data", metavar="DIR", help="build the deblurdiff demo's data into DIR and use it")
    p.add_argument("--split", default="test", help="held-out split to score (default test)")
    p.add_argument("--out", required=True, help="run directory (the trainer's --output-dir is OUT/train)")
    p.add_argument("--steps", type=int, default=600, help="training steps in total (default 600)")
    p.add_argument("--every", type=int, default=100, help="steps between evaluations (default 100)")
    p.add_argument("--train-args", default=None,
                   help="trainer options (default: the demo's, deblurdiff.demo.MSGD_TRAIN); more after --")
    p.add_argument("--sampler", default=None, help="sampler (default: the preset's)")
    p.add_argument("--sampling-steps", type=int, default=None, help="sampling steps (default: the preset's)")
    p.add_argument("--samples", type=int, default=1, help="samples averaged per image (default 1)")
    p.add_argument("--tile-size", type=int, default=0, help="inference tile side, 0 = untiled (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from deblurdiff.demo import DEMO_MAX_SIDE, MSGD_TRAIN, run_command
    from deblurdiff.infer import InferSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.demo_data:
        from blurforge.demo import run_demo

        if run_demo(Path(args.demo_data), quiet=True, max_side=DEMO_MAX_SIDE):
            return 1
        manifest = Path(args.demo_data) / "manifest.parquet"
    else:
        manifest = Path(args.manifest)
    train_args = args.train_args.split() if args.train_args else list(MSGD_TRAIN)
    pairs = held_out(manifest, args.split)
    print(f"train_curve: {len(pairs)} held-out '{args.split}' pairs of {manifest}; trainer options "
          f"{' '.join(train_args + extra)}; {torch.get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    rc = run_command(["train", "--manifest", str(manifest), *train_args, "--max-steps", str(args.steps),
                     "--output-dir", str(out / "train"), "--checkpoint-every", str(args.every),
                     "--keep-checkpoints", "0", "--log-every", str(args.every), "--val-every", "0",
                     "--num-workers", "0", "--seed", str(args.seed), "--quiet", *extra])
    if rc:
        return rc
    print(f"train_curve: trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; scoring every checkpoint")
    logged = {r["step"]: r for r in map(json.loads, (out / "train" / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"}
    from deblurdiff.msgd import MSGD
    from deblurdiff.train import list_checkpoints

    print(f"{'step':>6}{'train s':>9}{'loss':>9}{'PSNR':>8}{'input':>8}{'gain dB':>9}{'SSIM':>8}{'input':>8}")
    curve = []
    for step, path in list_checkpoints(out / "train"):
        config = MSGD.read_config(path / "model")
        settings = InferSettings(sampler=args.sampler or config.sampler,
                                 steps=args.sampling_steps or config.sampling_steps, seed=args.seed,
                                 tile_size=args.tile_size or None, tile_overlap=args.tile_size // 2,
                                 color_fix="none", samples=args.samples)
        s = evaluate(path / "model", pairs, settings)
        rec = logged.get(step, {})
        curve.append({"step": step, "train_s": rec.get("elapsed_s"), "loss": rec.get("loss"), **s})
        print(f"{step:>6}{rec.get('elapsed_s', float('nan')):>9.0f}{rec.get('loss', float('nan')):>9.4f}"
              f"{s['psnr']:>8.2f}{s['psnr_input']:>8.2f}{s['psnr'] - s['psnr_input']:>+9.2f}{s['ssim']:>8.3f}"
              f"{s['ssim_input']:>8.3f}", flush=True)
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    last = curve[-1]
    print(f"train_curve: after {last['step']} steps held-out PSNR "
          f"{last['psnr']:.2f} dB vs the blurry input's {last['psnr_input']:.2f} dB "
          f"({last['psnr'] - last['psnr_input']:+.2f} dB) -> {out / 'curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
