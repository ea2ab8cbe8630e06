"""Multiscale structure guided diffusion (MSGD) for deblurring (Ren et al., ICCV 2023).

The second model family beside DeblurDiff: a pixel-space image-conditioned diffusion model
(icDPM) trained from scratch, with no pretrained parts, so its quality can be measured on any
machine. Images are (B, 3, H, W) in [0, 1]; the network works on ``2·v − 1`` ("model space")::

    y  = 2·blurry − 1,  x = 2·sharp − 1
    x0 = x                          (target "image": the paper)
       = (x − y) · residual_scale   (target "residual": a residual over the blurry input)
    x_t = sqrt(ā_t)·x0 + sqrt(1 − ā_t)·ε                      (diffusers' DDPMScheduler.add_noise)

    guidance, for every scale s in ``scales`` (the paper's best: 2, 4, 8, grayscale):
        g_s = avgpool_s(gray(y)) + σ_g·N(0, 1)                 (the noise only while training)
        f_s = G_s(g_s)          guidance network: conv + ResBlocks, no down/upsampling inside
        ŷ_s = head_s(f_s)       a single conv -> the target avgpool_s(gray(x))
    pred = UNet(cat(x_t, y), t, {s: f_s})   f_s enters every encoder ResBlock at resolution 1/s
                                            through a 1×1 conv that matches the channel count
                                            and is *added* after the time embedding

    loss = regression_weight · mean_s mse(ŷ_s, avgpool_s(gray(x)))
         + w_den(step) · mse(pred, target of prediction_type)
    w_den(step) = min(1, step / denoise_ramp_steps)    (warm start on the regression loss alone;
                  the paper ramps over 60k iterations; w_den = 1 when there is no regression loss)

The paper's ablations (its Table 9) are config switches: ``guidance="none"`` (plain icDPM, no
guidance network), ``guidance="input"`` (the guidance outputs ŷ_s, upsampled, concatenated to the
UNet input instead of features in the encoder), one scale (``scales=(4,)``), ``target_color=
"rgb"`` (RGB guidance input and target), and ``regression_weight=0`` (no regression loss).

Choices the paper's text leaves open, made here: each scale has its own guidance network; the
guidance noise σ_g = ``guidance_noise``; the UNet is a plain fully convolutional one (GroupNorm,
SiLU, one skip per level, strided-conv down, nearest+conv up, zero-initialised output conv).

The model implements the sampler protocol of :mod:`deblurdiff.sampling`
(``predict_eps(x_t, t, y) -> (prediction, y)`` and ``scheduler``), so the samplers and the tiled
denoiser of :mod:`deblurdiff.tiling` run it unchanged; sampling, sample averaging and
intermediates are in :mod:`deblurdiff.msgd_infer`. ``save_pretrained`` writes ``msgd.json``
(config + versions) and ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from blurforge.storage import replacing_folder

CONFIG_NAME = "msgd.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
GUIDANCE_MODES = ("multiscale", "input", "none")
TARGETS = ("image", "residual")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


@dataclass
class MSGDConfig:
    """Everything needed to rebuild an MSGD model; saved in every checkpoint."""

    preset: str = "msgd-tiny"
    seed: int = 0  # seeds the initial weights
    # icDPM UNet
    channels: tuple = (8, 16, 16, 16)  # widths of the UNet levels; level i works at 1/2**i
    layers_per_block: int = 1  # ResBlocks per level (encoder and decoder)
    norm_groups: int = 4  # GroupNorm groups (at most; reduced to divide the width)
    # structure guidance
    guidance: str = "multiscale"  # multiscale | input | none
    scales: tuple = (2, 4, 8)  # downsampling factors (powers of 2, at most 2**(levels-1))
    target_color: str = "gray"  # gray | rgb: guidance input and regression target
    guidance_channels: int = 8  # width of every guidance network
    guidance_blocks: int = 1  # ResBlocks per guidance network
    guidance_noise: float = 0.02  # std of the noise on the guidance input while training
    # diffusion
    target: str = "image"  # image | residual (module docstring)
    residual_scale: float = 1.0  # x0 = (x - y) * residual_scale for target "residual"
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample
    beta_schedule: str = "linear"  # diffusers beta schedule: linear | scaled_linear | squaredcos_cap_v2
    timestep_spacing: str = "trailing"  # how samplers pick their timesteps (diffusers)
    num_train_timesteps: int = 1000
    last_step_share: float = 0.0  # share of training samples at the last timestep (pure noise); 0 = uniform t
    # losses
    regression_weight: float = 1.0  # 0 = ablation "no regression loss"
    denoise_ramp_steps: int = 0  # denoising weight ramps 0 -> 1 over these steps (paper: 60000)
    # inference defaults (deblurdiff infer overrides them with --sampler/--steps/--samples)
    sampler: str = "ddim"
    sampling_steps: int = 10

    def __post_init__(self):
        self.channels, self.scales = tuple(self.channels), tuple(sorted(set(self.scales)))
        checks = [
            (self.guidance in GUIDANCE_MODES, f"guidance {self.guidance!r}: choose {', '.join(GUIDANCE_MODES)}"),
            (self.target in TARGETS, f"target {self.target!r}: choose {', '.join(TARGETS)}"),
            (self.prediction_type in PREDICTIONS,
             f"prediction_type {self.prediction_type!r}: choose {', '.join(PREDICTIONS)}"),
            (self.target_color in ("gray", "rgb"), f"target_color {self.target_color!r}: choose gray or rgb"),
            (len(self.channels) >= 1, "channels: at least one level"),
            (self.guidance == "none" or self.scales, "scales: at least one scale when guidance is on"),
            (self.regression_weight >= 0 and self.denoise_ramp_steps >= 0,
             "regression_weight and denoise_ramp_steps must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MSGD config: {message}")
        deepest = 2 ** (len(self.channels) - 1)
        for s in self.scales if self.guidance != "none" else ():
            if s < 2 or s & (s - 1) or s > deepest:
                raise ValueError(f"MSGD config: scale {s} must be a power of 2 in [2, {deepest}] "
                                 f"(the UNet has {len(self.channels)} levels)")

    @property
    def guided(self) -> bool:
        return self.guidance != "none"

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (the deepest UNet level, and every guidance scale)."""
        return max([2 ** (len(self.channels) - 1), *(self.scales if self.guided else ())])


