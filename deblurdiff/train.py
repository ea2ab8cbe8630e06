"""``deblurdiff train``: train the ControlNet and LKPN of DeblurDiff on blurforge manifests.

One CPU, one GPU, or many (``accelerate launch`` / ``torchrun``) through accelerate's
``Accelerator``; nothing home-made for distribution except sharding the sample stream by rank
(``deblurdiff.data.SampleStream``).

Batches: ``--batch-size`` is the global batch of one optimizer step (all processes together);
each process runs ``--micro-batch-size`` pairs per forward and accumulates gradients over
``batch-size / (processes x micro-batch-size)`` micro-batches. The split is printed at start-up.

One optimizer step::

    for each of the accumulation micro-batches (per process):
        losses = model.training_losses(blurry, sharp, noise_generator)   # autocast
        backward(losses["loss"])        # always, so DDP ranks stay in lock-step
    if any process saw a non-finite loss, or the gradient norm is non-finite:
        skip: zero the gradients, no optimizer or LR step, count it (skipped_nonfinite)
    else:
        clip to --max-grad-norm (0 = no clipping), optimizer step, LR step

Recipes (``--recipe``) set the defaults of the optimisation and model options together: ``paper``
(Kong et al. 2025) and ``released`` (the authors' code, github.com/kkkls/DeblurDiff); any option
given explicitly wins. :data:`RECIPES` lists them.

Mixed precision: the frozen UNet is cast to fp16/bf16, the VAE too unless its config asks for
fp32 (``force_upcast``, SD's VAE), in which case it also runs in fp32 under autocast; the
trained ControlNet and LKPN keep fp32 master weights; the forward runs under autocast (fp16 adds
accelerate's GradScaler, whose overflow skips are counted as ``skipped_overflow``). Latents,
noise and z_t stay fp32; each network casts its own inputs. On CUDA, fp32 matmuls use TF32
unless ``--no-tf32``.

Outputs in ``--output-dir D``:

- ``D/metrics.jsonl``: one JSON object per logged step (``type: "train"``: step, epoch, sample,
  loss, loss_eps, loss_latent, [loss_pixel], lr, grad_norm, samples_per_s, skipped_nonfinite,
  skipped_overflow, padded_samples, elapsed_s) and per validation (``type: "val"``: psnr, ssim and
  the blurry input's psnr/ssim as a baseline). Non-finite values are written as null.
- ``D/checkpoint-STEP/``: ``model/`` (``DeblurDiff.save_pretrained``), ``optimizer.pt``,
  ``scheduler.pt``, ``scaler.pt`` (fp16), ``rng-RANK.pt`` (python, numpy, torch, cuda and the
  noise generator), ``state.json`` (step, data position, counters, args; written last). Written
  to ``D/.checkpoint-STEP.tmp`` and renamed, so a checkpoint directory is always complete; the
  newest ``--keep-checkpoints`` are kept.
- ``D/final/``: ``DeblurDiff.save_pretrained`` — ``DeblurDiff.from_pretrained(D/final)`` loads it.
- ``D/val/step-N/KEY.png``: blurry | output | sharp, side by side.

Resuming (``--resume latest`` or a checkpoint path) restores the trained weights, optimizer,
LR scheduler, RNG states and data position, and trims ``metrics.jsonl`` to the checkpoint's
step: the resumed run continues the same loss curve, step for step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TRAIN_DESCRIPTION = (
    "Train DeblurDiff's ControlNet and LKPN (on a frozen Stable Diffusion) on the train split of blurforge "
    "manifests, or an MSGD model from scratch (--preset msgd-*). Runs on one CPU or GPU, or on many with "
    "'accelerate launch'. Writes metrics.jsonl, checkpoint-STEP/ folders (resumable), val/ and final/ (what "
    "'deblurdiff infer --checkpoint' takes) into --output-dir."
)

EPILOG = """\
examples:
  deblurdiff train --manifest pairs/ --preset tiny --resolution 32 --batch-size 4 --max-steps 100 --output-dir runs/tiny
  deblurdiff train --manifest m.parquet --preset msgd-cpu --resolution 96 --batch-size 4 --lr 1e-3 \\
      --lr-warmup 50 --lr-decay cosine --max-steps 600 --output-dir runs/msgd    # MSGD: the demo's run
  deblurdiff train --manifest pairs/ --preset tiny --resolution 32 --batch-size 4 --max-steps 200 \\
      --output-dir runs/tiny --resume latest     # the first run, continued to 200 steps (or after Ctrl-C)

the paper's batch 128 on 8 GPUs (8 processes x 16 pairs), and the released code's recipe (batch 64):
  accelerate launch --num_processes 8 -m deblurdiff train --manifest m.parquet --preset sd21-base \\
      --pretrained SD21 --output-dir runs/sd --micro-batch-size 16 --mixed-precision bf16 --gradient-checkpointing
  accelerate launch --num_processes 8 -m deblurdiff train --recipe released --manifest m.parquet \\
      --preset sd21-base --pretrained SD21 --output-dir runs/released --micro-batch-size 8

