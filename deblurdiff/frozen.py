"""The frozen parts of DeblurDiff — VAE, UNet, empty-prompt embedding, noise scheduler — for each
preset: built in-process (``tiny``) or read from a local diffusers folder (``sd21-base``, ``sd15``).

- ``sd21-base``: a local diffusers copy of stabilityai/stable-diffusion-2-1-base (the paper's base).
- ``sd15``: a local diffusers copy of Stable Diffusion 1.5.
- ``tiny``: seeded random miniature parts built in-process (CPU tests, smoke runs): a VAE that
  downsamples ×8 like SD's (4 levels, 16/32/64/64 channels, SD's mid-block attention at 1/8),
  a 2-level UNet with 32/64 channels that attends only on its deepest level (1/16 of the image
  side), and a seeded random "empty-prompt" embedding (1, 77, 32) instead of a text encoder.
  Per-step CPU cost grows about linearly with pixel count
  (``scripts/bench_infer.py --preset tiny --device cpu --sizes 300x200,600x400``).

Nothing is ever downloaded: the sd presets read only the folder given as ``pretrained``
(``local_files_only=True``); the text encoder is loaded once to embed the empty prompt and
dropped. Dependencies: :mod:`deblurdiff.presets` -> :mod:`deblurdiff.model` -> this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from deblurdiff.choices import DEBLURDIFF_PRESETS as PRESETS

SD_SOURCES = {
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
# (subfolder, file that must exist in it)
SD_LAYOUT = (
    ("vae", "config.json"),
    ("unet", "config.json"),
    ("text_encoder", "config.json"),
    ("tokenizer", "tokenizer_config.json"),
    ("scheduler", "scheduler_config.json"),
)


@dataclass
class FrozenParts:
    """The parts of DeblurDiff that are never trained."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    empty_text_emb: torch.Tensor  # (1, L, cross_attention_dim)
    scheduler: DDPMScheduler


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} unknown — choose one of {', '.join(PRESETS)}")


def load_frozen_parts(preset: str, pretrained: str | os.PathLike | None = None, seed: int = 0) -> FrozenParts:
    """Build (tiny, from ``seed``) or load (sd presets, from the local folder ``pretrained``) the frozen parts."""
    check_preset(preset)
    if preset == "tiny":
        return _tiny_frozen_parts(seed)
    return _sd_frozen_parts(preset, pretrained)


def tiny_scheduler() -> DDPMScheduler:
    """SD's training schedule (1000 steps, scaled-linear betas 0.00085..0.012, epsilon)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


def _tiny_frozen_parts(seed: int) -> FrozenParts:
    """Seeded random miniature SD: identical weights for the same seed; the global RNG is untouched.

    The VAE downsamples ×8 as SD's does, so latents are as small as SD's (a 600×400 image is a
    75×50 latent); the UNet's cross-attention sits on its deepest level only, where a latent
    token stands for 16×16 pixels, so attention stays a small share of the cost at photo sizes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=(2, 4),  # head counts (diffusers' naming); 16 channels per head
            use_linear_projection=True,
        )
        empty_text_emb = torch.randn(1, 77, 32)
    return FrozenParts(vae=vae.eval(), unet=unet.eval(), empty_text_emb=empty_text_emb, scheduler=tiny_scheduler())


def _sd_frozen_parts(preset: str, pretrained: str | os.PathLike | None) -> FrozenParts:
    from transformers import CLIPTextModel, CLIPTokenizer

    hint = f"point --pretrained at a local diffusers copy of {SD_SOURCES[preset]}"
    if pretrained is None:
        raise ValueError(f"preset {preset!r} needs a pretrained folder — {hint}")
    root = Path(pretrained).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory — {hint}")
    for sub, name in SD_LAYOUT:
        if not (root / sub / name).is_file():
            raise FileNotFoundError(f"{root / sub / name} missing — {hint}")

    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True).eval()
    ids = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        empty_text_emb = text_encoder(ids)[0].float()
    del text_encoder, tokenizer
    if empty_text_emb.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(
            f"{root}: text embedding width {empty_text_emb.shape[-1]} != unet cross_attention_dim "
            f"{unet.config.cross_attention_dim} — text_encoder and unet come from different models?"
        )
    return FrozenParts(vae=vae.eval(), unet=unet.eval(), empty_text_emb=empty_text_emb, scheduler=scheduler)