# The CPU preset's diffusion settings were chosen with scripts/train_curve.py (README, "MSGD").
PRESETS: dict[str, dict] = {
    # tests: ~70k parameters
    "msgd-tiny": dict(channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4, guidance_channels=8,
                      guidance_blocks=1, sampling_steps=4),
    # the demo: minutes of CPU training on small crops. Diffuses the sharp image's residual over y,
    # predicts x0, and draws half of the training timesteps at t = T-1, where x0's prediction is a
    # regression on y: the one-step end of the sampler (the posterior mean, best PSNR) trains fastest
    "msgd-cpu": dict(channels=(16, 32, 64, 64), layers_per_block=1, norm_groups=8, guidance_channels=16,
                     guidance_blocks=2, target="residual", residual_scale=2.0, prediction_type="sample",
                     beta_schedule="squaredcos_cap_v2", last_step_share=0.5, denoise_ramp_steps=0,
                     sampling_steps=1),
    # a GPU-sized model with the paper's training recipe (eps prediction of the image, 60k-step
    # ramp); the widths are this project's choice, not the paper's (which its text does not give)
    "msgd-base": dict(channels=(64, 128, 256, 512), layers_per_block=2, norm_groups=32, guidance_channels=64,
                      guidance_blocks=4, denoise_ramp_steps=60_000, sampler="ddpm", sampling_steps=100),
}


def is_msgd_preset(name: str | None) -> bool:
    return name in PRESETS


def is_msgd_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds an MSGD model (``msgd.json``) rather than a DeblurDiff one."""
    return (Path(directory) / CONFIG_NAME).is_file()


def build_msgd(preset: str = "msgd-tiny", seed: int = 0, **overrides) -> "MSGD":
    """A fresh MSGD model from a preset; ``overrides`` set other :class:`MSGDConfig` fields."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} unknown — MSGD presets: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(MSGDConfig)} - {"preset", "seed"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"build_msgd: unknown option(s) {unknown}; allowed: {sorted(fields)}")
    return MSGD(MSGDConfig(preset=preset, seed=seed, **{**PRESETS[preset], **overrides}))


