"""The names the ``deblurdiff`` command line offers (presets, variants, samplers, ...), written out
without importing torch or diffusers, so that ``--help`` and argument errors answer at once.

The library modules are the authority for most of them; ``tests/test_deblurdiff_cli.py`` checks
that every copy here equals its original. :mod:`deblurdiff.model` takes its option names from here.
"""

from __future__ import annotations

# DeblurDiff presets (= deblurdiff.frozen.PRESETS) and MSGD presets (= the keys of deblurdiff.msgd.PRESETS)
DEBLURDIFF_PRESETS = ("tiny", "sd21-base", "sd15")
MSGD_PRESETS = ("msgd-tiny", "msgd-cpu", "msgd-base")
PRESETS = DEBLURDIFF_PRESETS + MSGD_PRESETS
PRESET_HELP = ("the model family and its size. DeblurDiff: tiny = a seeded random miniature (CPU tests, no weights); "
               "sd21-base (the paper's), sd15 = Stable Diffusion read from --pretrained. MSGD, trained from scratch: "
               "msgd-tiny (tests), msgd-cpu (the CPU demo), msgd-base (GPUs)")

# DeblurDiffConfig's choices (deblurdiff.model imports these)
VARIANTS = ("lkpn", "blurry", "lkpn-direct", "lkpn-static")
CONTROLNET_INPUTS = ("embedding", "concat")
BLURRY_RANGES = ("signed", "unit")
POSTERIORS = ("mode", "sample")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")  # = deblurdiff.sampling.SPACINGS

ZERO_INITS = ("output", "residual-branches")  # = deblurdiff.lkpn.ZERO_INITS
SAMPLERS = ("ddpm", "ddim", "dpmsolver")  # = the keys of deblurdiff.sampling.SAMPLERS
DEFAULT_STEPS = {"ddpm": 50, "ddim": 20, "dpmsolver": 20}  # = deblurdiff.sampling.DEFAULT_STEPS

# MSGD options (= deblurdiff.msgd.GUIDANCE_MODES, TARGETS, PREDICTIONS)
GUIDANCE_MODES = ("multiscale", "input", "none")
TARGETS = ("image", "residual")
PREDICTIONS = ("epsilon", "v_prediction", "sample")

OPTIONAL_METRICS = ("lpips", "niqe", "musiq", "maniqa", "clipiqa")  # = deblurdiff.metrics.OPTIONAL_METRICS


def is_msgd_preset(name: str | None) -> bool:
    """Whether ``name`` is a preset of the MSGD family (the others are DeblurDiff's)."""
    return name in MSGD_PRESETS