recipes (--recipe, DeblurDiff presets; an option given explicitly overrides its recipe value):
  paper     Kong et al. 2025: Adam (AdamW, weight decay 0), lr 5e-5, global batch 128, 100k steps,
            512x512 crops; clipping at 1.0 and fp32 are this project's choices (the paper names none);
            model: diffusers' ControlNet conditioning embedding, blurry image in [-1, 1], posterior mean.
  released  the authors' code (github.com/kkkls/DeblurDiff train.py, configs/train/train.yaml):
            AdamW lr 1e-4, weight decay 0.01 (torch's default), no gradient clipping, no LR schedule,
            global batch 64, 200k steps, fp32, gradient checkpointing; model: one conv over
            cat(z_t, z_lq, z_s) into the ControlNet, blurry image in [0, 1], posterior sampling, LKPN
            ResBlock/attention outputs zero-initialised, attention in 64-pixel latent windows
            (no effect at 512 crops), linspace timesteps for validation.
            (Not reproduced: its dataset drops the caption to "" for half the samples; here the
            prompt is always empty.)
MSGD presets take Adam, lr 1e-4, batch 256, 100k steps, clipping at 1.0 and fp32 unless given; the
paper's ablations (its Table 9) are switches: --guidance none | input, --scales 4,
--guidance-target rgb, --regression-weight 0.

--batch-size is the global batch per optimizer step: processes x --micro-batch-size x accumulation
steps. E.g. batch 128 on 8 GPUs with --micro-batch-size 16 takes 1 micro-batch per step; on 1 GPU,
8 accumulated micro-batches. Pairs smaller than --resolution are reflect-padded (--small-pairs pad)
or dropped (skip); either way they are counted in the summary and metrics.

Validation (--val-every N) runs every N steps and once more at the end of the run: val/step-S/KEY.png
shows blurry | output | sharp with the PSNR/SSIM of the blurry and the output panels against the
sharp one; the means go to metrics.jsonl (type "val").
"""

# Defaults of the recipe-controlled options (argparse leaves them None; apply_recipe fills them in).
RECIPES = {
    "paper": {
        "optimizer": "adamw", "lr": 5e-5, "weight_decay": 0.0, "batch_size": 128, "max_steps": 100_000,
        "max_grad_norm": 1.0, "mixed_precision": "no", "gradient_checkpointing": False,
        "controlnet_input": "embedding", "blurry_range": "signed", "posterior": "mode", "lkpn_zero_init": "output",
        "timestep_spacing": None, "attention_window": None,
    },
    "released": {
        "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "batch_size": 64, "max_steps": 200_000,
        "max_grad_norm": 0.0, "mixed_precision": "no", "gradient_checkpointing": True,
        # deblurdiff.presets.RELEASED_SETTINGS
        "controlnet_input": "concat", "blurry_range": "unit", "posterior": "sample",
        "lkpn_zero_init": "residual-branches", "timestep_spacing": "linspace", "attention_window": 64,
    },
}

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "state.json"


# ----------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``p`` (and its description and epilog); returns ``p``.

    Option names come from :mod:`deblurdiff.choices`, so building the parser imports no torch."""
    from deblurdiff.choices import (BLURRY_RANGES, CONTROLNET_INPUTS, POSTERIORS, PRESET_HELP, PRESETS,
                                    TIMESTEP_SPACINGS, VARIANTS, ZERO_INITS)
    from deblurdiff.msgd_train import add_msgd_arguments

    p.description = TRAIN_DESCRIPTION
    p.epilog = EPILOG

    g = p.add_argument_group("data")
    g.add_argument("--manifest", action="append", required=True, metavar="M",
                   help="blurforge manifest (.parquet, shard folder or synthesize output); repeat for several")
    g.add_argument("--manifest-weight", action="append", type=_nonneg_float, metavar="W",
                   help="share of the draws for each --manifest, in order (default: every pair once per epoch)")
    g.add_argument("--resolution", metavar="PX", type=_positive_int, default=512, help="square crop size in pixels")
    g.add_argument("--small-pairs", choices=["pad", "skip"], default="pad",
                   help="pairs smaller than the crop: reflect-pad them or drop them (counted either way)")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal/vertical flips")
    g.add_argument("--num-workers", metavar="N", type=_nonneg_int, default=None,
                   help="DataLoader worker processes per training process (default: from the CPU count, "
                        "printed at start-up)")

    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESETS, required=True, help=PRESET_HELP)
    g.add_argument("--pretrained", metavar="SD_DIR",
                   help="local diffusers folder of Stable Diffusion (sd21-base, sd15; never downloaded)")
    g.add_argument("--variant", choices=VARIANTS, default="lkpn",
                   help="DeblurDiff conditioning variant: lkpn (the paper's model) or one of the paper's ablations")
    g.add_argument("--recipe", choices=list(RECIPES), default="paper",
                   help="DeblurDiff: the values of the options marked 'recipe' below that are not given (see the "
                        "table at the end)")
    g.add_argument("--controlnet-input", choices=CONTROLNET_INPUTS, default=None,
                   help="how the condition enters the ControlNet: embedding (diffusers' conv-SiLU-zero conv, "
                        "added to conv_in) or concat (one conv over cat(z_t, condition), the released code) "
                        "(recipe: paper embedding, released concat)")
    g.add_argument("--blurry-range", choices=BLURRY_RANGES, default=None,
                   help="range the blurry image enters the VAE in: signed [-1, 1] or unit [0, 1] "
                        "(recipe: paper signed, released unit)")
    g.add_argument("--posterior", choices=POSTERIORS, default=None,
                   help="latents from the VAE posterior: mode (mean) or sample (recipe: paper mode, released sample)")
    g.add_argument("--lkpn-zero-init", choices=ZERO_INITS, default=None,
                   help="zero-initialised LKPN layers: output (the output conv) or residual-branches (also every "
                        "ResBlock's conv2 and attention proj_out) (recipe: paper output, released residual-branches)")
    g.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS, default=None,
                   help="sampler timestep spacing for validation, recorded in the checkpoint for infer "
                        "(recipe: paper = the scheduler's own, released linspace)")
    g.add_argument("--attention-window", metavar="PX", type=_positive_int, default=None,
                   help="attention in windows of PX latent pixels (halved per level in the UNets), as the released "
                        "code; only latents larger than PX are affected (recipe: paper global, released 64)")
    g.add_argument("--eps-loss-weight", metavar="W", type=_nonneg_float, default=1.0,
                   help="weight of mse(eps_pred, eps)")
    g.add_argument("--latent-loss-weight", metavar="W", type=_nonneg_float, default=1.0,
                   help="weight of mse(z_s, z0)")
    g.add_argument("--pixel-loss-weight", metavar="W", type=_nonneg_float, default=0.0,
                   help="weight of the paper's pixel loss through the frozen decoder; 0 = off")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", metavar="B", type=_positive_int, default=None,
                   help="global batch per optimizer step, all processes together (recipe: paper 128, released 64)")
    g.add_argument("--micro-batch-size", metavar="M", type=_positive_int, default=None,
                   help="pairs per process per forward; gradients accumulate over batch / (processes x M) "
                        "micro-batches (default: batch / processes, no accumulation)")
    g.add_argument("--max-steps", metavar="N", type=_positive_int, default=None,
                   help="optimizer steps in total (recipe: paper 100000, released 200000)")
    g.add_argument("--optimizer", choices=["adamw", "adam"], default=None,
                   help="adamw (decoupled weight decay) or adam (L2 in the gradient); with weight decay 0 both are "
                        "Adam (recipe: adamw)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (recipe: paper 5e-5, released 1e-4)")
    g.add_argument("--weight-decay", metavar="WD", type=_nonneg_float, default=None,
                   help="(recipe: paper 0, released 0.01)")
    g.add_argument("--lr-warmup", type=_nonneg_int, default=0, metavar="STEPS",
                   help="linear warm-up steps, then constant")
    g.add_argument("--lr-decay", choices=["none", "cosine"], default="none",
                   help="after the warm-up: none = constant (as both papers), cosine = decay to 0 at --max-steps "
                        "(short runs such as the CPU demo; resume with the same --max-steps)")
    g.add_argument("--max-grad-norm", metavar="NORM", type=_nonneg_float, default=None,
                   help="gradient clipping, 0 = off (recipe: paper 1, released 0)")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="half-precision frozen parts + autocast; trained weights, latents and noise stay fp32 "
                        "(recipe: no)")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="trade compute for activation memory (recipe: paper off, released on)")
    g.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="on CUDA, keep fp32 matmuls and convolutions in full fp32 (default: TF32 allowed)")
    g.add_argument("--seed", metavar="S", type=int, default=0, help="seeds the new weights, the data order, crops and noise")

    g = p.add_argument_group("output")
    g.add_argument("--output-dir", required=True, metavar="D", help="run directory (metrics, checkpoints, val/, final/)")
    g.add_argument("--checkpoint-every", metavar="N", type=_nonneg_int, default=1000,
                   help="steps between checkpoints; 0 = only at the end")
    g.add_argument("--keep-checkpoints", metavar="K", type=_nonneg_int, default=3, help="newest checkpoints kept; 0 = all")
    g.add_argument("--resume", metavar="latest|PATH",
                   help="continue from the newest complete checkpoint in --output-dir (latest; starts fresh if "
                        "there is none) or from the checkpoint directory PATH")
    g.add_argument("--log-every", metavar="N", type=_positive_int, default=10,
                   help="steps per metrics.jsonl line (each line holds the means over its steps)")
    g.add_argument("--val-every", metavar="N", type=_nonneg_int, default=1000,
                   help="steps between validations, and one at the end of the run; 0 = off")
    g.add_argument("--val-count", metavar="N", type=_positive_int, default=4,
                   help="validation pairs: the first by key of the val split (of the train split if there is none)")
    g.add_argument("--val-steps", metavar="N", type=_positive_int, default=20, help="DDIM steps of the validation sampler")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")
    add_msgd_arguments(p)
    return p