# ------------------------------------------------------------------------------------- network


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def downsample(images: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/s, W/s): the mean of every s×s block (H, W multiples of s)."""
    return images if s == 1 else F.avg_pool2d(images, s)


def to_target_color(images: torch.Tensor, color: str) -> torch.Tensor:
    """(B, 3, H, W) -> BT.601 luma (B, 1, H, W) for ``gray``, unchanged for ``rgb``."""
    if color == "rgb":
        return images
    w = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device)
    return torch.einsum("bchw,c->bhw", images, w)[:, None]


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv3×3, + time embedding, [+ 1×1 conv(guidance)], GroupNorm–SiLU–conv3×3,
    plus the input (1×1 conv when the width changes). With ``guide_channels`` it is the paper's
    guided residual block: the guidance features are added inside the block."""

    def __init__(self, c_in: int, c_out: int, groups: int, temb_dim: int = 0, guide_channels: int = 0):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, c_out) if temb_dim else None
        self.guide = nn.Conv2d(guide_channels, c_out, 1) if guide_channels else None
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb=None, guide=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        if self.guide is not None:
            if guide is None:
                raise ValueError("guided ResBlock called without guidance features")
            h = h + self.guide(guide)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class GuidanceNet(nn.Module):
    """One scale of the guidance module: (B, c, h, w) downsampled blurry input -> (features
    (B, C, h, w), regressed sharp target (B, c, h, w)); no resampling inside."""

    def __init__(self, c_io: int, channels: int, blocks: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(c_io, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels, channels, groups) for _ in range(blocks))
        self.head = nn.Conv2d(channels, c_io, 3, padding=1)  # the single regression conv

    def forward(self, g):
        f = self.conv_in(g)
        for block in self.blocks:
            f = block(f)
        return f, self.head(f)


