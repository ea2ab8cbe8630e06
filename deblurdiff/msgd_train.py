"""The MSGD family in ``deblurdiff train``: its options, its model, its validation samples.

``deblurdiff train`` runs one loop for both families (data, accelerate, mixed precision,
checkpoints, exact resume); with an ``msgd-*`` preset it calls the three functions here and
passes the optimizer step to :meth:`deblurdiff.msgd.MSGD.training_losses` (the denoising-weight
ramp). MSGD has no frozen parts: everything trains, in fp32 master weights under autocast.
"""

from __future__ import annotations

import argparse

# the option names without importing torch (so --help is instant); they equal deblurdiff.msgd's (tested)
from deblurdiff.choices import GUIDANCE_MODES, PREDICTIONS, TARGETS, is_msgd_preset
from deblurdiff.choices import MSGD_PRESETS as PRESETS

# CLI option -> MSGDConfig field; None on the command line = the preset's value
OPTION_FIELDS = {
    "guidance": "guidance",
    "scales": "scales",
    "guidance_target": "target_color",
    "regression_weight": "regression_weight",
    "denoise_ramp": "denoise_ramp_steps",
    "prediction": "prediction_type",
    "diffusion_target": "target",
}


def _scales(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated powers of 2 such as 2,4,8, got {text!r}") from None
    if not values or any(v < 2 or v & (v - 1) for v in values):
        raise argparse.ArgumentTypeError(f"scales must be powers of 2 >= 2 (e.g. 2,4,8), got {text!r}")
    return values


def add_msgd_arguments(p: argparse.ArgumentParser) -> None:
    """The MSGD options of ``deblurdiff train`` (the paper's Table 9 ablations are switches)."""
    g = p.add_argument_group(
        "MSGD (--preset msgd-*; Ren et al. ICCV 2023, trained from scratch; defaults come from the preset)")
    g.add_argument("--guidance", choices=GUIDANCE_MODES,
                   help="multiscale: guidance features added to the encoder (the paper); input: ablation, the "
                        "guidance outputs concatenated to the input; none: ablation, plain icDPM")
    g.add_argument("--scales", type=_scales, metavar="S,S,...",
                   help="guidance scales; one value = the single-scale ablation (default: 2,4,8, the paper's best)")
    g.add_argument("--guidance-target", choices=["gray", "rgb"],
                   help="colour of the guidance input and regression target; rgb = ablation (default: gray)")
    g.add_argument("--regression-weight", type=float, metavar="W",
                   help="weight of the per-scale guidance regression loss; 0 = ablation without it (default: 1)")
    g.add_argument("--denoise-ramp", type=int, metavar="STEPS",
                   help="the denoising loss weight ramps linearly 0 -> 1 over these steps after a regression-only "
                        "start (paper 60000; msgd-cpu 0)")
    g.add_argument("--prediction", choices=PREDICTIONS,
                   help="what the UNet predicts (paper and msgd-base: epsilon; msgd-cpu: sample)")
    g.add_argument("--diffusion-target", choices=TARGETS,
                   help="image: diffuse the sharp image (paper); residual: its residual over the blurry input "
                        "(msgd-cpu)")


# Defaults of the optimisation options that are left unset (None) for an MSGD preset (DeblurDiff's
# --recipe does not apply): Adam, batch 256 and fp32 as the paper; lr, steps and clipping are this
# project's choices (the paper's text gives a warm-up then a constant LR, not its value).
DEFAULTS = {
    "optimizer": "adamw", "weight_decay": 0.0, "lr": 1e-4, "batch_size": 256, "max_steps": 100_000,
    "max_grad_norm": 1.0, "mixed_precision": "no", "gradient_checkpointing": False,
}
# DeblurDiff-only options and their unset values
DEBLURDIFF_ONLY = {
    "pretrained": None, "variant": "lkpn", "eps_loss_weight": 1.0, "latent_loss_weight": 1.0,
    "pixel_loss_weight": 0.0, "controlnet_input": None, "blurry_range": None, "posterior": None,
    "lkpn_zero_init": None, "timestep_spacing": None, "attention_window": None,
}


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the optimisation options left unset (None) with :data:`DEFAULTS`; returns ``args``."""
    for name, value in DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def check_args(args: argparse.Namespace) -> bool:
    """True for an MSGD preset (after checking its options); False for DeblurDiff presets, which
    must not be given MSGD options. Raises ``ValueError`` naming the option and the fix."""
    given = [f"--{k.replace('_', '-')}" for k in OPTION_FIELDS if getattr(args, k, None) is not None]
    if not is_msgd_preset(args.preset):
        if given:
            raise ValueError(f"{', '.join(given)} only apply to MSGD presets ({', '.join(PRESETS)}); "
                             f"--preset {args.preset} is DeblurDiff — drop them or choose an msgd-* preset")
        return False
    deblurdiff_only = [f"--{name.replace('_', '-')}" for name, unset in DEBLURDIFF_ONLY.items()
                       if getattr(args, name, unset) != unset]
    if deblurdiff_only:
        raise ValueError(f"{', '.join(deblurdiff_only)} only apply to DeblurDiff presets; --preset {args.preset} "
                         "is MSGD (trained from scratch, no pretrained parts) — drop them")
    return True


def build_model_from_args(args: argparse.Namespace):
    """A fresh MSGD model for ``args`` (preset, seed, MSGD options); checks --resolution."""
    from deblurdiff.msgd import build_msgd

    overrides = {field: getattr(args, opt) for opt, field in OPTION_FIELDS.items() if getattr(args, opt) is not None}
    model = build_msgd(args.preset, seed=args.seed, **overrides)
    m = model.size_multiple
    if args.resolution % m:
        raise ValueError(f"--resolution {args.resolution} must be a multiple of {m} for {args.preset} "
                         f"(its deepest level and guidance scale), e.g. {max(m, args.resolution // m * m)}")
    return model


def validation_samples(model, blurry, steps: int, generator):
    """Deblurred (B, 3, H, W) in [0, 1] for validation: the model's own sampler, ``steps`` steps."""
    from deblurdiff.msgd_infer import sample_images

    return sample_images(model, blurry, steps, generator)