def main_for_tests(argv: list[str]) -> int:
    """Parse ``argv`` as the train subcommand's options and run; errors -> message + status 2."""
    p = argparse.ArgumentParser(prog="deblurdiff train", allow_abbrev=False)
    add_train_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_train(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"deblurdiff train: error: {exc}", file=sys.stderr)
        return 2


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` command: 0 when it finished, 1 if every step of this run was skipped as
    non-finite (the weights did not change); bad inputs raise ``ValueError``/``FileNotFoundError``."""
    result = train(args)
    ran = result.state.step - result.start_step
    if ran and result.skipped_this_run == ran:
        print(f"train: every one of the {ran} step(s) of this run had a non-finite loss or gradient and was "
              "skipped — the weights did not change; lower --lr, try --mixed-precision no, or check the "
              "manifest's images", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------- training parts


def _loss_module_class():
    """The class is built on first use so that importing this module (for ``--help``) skips torch."""
    import torch

    class TrainingLosses(torch.nn.Module):
        """``forward(blurry, sharp, generator) -> model.training_losses(...)``: a forward for DDP and
        accelerate's autocast wrapper to hook (DeblurDiff itself has no ``forward``)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, blurry, sharp, generator=None, **kwargs):  # kwargs: MSGD's step
            return self.model.training_losses(blurry, sharp, generator=generator, **kwargs)

    return TrainingLosses


def half_dtype(mixed_precision: str):
    """torch dtype of the frozen parts for ``--mixed-precision`` (None for 'no')."""
    import torch

    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def cast_frozen(model, dtype) -> None:
    """Cast the frozen UNet, and the VAE unless its config asks for fp32 (``force_upcast``), to
    ``dtype`` (no-op for None); trained parts stay fp32."""
    import torch

    if dtype is None:
        return
    parts = [model.unet] + ([] if model.vae.config.get("force_upcast", False) else [model.vae])
    for module in parts:
        if getattr(module, "_keep_in_fp32_modules", None):
            module.to(dtype=dtype)  # diffusers' own .to (warns about those modules)
        else:  # nothing to keep in fp32: skip diffusers' .to, which warns even about an empty list
            torch.nn.Module.to(module, dtype=dtype)


def build_optimizer(params, name: str, lr: float, weight_decay: float):
    import torch

    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[name]
    return cls(params, lr=lr, weight_decay=weight_decay)


def build_scheduler(optimizer, warmup: int, decay: str = "none", total: int | None = None):
    """LR factor at step s: ``min(1, (s + 1) / (warmup + 1))`` (linear warm-up, then constant), times
    ``0.5 (1 + cos(pi min(1, (s - warmup) / (total - warmup))))`` after the warm-up for ``decay="cosine"``."""
    import torch

    def factor(s: int) -> float:
        f = min(1.0, (s + 1) / (warmup + 1))
        if decay == "cosine" and s >= warmup:
            f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every recipe-controlled option left unset (None) from ``RECIPES[args.recipe]``; returns args."""
    for name, value in RECIPES[getattr(args, "recipe", None) or "paper"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def split_batch(batch: int, processes: int, micro: int | None) -> tuple[int, int]:
    """(pairs per process per forward, accumulation steps) for a global ``batch`` over ``processes``."""
    if micro is None:
        if batch % processes:
            raise ValueError(f"--batch-size {batch} does not split over {processes} processes — choose a multiple of "
                             f"{processes}, or set --micro-batch-size")
        return batch // processes, 1
    if batch % (processes * micro):
        raise ValueError(f"--batch-size {batch} is not a multiple of {processes} process(es) x --micro-batch-size "
                         f"{micro} — the global batch must be processes x micro-batch x accumulation steps")
    return micro, batch // (processes * micro)


def default_num_workers(processes_on_node: int) -> int:
    """DataLoader workers per training process: the CPUs this process may use, shared by the
    training processes of the node, less one for the process itself; 1 to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, processes_on_node) - 1))


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for fp32 matmuls and cuDNN convolutions on CUDA."""
    import torch

    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


# ---------------------------------------------------------------------------------- checkpoints


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint restores."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    next_sample: int = 0  # data position: the next global sample number
    skipped_nonfinite: int = 0
    skipped_overflow: int = 0
    padded_samples: int = 0  # samples (all processes) that were reflect-padded
    samples: int = 0  # samples consumed (all processes)
    extra: dict = field(default_factory=dict)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json) in ``output_dir``, oldest first."""
    found = []
    if output_dir.is_dir():
        for d in output_dir.iterdir():
            m = CHECKPOINT_RE.match(d.name)
            if m and (d / STATE_NAME).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def find_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` names (None: start fresh)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: {path / STATE_NAME} missing — not a complete checkpoint written by "
            "'deblurdiff train'; use --resume latest to pick the newest complete one"
        )
    return path


