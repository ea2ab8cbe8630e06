"""Deblurring with an MSGD model: any size, tiles, samplers, sample averaging, intermediates.

:class:`MSGDDeblurrer` has the call protocol of :class:`deblurdiff.infer.Deblurrer`
(``(images, keys, intermediates) -> images``); ``deblurdiff infer`` and ``evaluate`` pick it when
the checkpoint is an MSGD one. For a batch of same-size ``H×W×3`` float32 sRGB images in [0, 1]:

1. reflect-pad to the model's size multiple (:func:`deblurdiff.tiling.pad_to_multiple`), crop
   back at the end: any size works;
2. ``y = 2·image − 1``; for every sample ``i`` of ``samples``, ``x_T ~ N(0, I)`` from the
   generator ``seed_for(seed, key)`` (``i = 0``) or ``seed_for(seed, f"{key}#sample{i}")``, then the
   sampler of :mod:`deblurdiff.sampling` (``ddpm`` | ``ddim`` | ``dpmsolver``, built from the
   model's own scheduler config) down to x0; above ``tile_size`` pixels the prediction is
   blended from Gaussian-weighted tiles at every step (:class:`deblurdiff.tiling.TiledDenoiser`);
3. each sample -> image (``model.to_image``); the images are averaged ("SA", sample averaging:
   the paper's trade of perceptual quality for PSNR); colour fix (default none).

Intermediates (``--save-intermediates``), per image: ``guidance-sS.png`` — the guidance
network's regressed sharp structure ŷ_s at every scale s (grayscale or RGB), upsampled by
nearest neighbour to the image size — and ``step-XXX_x0.png``, the x0 estimate of every step of
the first sample, as an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def check_tiling(model, tile_size: int | None, tile_overlap: int) -> None:
    """--tile-size / --tile-overlap (pixels) must be multiples of the model's size multiple."""
    if tile_size is None:
        return
    m = model.size_multiple
    if tile_size % m or tile_overlap % m or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"--tile-size {tile_size} / --tile-overlap {tile_overlap}: both must be multiples of "
                         f"{m} for this MSGD model, with 0 <= overlap < tile size (e.g. 512 / 128)")


def sample_images(model, blurry: torch.Tensor, steps: int, generators, sampler: str | None = None,
                  samples: int = 1, tile: int | None = None, overlap: int = 0, callback=None,
                  progress: bool = False, timestep_spacing: str | None = None) -> torch.Tensor:
    """(B, 3, H, W) blurry in [0, 1], H and W multiples of ``model.size_multiple`` -> (B, 3, H, W)
    deblurred in [0, 1], float32, the mean of ``samples`` samples.

    ``generators``: one ``torch.Generator`` (shared by the batch, drawn from in sample order) or
    a list of lists, ``generators[i][b]`` for sample i of image b. ``tile``/``overlap`` in pixels
    (None: one pass). ``callback`` is passed to the sampler of the first sample.
    ``timestep_spacing``: None = the model's scheduler config (``MSGDConfig.timestep_spacing``).
    """
    from deblurdiff.sampling import SAMPLERS
    from deblurdiff.tiling import TiledDenoiser

    name = sampler or model.config.sampler
    if name not in SAMPLERS:
        raise ValueError(f"--sampler {name!r} unknown — choose one of {', '.join(SAMPLERS)}")
    model.check_size(blurry)
    y = (blurry * 2 - 1).to(model.dtype)
    big = tile is not None and max(y.shape[-2:]) > tile
    denoiser = TiledDenoiser(model, tile, overlap) if big else model
    spacing = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    total = None
    for i in range(samples):
        gens = generators if isinstance(generators, torch.Generator) else generators[i]
        x0 = SAMPLERS[name](denoiser, y, steps, gens, callback=callback if i == 0 else None, progress=progress,
                            **spacing)
        image = model.to_image(x0, y)
        total = image if total is None else total + image
    return total / samples


class MSGDDeblurrer:
    """``MSGDDeblurrer(model, settings)(images, keys) -> images`` (see the module docstring);
    ``model`` is already on its device and dtype, ``settings`` an :class:`deblurdiff.infer.InferSettings`."""

    def __init__(self, model, settings, progress: bool = False):
        from deblurdiff.infer import COLOR_FIXES
        from deblurdiff.sampling import SAMPLERS

        if settings.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {settings.sampler!r} unknown — choose one of {', '.join(SAMPLERS)}")
        if settings.color_fix not in COLOR_FIXES:
            raise ValueError(f"--color-fix {settings.color_fix!r} unknown — choose one of {', '.join(COLOR_FIXES)}")
        if settings.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {settings.samples}")
        check_tiling(model, settings.tile_size, settings.tile_overlap)
        self.model, self.settings, self.progress = model, settings, progress

    @property
    def device(self):
        return self.model.unet.conv_in.weight.device

    def generators(self, keys: Sequence[str]) -> list[list[torch.Generator]]:
        """generators[i][b]: sample i of image b, from (seed, key) — never from order or batch."""
        from blurforge.seeding import seed_for

        seed = self.settings.seed
        return [[torch.Generator().manual_seed(seed_for(seed, k if i == 0 else f"{k}#sample{i}")) for k in keys]
                for i in range(self.settings.samples)]

    def __call__(self, images: list[np.ndarray], keys: list[str], intermediates: list[Path] | None = None
                 ) -> list[np.ndarray]:
        from deblurdiff.infer import _to_numpy, color_fix, images_to_batch
        from deblurdiff.tiling import pad_to_multiple

        s, model = self.settings, self.model
        x = images_to_batch(images, self.device)
        xp, (h, w) = pad_to_multiple(x, model.size_multiple)
        callback = None
        with torch.no_grad():
            if intermediates is not None:
                y = (xp * 2 - 1).to(model.dtype)
                self._write_guidance(model.guidance_outputs(y), intermediates, h, w)

                def callback(info):
                    _write_all(intermediates, f"step-{info['i']:03d}_x0.png", model.to_image(info["x0"], y)[..., :h, :w])

            out = sample_images(model, xp, s.n_steps(), self.generators(keys), s.sampler, s.samples,
                                s.tile_size, s.tile_overlap, callback, self.progress,
                                getattr(s, "timestep_spacing", None))
            out = color_fix(s.color_fix, out[..., :h, :w], x)
        return _to_numpy(out)

    def _write_guidance(self, guidance: dict, dirs: list[Path], h: int, w: int) -> None:
        for s, (_, regressed) in guidance.items():
            up = F.interpolate(regressed.float(), scale_factor=float(s), mode="nearest")[..., :h, :w]
            _write_all(dirs, f"guidance-s{s}.png", ((up + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1))


def _write_all(dirs: list[Path], name: str, batch: torch.Tensor) -> None:
    """Write each (3, H, W) image of ``batch`` in [0, 1] as ``dirs[b] / name``."""
    from blurforge.imageio import encode_image, write_bytes_atomic

    for img, d in zip(batch.permute(0, 2, 3, 1).float().cpu().numpy(), dirs):
        write_bytes_atomic(d / name, encode_image(img))
