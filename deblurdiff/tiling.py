"""Any size, any aspect: padding to what the networks need, and Gaussian-blended tiles.

- **Padding.** Images are reflect-padded (bottom / right) to a multiple of
  ``vae_factor × 2**(levels - 1)`` pixels, ``levels`` the deepest down-sampling stack among the
  UNet / ControlNet and the LKPN (SD 2.1: 8 × 8 = 64 px; tiny preset: 2 × 2 = 4 px), and the
  output is cropped back. Reflection, not zeros, so the border looks like image content.
- **Tiles.** Above the tile size the work is split into overlapping tiles on one grid in latent
  units (tile ``T/f``, overlap ``O/f``; the last tile in a row is shifted to end at the border,
  so every tile has the full size). Each tile's result is weighted by a separable Gaussian
  (sigma = ``SIGMA_FRACTION`` × the tile side, peak in the tile centre, ~0.4 % of the peak at the
  tile edge), and the weighted sum is divided by the summed weights: a pixel's value moves
  smoothly from one tile to the next across the overlap, with no hard edge anywhere.
- **Denoising** (:class:`TiledDenoiser`, MultiDiffusion-style): at *every* step the noise
  prediction is made per latent tile and blended; the scheduler then takes one step on the
  whole latent, so the tiles agree on a single trajectory.
- **VAE** (:func:`tiled_encode`, :func:`tiled_decode`): the same grid in pixels (encode) or
  latents (decode), blended the same way. The VAE's GroupNorm takes its statistics per tile,
  so a tiled encode/decode is close to, not equal to, the untiled one (tests bound the gap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIGMA_FRACTION = 0.15  # Gaussian sigma of the blending weight, as a fraction of the tile side


def down_levels(unet_like) -> int:
    """Number of 2× down-samplings of a diffusers UNet / ControlNet (len(block_out_channels) - 1)."""
    return len(unet_like.config.block_out_channels) - 1


def size_multiple(model) -> int:
    """Pixel multiple that the model's H and W must have: VAE factor × deepest latent down-sampling."""
    levels = [down_levels(model.unet), down_levels(model.controlnet)]
    if getattr(model, "lkpn", None) is not None:
        levels.append(len(model.lkpn.config.block_out_channels) - 1)
    return model.vae_scale_factor * 2 ** max(levels)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) at the bottom and right to multiples of ``multiple``.

    Returns ``(padded, (H, W))``; crop back with ``out[..., :H, :W]`` (scaled by any factor).
    Reflection needs the pad to be smaller than the side; tiny images are reflected repeatedly.
    """
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    out = images
    while ph or pw:  # reflect pads at most side-1 at a time
        step_h, step_w = min(ph, out.shape[-2] - 1), min(pw, out.shape[-1] - 1)
        if (ph and step_h <= 0) or (pw and step_w <= 0):  # a 1-pixel side cannot reflect
            out = F.pad(out, (0, pw, 0, ph), mode="replicate")
            break
        out = F.pad(out, (0, step_w, 0, step_h), mode="reflect")
        ph, pw = ph - step_h, pw - step_w
    return out, (h, w)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` overlap."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Tile:
    """A tile on the latent grid: rows ``y:y+h``, columns ``x:x+w``."""

    y: int
    x: int
    h: int
    w: int

    def scaled(self, f: int) -> "Tile":
        return Tile(self.y * f, self.x * f, self.h * f, self.w * f)

    def region(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles (latent units) covering an h × w latent; one tile when it fits."""
    if tile <= overlap or overlap < 0:
        raise ValueError(f"tile size {tile} must be larger than the overlap {overlap} (and overlap >= 0)")
    th, tw = min(tile, h), min(tile, w)
    return [Tile(y, x, th, tw) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def gaussian_weight(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, h, w) separable Gaussian centred in the tile, sigma = SIGMA_FRACTION × side, peak 1."""

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, device=device, dtype=torch.float32) + 0.5 - n / 2
        return torch.exp(-0.5 * (x / (SIGMA_FRACTION * n)) ** 2)

    return (axis(h)[:, None] * axis(w)[None, :]).to(dtype)[None, None]


class Blender:
    """Accumulates weighted tile results into a (B, C, H, W) canvas; ``result()`` normalises."""

    def __init__(self, shape: tuple[int, ...], device, dtype=torch.float32):
        b, c, h, w = shape
        self.canvas = torch.zeros(shape, device=device, dtype=dtype)
        self.weight = torch.zeros((1, 1, h, w), device=device, dtype=dtype)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, tile: Tile, value: torch.Tensor) -> None:
        key = (tile.h, tile.w)
        if key not in self._cache:
            self._cache[key] = gaussian_weight(tile.h, tile.w, self.canvas.device, self.canvas.dtype)
        wgt = self._cache[key]
        ys, xs = tile.region()
        self.canvas[:, :, ys, xs] += value.to(self.canvas.dtype) * wgt
        self.weight[:, :, ys, xs] += wgt

    def result(self) -> torch.Tensor:
        return self.canvas / self.weight


class TiledDenoiser:
    """``predict_eps`` over Gaussian-blended latent tiles (MultiDiffusion-style), same interface
    as :class:`deblurdiff.model.DeblurDiff` for the samplers. ``tile`` and ``overlap`` in latent
    pixels; ``tile`` must be a multiple of the UNet's latent down-sampling."""

    def __init__(self, model, tile: int, overlap: int):
        self.model = model
        self.tile = tile
        self.overlap = overlap
        self.scheduler = model.scheduler

    def predict_eps(self, z_t: torch.Tensor, t, z_lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z_t.shape
        tiles = tile_grid(h, w, self.tile, self.overlap)
        if len(tiles) == 1:
            return self.model.predict_eps(z_t, t, z_lq)
        pred_acc = Blender((b, c, h, w), z_t.device)
        zs_acc = Blender((b, c, h, w), z_t.device)
        for tile in tiles:
            ys, xs = tile.region()
            pred, z_s = self.model.predict_eps(z_t[:, :, ys, xs], t, z_lq[:, :, ys, xs])
            pred_acc.add(tile, pred)
            zs_acc.add(tile, z_s)
        return pred_acc.result().to(z_t.dtype), zs_acc.result().to(z_t.dtype)


@torch.no_grad()
def tiled_encode(model, images: torch.Tensor, tile: int | None, overlap: int, **encode_kwargs) -> torch.Tensor:
    """``model.encode(..., **encode_kwargs)`` over Gaussian-blended pixel tiles. ``tile`` /
    ``overlap`` in pixels (multiples of the VAE factor); ``None`` or an image that fits = one pass."""
    f = model.vae_scale_factor
    h, w = images.shape[-2] // f, images.shape[-1] // f
    if tile is None or (images.shape[-2] <= tile and images.shape[-1] <= tile):
        return model.encode(images, **encode_kwargs)
    acc = None
    for lt in tile_grid(h, w, tile // f, overlap // f):
        ys, xs = lt.scaled(f).region()
        z = model.encode(images[:, :, ys, xs], **encode_kwargs)
        if acc is None:
            acc = Blender((images.shape[0], z.shape[1], h, w), images.device)
        acc.add(lt, z)
    return acc.result().to(images.dtype)


@torch.no_grad()
def tiled_decode(model, latents: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
    """``model.decode`` over Gaussian-blended latent tiles -> (B, 3, H, W) in [0, 1]. ``tile`` /
    ``overlap`` in pixels; ``None`` or a latent that fits = one pass."""
    f = model.vae_scale_factor
    b, _, h, w = latents.shape
    if tile is None or (h * f <= tile and w * f <= tile):
        return model.decode(latents)
    acc = Blender((b, 3, h * f, w * f), latents.device)
    for lt in tile_grid(h, w, tile // f, overlap // f):
        ys, xs = lt.region()
        acc.add(lt.scaled(f), model.decode(latents[:, :, ys, xs]))
    return acc.result().clamp(0, 1)


def check_tiling(model, tile_size: int | None, tile_overlap: int) -> None:
    """Validate --tile-size / --tile-overlap (pixels) against the model's size multiple."""
    if tile_size is None:
        return
    m = size_multiple(model)
    if tile_size % m:
        raise ValueError(f"--tile-size {tile_size} must be a multiple of {m} for this model "
                         f"(e.g. {max(m, tile_size // m * m)})")
    f = model.vae_scale_factor
    if tile_overlap % f or not 0 <= tile_overlap < tile_size:
        raise ValueError(f"--tile-overlap {tile_overlap} must be a multiple of {f} in [0, tile size)")


def n_tiles(h: int, w: int, tile: int | None, overlap: int) -> int:
    """Number of tiles for an h × w (pixels) image; 1 when untiled."""
    if tile is None:
        return 1
    return len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))