def rng_state(generator) -> dict:
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, output_dir: Path, model, optimizer, scheduler, generator,
                    state: TrainState, args: argparse.Namespace, keep: int) -> Path:
    """Write ``output_dir/checkpoint-STEP`` atomically (temp dir + rename) and prune old ones.

    Every process writes its own ``rng-RANK.pt``; the main process writes the rest, ``state.json``
    last, then renames. Assumes ``output_dir`` is shared by all processes.
    """
    import torch

    target = output_dir / f"checkpoint-{state.step}"
    tmp = output_dir / f".checkpoint-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(generator), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        model.save_pretrained(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = {
            "step": state.step,
            "data_position": {"next_sample": state.next_sample},
            "state": dataclasses.asdict(state),
            "world_size": accelerator.num_processes,
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "time": time.time(),
        }
        (tmp / STATE_NAME).write_text(json.dumps(record, indent=1, default=str) + "\n")
        old = None
        if target.exists():
            old = output_dir / f".{target.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
        if keep > 0:
            for _, d in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(d)
    accelerator.wait_for_everyone()
    return target


def _load_deblurdiff_parts(path: Path, model) -> None:
    """Load the trained ControlNet and LKPN of a DeblurDiff checkpoint, after checking its config."""

    from deblurdiff.model import CONFIG_NAME, load_trained_parts

    saved = json.loads((path / "model" / CONFIG_NAME).read_text())["config"]
    now = dataclasses.asdict(model.config)
    differ = sorted(k for k in now if k != "pretrained" and saved.get(k) != now[k])
    if differ:
        raise ValueError(
            f"{path}: checkpoint was trained with {', '.join(f'{k}={saved.get(k)!r}' for k in differ)} "
            f"but this run has {', '.join(f'{k}={now[k]!r}' for k in differ)} — resume with the same "
            "--preset/--variant/--seed/--recipe/model options/loss weights, or start a new --output-dir"
        )
    controlnet, lkpn = load_trained_parts(path / "model", model.config)
    model.controlnet.load_state_dict(controlnet.state_dict())
    if model.lkpn is not None:
        model.lkpn.load_state_dict(lkpn.state_dict())


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler, generator) -> TrainState:
    """Restore trained weights, optimizer, scheduler, scaler and RNG from ``path``; returns the state."""
    import torch

    record = json.loads((path / STATE_NAME).read_text())
    if getattr(model, "family", None) == "msgd":  # MSGD family: one weights file, its own config check
        model.load_trained(path / "model")
    else:
        _load_deblurdiff_parts(path, model)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False), generator)
    else:
        print(f"deblurdiff train: {rng_file} missing (the checkpoint came from {record.get('world_size')} "
              "process(es)); this process keeps a fresh noise generator", file=sys.stderr)
    s = record["state"]
    return TrainState(**{k: s[k] for k in (f.name for f in dataclasses.fields(TrainState)) if k in s})


