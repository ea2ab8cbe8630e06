"""Presets: a fresh DeblurDiff from a preset name — its frozen parts (:mod:`deblurdiff.frozen`:
``tiny`` built in-process, ``sd21-base`` / ``sd15`` from a local diffusers folder), the LKPN size
that goes with them, and the released code's settings (:data:`RELEASED_SETTINGS`).

Dependencies point one way: this module -> :mod:`deblurdiff.model` -> :mod:`deblurdiff.frozen`.
``PRESETS``, ``FrozenParts``, ``load_frozen_parts`` and ``tiny_scheduler`` are re-exported from
:mod:`deblurdiff.frozen`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from deblurdiff.frozen import PRESETS, FrozenParts, check_preset, load_frozen_parts, tiny_scheduler
from deblurdiff.model import DeblurDiff, DeblurDiffConfig

__all__ = ["PRESETS", "RELEASED_SETTINGS", "FrozenParts", "build_model", "default_lkpn_config", "load_frozen_parts",
           "tiny_scheduler"]

# The released code's architecture and preprocessing (kkkls/DeblurDiff, model/cldm.py, utils/pipeline.py,
# model/unet.py): DeblurDiffConfig overrides that build_model(**RELEASED_SETTINGS) applies and that
# 'deblurdiff convert' records in converted checkpoints.
RELEASED_SETTINGS = {
    "controlnet_input": "concat",  # one conv3x3 over cat(z_t, z_lq, z_s), 12 -> 320
    "blurry_range": "unit",  # the blurry image enters the VAE in [0, 1] (the sharp one in [-1, 1])
    "posterior": "sample",  # vae_encode(..., sample=True)
    "timestep_spacing": "linspace",  # SpacedSampler: 999, 979, 958, ..., 20, 0 for 50 steps
    "attention_window": 64,  # SpatialTransformer(kernel_size=(64, 64)): windowed attention (deblurdiff.windows)
    "lkpn": {"zero_init": "residual-branches"},  # LDM zero_module on ResBlock conv2 and proj_out
}


def default_lkpn_config(preset: str, cross_attention_dim: int) -> dict:
    """LKPN architecture kwargs for a preset: the paper's size for sd presets, a miniature for tiny."""
    check_preset(preset)
    if preset == "tiny":
        return {
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": 16,
            "norm_num_groups": 8,
        }
    return {
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    }


def build_model(
    preset: str,
    pretrained: str | os.PathLike | None = None,
    variant: str = "lkpn",
    seed: int = 0,
    **overrides,
) -> DeblurDiff:
    """A fresh DeblurDiff: frozen parts from the preset, new ControlNet (from the UNet) and LKPN.

    ``overrides`` set other :class:`DeblurDiffConfig` fields (``kernel_size``, loss weights);
    ``lkpn={...}`` is merged into the preset's LKPN architecture.
    """
    allowed = {f.name for f in dataclasses.fields(DeblurDiffConfig)} - {"preset", "variant", "pretrained", "seed"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"build_model: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    frozen = load_frozen_parts(preset, pretrained, seed)
    lkpn = default_lkpn_config(preset, frozen.unet.config.cross_attention_dim)
    lkpn.update(overrides.pop("lkpn", {}))
    config = DeblurDiffConfig(
        preset=preset,
        variant=variant,
        pretrained=None if pretrained is None else str(Path(pretrained).expanduser().resolve()),
        seed=seed,
        lkpn=lkpn,
        **overrides,
    )
    return DeblurDiff(
        config,
        vae=frozen.vae,
        unet=frozen.unet,
        empty_text_emb=frozen.empty_text_emb,
        scheduler=frozen.scheduler,
    )