class GuidedUNet(nn.Module):
    """A fully convolutional UNet ``(x, t, guides) -> (B, out, H, W)``; ``guides[level]`` is added
    in every encoder ResBlock of that level (level i works at 1/2**i)."""

    def __init__(self, c_in: int, c_out: int, channels: tuple, layers: int, groups: int,
                 guide_channels: dict[int, int]):
        super().__init__()
        self.channels, self.gradient_checkpointing = tuple(channels), False
        c0, temb = channels[0], 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(c0, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(c_in, c0, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = c0
        for level, c in enumerate(channels):
            g = guide_channels.get(level, 0)
            self.down.append(nn.ModuleList(ResBlock(prev if i == 0 else c, c, groups, temb, g) for i in range(layers)))
            prev = c
            if level < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList(ResBlock(prev, prev, groups, temb) for _ in range(2))
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            c = channels[level]
            self.up.append(nn.ModuleList(ResBlock(prev + c if i == 0 else c, c, groups, temb) for i in range(layers)))
            prev = c
            if level > 0:
                self.upsample.append(nn.Conv2d(c, channels[level - 1], 3, padding=1))
                prev = channels[level - 1]
        self.norm_out, self.conv_out = _norm(c0, groups), nn.Conv2d(c0, c_out, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # at initialisation the prediction is exactly 0
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, block, h, temb, guide=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, temb, guide, use_reentrant=False)
        return block(h, temb, guide)

    def time_embedding(self, t: torch.Tensor, dtype) -> torch.Tensor:
        emb = get_timestep_embedding(t, self.channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.time_mlp(emb.to(dtype))

    def encoder_features(self, x, t, guides: dict[int, torch.Tensor] | None = None):
        """The encoder's output at every level (the skips), plus the time embedding."""
        temb = self.time_embedding(t, x.dtype)
        h, skips = self.conv_in(x), []
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = self._block(block, h, temb, (guides or {}).get(level))
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        return skips, temb

    def forward(self, x, t, guides: dict[int, torch.Tensor] | None = None):
        skips, temb = self.encoder_features(x, t, guides)
        h = skips[-1]
        for block in self.mid:
            h = self._block(block, h, temb)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips[-1 - i]], dim=1)
            for block in blocks:
                h = self._block(block, h, temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------- model


class MSGD(nn.Module):
    """The icDPM with multiscale structure guidance; see the module docstring."""

    family = "msgd"

    def __init__(self, config: MSGDConfig):
        super().__init__()
        self.config = c = config
        c_io = 1 if c.target_color == "gray" else 3
        scales = c.scales if c.guided else ()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.guidance = nn.ModuleDict(
                {str(s): GuidanceNet(c_io, c.guidance_channels, c.guidance_blocks, c.norm_groups) for s in scales})
            in_guides = {s.bit_length() - 1: c.guidance_channels for s in scales} if c.guidance == "multiscale" else {}
            c_in = 6 + (c_io * len(scales) if c.guidance == "input" else 0)
            self.unet = GuidedUNet(c_in, 3, c.channels, c.layers_per_block, c.norm_groups, in_guides)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
            prediction_type=c.prediction_type, clip_sample=c.target == "image", timestep_spacing=c.timestep_spacing,
        )

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    # -- spaces ---------------------------------------------------------------------------------

    def check_size(self, images: torch.Tensor) -> None:
        m = self.size_multiple
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % m or images.shape[3] % m:
            raise ValueError(f"MSGD: expected (B, 3, H, W) images with H, W multiples of {m}, "
                             f"got {tuple(images.shape)} — pad them (deblurdiff.tiling.pad_to_multiple)")

    def diffusion_target(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 of the diffusion from model-space blurry ``y`` and sharp ``x``."""
        c = self.config
        return x if c.target == "image" else (x - y) * c.residual_scale

    def to_image(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A sampled x0 (and model-space ``y``) -> (B, 3, H, W) image in [0, 1]."""
        c = self.config
        x = x0 if c.target == "image" else y + x0 / c.residual_scale
        return ((x.float() + 1) / 2).clamp(0, 1)

    # -- guidance and prediction -----------------------------------------------------------------

    def guidance_outputs(self, y: torch.Tensor, noisy: bool = False, generator: torch.Generator | None = None
                         ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """{s: (features f_s, regressed ŷ_s)} for model-space ``y``. With ``noisy`` (training) the
        guidance input gets noise of std σ_g, drawn with ``generator`` (None: torch's default)."""
        out = {}
        for s in self.config.scales if self.config.guided else ():
            g = downsample(to_target_color(y, self.config.target_color), s)
            if noisy and self.config.guidance_noise > 0:
                dev = generator.device if generator is not None else g.device
                noise = torch.randn(g.shape, generator=generator, device=dev, dtype=g.dtype).to(g.device)
                g = g + self.config.guidance_noise * noise
            out[s] = self.guidance[str(s)](g)
        return out

    def _predict(self, x_t, t, y, guidance):
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        inputs, guides = [x_t, y], None
        if self.config.guidance == "multiscale":
            guides = {s.bit_length() - 1: f for s, (f, _) in guidance.items()}
        elif self.config.guidance == "input":
            inputs += [F.interpolate(r, scale_factor=float(s), mode="nearest") for s, (_, r) in guidance.items()]
        return self.unet(torch.cat([v.to(self.dtype) for v in inputs], dim=1), t, guides)  # any input dtype

    def predict_eps(self, x_t: torch.Tensor, t, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler protocol (:mod:`deblurdiff.sampling`): one prediction of what the scheduler's
        ``prediction_type`` says, for noisy ``x_t`` at ``t`` given model-space ``y`` -> (pred, y)."""
        return self._predict(x_t, t, y, self.guidance_outputs(y)), y

    # -- training ----------------------------------------------------------------------------------

    def denoise_weight(self, step: int | None) -> float:
        """Weight of the denoising loss at optimizer step ``step`` (None: fully on)."""
        c = self.config
        if step is None or not c.denoise_ramp_steps or not (c.guided and c.regression_weight > 0):
            return 1.0
        return min(1.0, step / c.denoise_ramp_steps)

    def loss_names(self) -> list[str]:
        names = ["loss", "loss_denoise"]
        if self.config.guided:
            names += ["loss_regression"] + [f"loss_regression_s{s}" for s in self.config.scales]
        return names

    def training_losses(self, blurry: torch.Tensor, sharp: torch.Tensor, generator: torch.Generator | None = None,
                        step: int | None = None) -> dict[str, torch.Tensor]:
        """Losses on (B, 3, H, W) pairs in [0, 1] -> dict of scalar tensors (:meth:`loss_names`).
        t, the diffusion noise and the guidance-input noise are drawn with ``generator``."""
        self.check_size(blurry)
        c = self.config
        y, x = blurry * 2 - 1, sharp * 2 - 1
        x0 = self.diffusion_target(y, x)
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, c.num_train_timesteps, (x0.shape[0],), generator=generator, device=gen_device)
        if c.last_step_share > 0:  # at t = T-1, x_t is pure noise: the x0 prediction there is a regression on y
            last = torch.rand(t.shape, generator=generator, device=gen_device) < c.last_step_share
            t = torch.where(last, torch.full_like(t, c.num_train_timesteps - 1), t)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
        t = t.to(x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        guidance = self.guidance_outputs(y, noisy=True, generator=generator)
        pred = self._predict(x_t, t, y, guidance)
        target = {"epsilon": noise, "sample": x0}.get(c.prediction_type)
        if target is None:
            target = self.scheduler.get_velocity(x0, noise, t)
        losses = {"loss_denoise": F.mse_loss(pred.float(), target.float())}
        total = self.denoise_weight(step) * losses["loss_denoise"]
        if c.guided:
            sharp_c = to_target_color(x, c.target_color)
            per_scale = [F.mse_loss(r.float(), downsample(sharp_c, s).float()) for s, (_, r) in guidance.items()]
            for s, value in zip(guidance, per_scale):
                losses[f"loss_regression_s{s}"] = value
            losses["loss_regression"] = torch.stack(per_scale).mean()
            total = total + c.regression_weight * losses["loss_regression"]
        losses["loss"] = total
        return losses

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.unet.gradient_checkpointing = bool(enabled)

    # -- save / load ------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``msgd.json`` and ``model.safetensors`` to ``save_directory`` atomically (a
        temporary sibling folder replaces the target)."""
        from safetensors.torch import save_file

        target = Path(save_directory).resolve()
        with replacing_folder(target) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, tmp / WEIGHTS_NAME)
            record = {"format": "msgd", "format_version": FORMAT_VERSION, "config": dataclasses.asdict(self.config),
                      "versions": _versions()}
            (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
        return target

    @staticmethod
    def read_config(directory: str | os.PathLike) -> MSGDConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing — was {directory} written by MSGD.save_pretrained?")
        record = json.loads(path.read_text())
        if record.get("format") != "msgd" or record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not an MSGD checkpoint of format version {FORMAT_VERSION}")
        return MSGDConfig(**record["config"])

    def load_trained(self, directory: str | os.PathLike) -> None:
        """Load the weights saved in ``directory`` into this model; its config must match."""
        from safetensors.torch import load_file

        saved, now = dataclasses.asdict(self.read_config(directory)), dataclasses.asdict(self.config)
        differ = sorted(k for k in now if saved.get(k) != now[k] and k not in ("sampler", "sampling_steps"))
        if differ:
            raise ValueError(
                f"{directory}: trained with {', '.join(f'{k}={saved.get(k)!r}' for k in differ)} but this run "
                f"has {', '.join(f'{k}={now[k]!r}' for k in differ)} — resume with the same --preset, --seed "
                "and MSGD options, or start a new --output-dir")
        self.load_state_dict(load_file(Path(directory) / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MSGD":
        model = cls(cls.read_config(directory))
        model.load_trained(directory)
        return model


def _versions() -> dict[str, str]:
    import diffusers

    import deblurdiff

    return {"deblurdiff": deblurdiff.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