# ---------------------------------------------------------------------------------- metrics


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def trim(self, max_step: int) -> None:
        """Keep only records with ``step <= max_step`` (called on resume), atomically."""
        if not self.enabled:
            return
        lines = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if rec.get("step", 0) <= max_step:
                    lines.append(line)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


# ------------------------------------------------------------------------------- validation


def ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def captioned_row(panels: list, captions: list[tuple[str, str]]):
    """``H×W×3`` float images side by side, each over a black strip with two lines of white text
    (``captions[i]``), scaled to fit the panel's width; returns ``(H + strip)×(n W)×3`` float32."""
    import cv2
    import numpy as np

    h, w = panels[0].shape[:2]
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    widest = max(cv2.getTextSize(t, font, 1.0, thick)[0][0] for pair in captions for t in pair)
    scale = min(0.6 * max(1.0, w / 512), max(0.25, (w - 4) / max(widest, 1)))
    line = cv2.getTextSize("Ag", font, scale, thick)[0][1] + 4
    out = []
    for panel, pair in zip(panels, captions):
        strip = np.zeros((2 * line + 4, w, 3), np.uint8)
        for k, text in enumerate(pair):
            cv2.putText(strip, text, (2, (k + 1) * line), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        out.append(np.concatenate([np.asarray(panel, np.float32), strip.astype(np.float32) / 255], axis=0))
    return np.concatenate(out, axis=1)


def validate(accelerator, model, val_set, step: int, args, out_dir: Path) -> dict:
    """Sample the validation pairs, write blurry | output | sharp PNGs captioned with the blurry and
    output panels' PSNR (dB) and SSIM against the sharp one; return the means (main process)."""
    import numpy as np
    import torch

    from blurforge.imageio import encode_image, write_bytes_atomic
    from deblurdiff import msgd_train
    from deblurdiff.metrics import psnr
    from deblurdiff.sampling import sample_ddim

    model.eval()
    step_dir = out_dir / "val" / f"step-{step}"
    gen = torch.Generator().manual_seed(args.seed)  # the same noise at every validation
    scores = {"psnr": [], "ssim": [], "psnr_blurry": [], "ssim_blurry": []}
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, len(val_set), args.micro_batch_size):
            items = [val_set[j] for j in range(i, min(len(val_set), i + args.micro_batch_size))]
            blurry = torch.stack([it["blurry"] for it in items]).to(accelerator.device)
            if getattr(model, "family", None) == "msgd":  # MSGD family: pixel space, its own sampler
                out = msgd_train.validation_samples(model, blurry, args.val_steps, gen).float().cpu()
            else:
                z_lq = model.encode(blurry, gen, blurry=True)
                z0 = sample_ddim(model, z_lq, args.val_steps, gen, timestep_spacing=model.config.timestep_spacing)
                out = model.decode(z0).float().cpu()
            for it, o in zip(items, out):
                b, s = (it["blurry"].permute(1, 2, 0).numpy(), it["sharp"].permute(1, 2, 0).numpy())
                o = o.permute(1, 2, 0).numpy()
                scores["psnr"].append(psnr(o, s))
                scores["ssim"].append(ssim(o, s))
                scores["psnr_blurry"].append(psnr(b, s))
                scores["ssim_blurry"].append(ssim(b, s))
                name = re.sub(r"[^A-Za-z0-9._-]+", "_", it["key"]) + ".png"
                sheet = captioned_row([b, o, s], [
                    (f"blurry {scores['psnr_blurry'][-1]:.2f} dB", f"SSIM {scores['ssim_blurry'][-1]:.3f}"),
                    (f"output {scores['psnr'][-1]:.2f} dB", f"SSIM {scores['ssim'][-1]:.3f}"),
                    ("sharp", "(reference)")])
                write_bytes_atomic(step_dir / name, encode_image(sheet))
    model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


# ------------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    model: object  # the trained DeblurDiff (unwrapped)
    state: TrainState
    start_step: int
    final_loss: float | None  # the last logged loss: the mean over the last --log-every steps (finite ones)
    output_dir: Path
    final_dir: Path | None
    checkpoint: Path | None
    seconds: float
    skipped_this_run: int = 0  # steps of this run (not of the resumed ones) skipped as non-finite


def _check_args(args) -> bool:
    """Refuse bad option combinations and fill the recipe (DeblurDiff) or MSGD defaults; returns
    whether the preset is an MSGD one."""
    from deblurdiff.msgd_train import apply_defaults as apply_msgd_defaults, check_args as check_msgd_args

    msgd = check_msgd_args(args)  # MSGD options only with msgd-* presets, DeblurDiff ones only without
    if msgd:
        apply_msgd_defaults(args)
    else:
        apply_recipe(args)
    if not msgd and args.preset != "tiny" and not args.pretrained:
        raise ValueError(f"--preset {args.preset} needs --pretrained SD_DIR (a local diffusers copy); "
                         "--preset tiny trains a seeded miniature without one")
    if args.preset == "tiny" and args.pretrained:
        raise ValueError("--preset tiny builds its frozen parts in-process; drop --pretrained")
    if args.manifest_weight is not None and len(args.manifest_weight) != len(args.manifest):
        raise ValueError(f"{len(args.manifest_weight)} --manifest-weight value(s) for {len(args.manifest)} "
                         "--manifest(s) — give one weight per manifest, in the same order")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    return msgd


def train(args: argparse.Namespace) -> TrainResult:
    """Run training as ``args`` says (see :func:`add_train_arguments`); returns a :class:`TrainResult`."""
    msgd = _check_args(args)
    import numpy as np
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm

    from deblurdiff.data import PairCrops, FixedPairs, SampleStream, load_pairs
    from deblurdiff.presets import build_model

    t_start = time.perf_counter()
    out = Path(args.output_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    args.micro_batch_size, args.grad_accum = split_batch(args.batch_size, accelerator.num_processes,
                                                         args.micro_batch_size)
    accelerator.gradient_accumulation_steps = args.grad_accum
    main = accelerator.is_main_process
    if args.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(f"--mixed-precision fp16 needs a CUDA GPU (this run is on {accelerator.device.type}); "
                         "use bf16, or no")
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cuda":
        set_tf32(args.tf32)
    if args.num_workers is None:
        args.num_workers = default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if main:
        clip = f"clipping at {args.max_grad_norm:g}" if args.max_grad_norm else "no clipping"
        recipe = "MSGD defaults" if msgd else f"recipe {args.recipe}"
        print(f"deblurdiff train: {recipe}: global batch {args.batch_size} = {world} process(es) x "
              f"{args.micro_batch_size} pairs x {args.grad_accum} accumulation step(s); {args.optimizer} lr "
              f"{args.lr:g} weight decay {args.weight_decay:g}, {clip}; precision {args.mixed_precision}"
              f"{', TF32' if accelerator.device.type == 'cuda' and args.tf32 else ''}; {args.num_workers} data "
              f"worker(s) per process", file=sys.stderr)

    # -- where we start ---------------------------------------------------------------------
    resume_from = find_checkpoint(out, args.resume)
    if args.resume is None and list_checkpoints(out):
        raise ValueError(f"{out} already holds checkpoints — pass --resume latest to continue that run, "
                         "or choose another --output-dir")
    if args.resume == "latest" and resume_from is None and main:
        print(f"deblurdiff train: no checkpoint in {out} yet — starting from scratch", file=sys.stderr)

    # -- data -------------------------------------------------------------------------------
    pairs = load_pairs(args.manifest, "train", crop=args.resolution, small=args.small_pairs)
    dataset = PairCrops(pairs, args.resolution, args.seed, args.manifest_weight, flips=not args.no_flip)
    val_set = None
    if args.val_every:
        val_pairs = load_pairs(args.manifest, "val", crop=args.resolution, small="pad", allow_empty=True)
        val_note = ""
        if len(val_pairs) == 0:
            val_pairs, val_note = pairs, " (no val split in the manifests: using the first train pairs)"
        val_set = FixedPairs(val_pairs, args.resolution, args.val_count)
        if main:
            when = (f"every {args.val_every} steps and at the end of the run" if args.val_every < args.max_steps
                    else f"at the end of the run (step {args.max_steps}; --val-every {args.val_every})")
            print(f"deblurdiff train: validating on {len(val_set)} pair(s) {when}{val_note}", file=sys.stderr)

    # -- model ------------------------------------------------------------------------------
    if msgd:  # the MSGD family (deblurdiff.msgd): pixel space, no frozen parts, all of it trains
        from deblurdiff.msgd_train import build_model_from_args

        model = build_model_from_args(args)
    else:
        model = build_model(
            args.preset, pretrained=args.pretrained, variant=args.variant, seed=args.seed,
            loss_eps_weight=args.eps_loss_weight, loss_latent_weight=args.latent_loss_weight,
            loss_pixel_weight=args.pixel_loss_weight, controlnet_input=args.controlnet_input,
            blurry_range=args.blurry_range, posterior=args.posterior, timestep_spacing=args.timestep_spacing,
            attention_window=args.attention_window, lkpn={"zero_init": args.lkpn_zero_init},
        )
        f = model.vae_scale_factor
        if args.resolution % f:
            raise ValueError(f"--resolution {args.resolution} must be a multiple of the VAE's factor {f} "
                             f"(preset {args.preset})")
        cast_frozen(model, half_dtype(args.mixed_precision))
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    model.train()
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, args.optimizer, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, args.lr_warmup, args.lr_decay, args.max_steps)
    noise_gen = torch.Generator().manual_seed(int(np.random.SeedSequence([args.seed, 2, rank]).generate_state(1)[0]))
    loss_module, optimizer = accelerator.prepare(_loss_module_class()(model), optimizer)

    metrics = MetricsLog(out / "metrics.jsonl", main)
    state = TrainState()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".checkpoint-*"):  # left by a run killed while writing a checkpoint
            shutil.rmtree(stale, ignore_errors=True)
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, model, optimizer, scheduler, noise_gen)
        metrics.trim(state.step)
        if main:
            e, p = dataset.position(state.next_sample)
            print(f"deblurdiff train: resumed from {resume_from} at step {state.step} "
                  f"(epoch {e}, position {p})", file=sys.stderr)
    else:
        metrics.trim(-1)  # a run killed before its first checkpoint starts over
    start_step = state.step
    if state.step >= args.max_steps and main:
        print(f"deblurdiff train: {resume_from} is already at step {state.step} >= --max-steps {args.max_steps}",
              file=sys.stderr)

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.micro_batch_size,
        sampler=SampleStream(state.next_sample, rank, world),
        num_workers=args.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=False,
    )
    batches = iter(loader)
    global_batch = args.micro_batch_size * world  # samples consumed per micro-batch, all processes

    # -- loop -------------------------------------------------------------------------------
    bar = tqdm(total=args.max_steps, initial=state.step, desc="train", unit="step",
               disable=not main or args.quiet, dynamic_ncols=True)
    keys = ["loss", "loss_eps", "loss_latent"] + (["loss_pixel"] if args.pixel_loss_weight > 0 else [])
    if msgd:
        keys = model.loss_names()
    loss_kwargs = {}  # MSGD: the optimizer step, for its denoising-weight ramp
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64)  # finite step means + count, since the last log
    t_log, samples_log = time.perf_counter(), state.samples
    last_logged, grad_norm = None, float("nan")  # last_logged: (mean loss, its first step, its last step)
    skipped_at_start, logged_from = state.skipped_nonfinite, state.step + 1
    last_ckpt = None
    is_fp16 = args.mixed_precision == "fp16"
    try:
        while state.step < args.max_steps:
            step_vals = torch.zeros(len(keys), dtype=torch.float64)
            bad, skip = 0, False
            for _ in range(args.grad_accum):
                batch = next(batches)
                blurry = batch["blurry"].to(accelerator.device, non_blocking=True)
                sharp = batch["sharp"].to(accelerator.device, non_blocking=True)
                with accelerator.accumulate(loss_module):
                    if msgd:
                        loss_kwargs["step"] = state.step
                    losses = loss_module(blurry, sharp, noise_gen, **loss_kwargs)
                    loss = losses["loss"]
                    vals = torch.tensor([float(losses[k].detach()) for k in keys], dtype=torch.float64)
                    finite = bool(torch.isfinite(vals).all())
                    bad += not finite
                    step_vals += vals / args.grad_accum
                    accelerator.backward(loss)  # always: keeps DDP ranks in lock-step
                    if accelerator.sync_gradients:
                        bad_all = int(accelerator.reduce(torch.tensor([bad], device=accelerator.device), "sum").item())
                        skip = bad_all > 0
                        if not skip:
                            norm = accelerator.clip_grad_norm_(params, args.max_grad_norm or float("inf"))
                            grad_norm = float(norm) if norm is not None else float("nan")
                            skip = not math.isfinite(grad_norm) and not is_fp16  # fp16: the scaler handles it
                        if skip:
                            state.skipped_nonfinite += 1
                        else:
                            optimizer.step()
                            if accelerator.optimizer_step_was_skipped:
                                state.skipped_overflow += 1
                            else:
                                scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                state.padded_samples += sum(dataset.is_padded(g) for g in range(state.next_sample,
                                                                                 state.next_sample + global_batch))
                state.samples += global_batch
                state.next_sample += global_batch
            state.step += 1
            if not skip:  # skipped steps stay out of the logged means (all processes agree on skip)
                sums[:-1] += step_vals
                sums[-1] += 1
            bar.update(1)

            if state.step % args.log_every == 0 or state.step == args.max_steps:
                tot = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
                now = time.perf_counter()
                rate = (state.samples - samples_log) / max(now - t_log, 1e-9)
                n = float(tot[-1])
                epoch, pos = dataset.position(state.next_sample)
                rec = {"type": "train", "step": state.step, "epoch": epoch, "sample": state.next_sample}
                rec.update({k: (float(tot[i]) / n if n else float("nan")) for i, k in enumerate(keys)})
                rec.update({
                    "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "samples_per_s": rate,
                    "skipped_nonfinite": state.skipped_nonfinite, "skipped_overflow": state.skipped_overflow,
                    "padded_samples": state.padded_samples, "elapsed_s": now - t_start,
                })
                metrics.write(rec)
                if n:
                    last_logged = (rec["loss"], logged_from, state.step)
                logged_from = state.step + 1
                bar.set_postfix(loss=f"{rec['loss']:.4f}", samples_s=f"{rate:.1f}", refresh=False)
                sums.zero_()
                t_log, samples_log = now, state.samples

            t_pause = time.perf_counter()  # validation and checkpoints do not count in samples/s
            if val_set is not None and (state.step % args.val_every == 0 or state.step == args.max_steps):
                if main:
                    scores = validate(accelerator, accelerator.unwrap_model(loss_module).model, val_set,
                                      state.step, args, out)
                    metrics.write({"type": "val", "step": state.step, **scores})
                accelerator.wait_for_everyone()

            if (args.checkpoint_every and state.step % args.checkpoint_every == 0) or state.step == args.max_steps:
                last_ckpt = save_checkpoint(accelerator, out, model, optimizer, scheduler, noise_gen, state,
                                            args, args.keep_checkpoints)
            t_log += time.perf_counter() - t_pause
    finally:
        bar.close()

    final_dir = None
    if main:
        model.save_pretrained(out / "final")
        final_dir = out / "final"  # as given on the command line, like every path of the summary
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t_start
    if main:
        small = ""
        if pairs.small:
            small = (f", {pairs.small} pair(s) smaller than {args.resolution}px "
                     f"{'padded' if pairs.small_policy == 'pad' else 'skipped'}"
                     + (f" ({state.padded_samples} padded samples seen)" if pairs.small_policy == "pad" else ""))
        ran = state.step - start_step
        if last_logged is None:
            loss_txt = "final loss n/a (no finite step logged in this run)"
        else:
            loss, first, last = last_logged
            span = f"step {last}" if first == last else f"steps {first}-{last}"
            loss_txt = f"final loss {loss:.4f} (mean of {span}, as logged)"
        print(
            f"train: {ran} steps ({start_step} -> {state.step}) in {seconds:.1f} s, {loss_txt}, "
            f"{state.skipped_nonfinite} skipped non-finite, {state.skipped_overflow} fp16 overflow, "
            f"{len(pairs)} train pairs from {len(pairs.counts)} manifest(s){small} -> {final_dir}"
            + (f" (checkpoint {last_ckpt})" if last_ckpt else "")
        )
    final_loss = last_logged[0] if last_logged is not None else None
    return TrainResult(model, state, start_step, final_loss, out, final_dir, last_ckpt, seconds,
                       state.skipped_nonfinite - skipped_at_start)
