"""The DeblurDiff model: frozen Stable Diffusion + trainable ControlNet + LKPN (arXiv 2502.03810).

One denoising prediction (Algorithm 1 of the paper)::

    K, z_s = LKPN(z_lq, z_t, t)                  # z_s = eac(z_lq, K) + z_lq
    res    = ControlNet(z_t, t, cat(z_lq, z_s))  # condition at latent resolution
    eps    = UNet(z_t, t, + res)                 # frozen SD UNet

Conventions:

- Images are (B, 3, H, W) float tensors in **[0, 1]** (the house convention). ``encode`` maps a
  sharp image to the VAE's [-1, 1]; a blurry one (``blurry=True``) to [-1, 1] or, with
  ``blurry_range="unit"`` (the released code), feeds it as [0, 1]. ``decode`` maps back to
  [0, 1] (clamped). H and W must be multiples of the VAE's down factor (8 for SD).
- Latents are scaled: ``z = (posterior - shift_factor) * scaling_factor`` from the VAE config
  (0.18215 for SD 1.5 / 2.1, no shift); ``posterior="mode"`` takes the posterior mean,
  ``"sample"`` (the released code) a draw from it. Latents are always returned in float32,
  whatever the VAE's dtype; every network input is cast to that network's dtype where it enters.
- The text condition is the empty prompt, embedded once when the model is built and kept as the
  buffer ``empty_text_emb`` (1, L, D); the text encoder is not kept.
- ControlNet condition ``cond = cat(z_lq, z_s)`` (8 channels), two designs
  (``controlnet_input``):

  - ``"embedding"``: diffusers' ``ControlNetConditioningEmbedding`` built with
    ``conditioning_embedding_out_channels=(C0,)`` (C0 = the UNet's first block width): a conv3x3
    (8 -> C0), SiLU and a *zero-initialised* conv3x3 (C0 -> C0) at latent resolution, added to
    ``conv_in(z_t)``. Non-linear; +C0*(8*9 + 1) + C0*(C0*9 + 1) parameters.
  - ``"concat"`` (the released code): one linear conv3x3 over ``cat(z_t, cond)`` (12 -> C0).
    Stored as the UNet-copied ``conv_in`` (4 -> C0, with the bias) plus
    :class:`ConditionConv` (8 -> C0, no bias, zero-initialised) whose outputs add up, which is
    the same conv with its input channels split. A fresh one starts exactly as the released
    code's ``load_controlnet_from_unet``: conv_in from the UNet, the 8 new channels zero.

  diffusers zero-initialises every ControlNet output conv, so at initialisation ``predict_eps``
  equals the frozen UNet's output in both designs.

Variants (``DeblurDiffConfig.variant``):

- ``lkpn``         the paper's model.
- ``blurry``       ablation "ControlNet with the blurry latent only": no LKPN; the ControlNet
                   condition is ``z_lq`` (conditioning_channels=4), ``z_s = z_lq``.
- ``lkpn-direct``  ablation "LKPN predicts the latent directly" (no EAC):
                   ``z_s = LKPN_unet(cat(z_lq, z_t), t) + z_lq``, zero-initialised output.
- ``lkpn-static``  ablation "LKPN without z_t": LKPN reads ``z_lq`` only with t fixed to 0.

Saving: ``save_pretrained(dir)`` writes ``controlnet/``, ``lkpn/`` (diffusers format) and
``deblurdiff.json`` (this config + versions); with ``include_frozen=True`` also ``vae/``,
``unet/``, ``scheduler/`` and ``empty_text_emb.safetensors``, so the folder needs nothing else
(``deblurdiff convert`` writes such folders). ``DeblurDiff.from_pretrained(dir)`` loads the frozen
parts from the folder when it has them, else rebuilds them from the recorded preset, and loads
the trained ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel

from blurforge.storage import replacing_folder
from deblurdiff.choices import BLURRY_RANGES, CONTROLNET_INPUTS, POSTERIORS, TIMESTEP_SPACINGS, VARIANTS
from deblurdiff.frozen import FrozenParts, load_frozen_parts
from deblurdiff.lkpn import LKPN
from deblurdiff.windows import set_attention_windows

CONFIG_NAME = "deblurdiff.json"
TEXT_EMB_NAME = "empty_text_emb.safetensors"
FROZEN_PARTS = ("vae", "unet", "scheduler")
FORMAT_VERSION = 1


@dataclass
class DeblurDiffConfig:
    """Everything needed to rebuild a DeblurDiff model; saved in every checkpoint."""

    preset: str = "tiny"  # frozen-parts recipe: "tiny", "sd21-base" or "sd15" (deblurdiff.frozen)
    variant: str = "lkpn"  # "lkpn" | "blurry" | "lkpn-direct" | "lkpn-static" (module docstring)
    pretrained: str | None = None  # local diffusers folder of the SD model (sd presets); None for tiny
    seed: int = 0  # seeds the tiny preset's frozen weights and the init of the trainable parts
    kernel_size: int = 5  # k of the LKPN's per-pixel k×k kernels
    loss_eps_weight: float = 1.0  # weight of mse(prediction, target) (eps or v per scheduler)
    loss_latent_weight: float = 1.0  # weight of mse(z_s, z0) (released code: 1)
    loss_pixel_weight: float = 0.0  # weight of mse(D(z_s), D(z0)) through the frozen decoder (paper); 0 = off
    lkpn: dict = field(default_factory=dict)  # LKPN architecture kwargs (block_out_channels, ...), filled by the preset
    controlnet_input: str = "embedding"  # "embedding" (diffusers' conv-SiLU-zero conv) | "concat" (released: one conv over cat(z_t, cond))
    blurry_range: str = "signed"  # VAE input range of the blurry image: "signed" [-1, 1] | "unit" [0, 1] (released)
    posterior: str = "mode"  # VAE latents: "mode" (posterior mean) | "sample" (released: a posterior draw)
    timestep_spacing: str | None = None  # samplers' default spacing; None = the scheduler's own (SD: "leading"); released: "linspace"
    attention_window: int | None = None  # attention in windows of this many latent pixels (deblurdiff.windows); released: 64; None = global

    def __post_init__(self):
        choices = {"variant": VARIANTS, "controlnet_input": CONTROLNET_INPUTS, "blurry_range": BLURRY_RANGES,
                   "posterior": POSTERIORS, "timestep_spacing": (None, *TIMESTEP_SPACINGS)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} {value!r} unknown — choose one of "
                                 f"{', '.join(str(a) for a in allowed if a is not None)}")
        if self.attention_window is not None and self.attention_window < 1:
            raise ValueError(f"attention_window must be a positive number of latent pixels or None, "
                             f"got {self.attention_window}")
        reserved = {"kernel_size", "static", "direct"} & set(self.lkpn)
        if reserved:
            raise ValueError(
                f"lkpn config must not set {sorted(reserved)}: they follow kernel_size and variant"
            )

    @property
    def uses_lkpn(self) -> bool:
        return self.variant != "blurry"

    @property
    def condition_channels(self) -> int:
        """Channels of the ControlNet condition for 4-channel latents: z_lq (blurry) or cat(z_lq, z_s)."""
        return 4 if self.variant == "blurry" else 8


class ConditionConv(torch.nn.Conv2d):
    """The condition's half of the released ControlNet's first conv: conv3x3 (cond -> C0), no bias.

    ``ControlNetModel`` adds ``controlnet_cond_embedding(cond)`` to ``conv_in(z_t)``; with this
    module as the embedding the sum is one conv3x3 over ``cat(z_t, cond)`` whose weight is
    ``cat([conv_in.weight, this.weight], dim=1)`` and whose bias is ``conv_in.bias``.
    """

    def __init__(self, cond_channels: int, out_channels: int):
        super().__init__(cond_channels, out_channels, kernel_size=3, padding=1, bias=False)
        torch.nn.init.zeros_(self.weight)


def new_controlnet(unet: UNet2DConditionModel, cond_channels: int, design: str) -> ControlNetModel:
    """A ControlNet copied from ``unet`` (diffusers' ``from_unet``) with the condition input ``design``."""
    width = unet.config.block_out_channels[0]
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=cond_channels, conditioning_embedding_out_channels=(width,)
    )
    if design == "concat":
        controlnet.controlnet_cond_embedding = ConditionConv(cond_channels, width)
    return controlnet


def load_controlnet(directory: str | os.PathLike, design: str) -> ControlNetModel:
    """A ControlNet saved by ``save_pretrained`` with the condition input ``design``."""
    if design == "embedding":
        return ControlNetModel.from_pretrained(directory, local_files_only=True)
    config = ControlNetModel.load_config(directory, local_files_only=True)
    with torch.device("meta"):
        controlnet = ControlNetModel.from_config(config)
        controlnet.controlnet_cond_embedding = ConditionConv(config["conditioning_channels"],
                                                             config["block_out_channels"][0])
    controlnet.load_state_dict(_read_weights(Path(directory)), strict=True, assign=True)
    return controlnet.eval()


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors a diffusers ``save_pretrained`` wrote (one file or shards) in ``directory``."""
    from safetensors.torch import load_file

    single = directory / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return load_file(single)
    index = directory / "diffusion_pytorch_model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{directory}: no diffusion_pytorch_model.safetensors — was it written by save_pretrained?")
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(directory / shard))
    return out


class DeblurDiff(torch.nn.Module):
    """Frozen SD (vae, unet, empty-prompt embedding, scheduler) + trainable ControlNet and LKPN.

    Build it with :func:`deblurdiff.presets.build_model` or :meth:`from_pretrained`; the
    constructor takes already-built parts and creates the trainable ones it is not given
    (ControlNet from the UNet, LKPN from ``config.lkpn``), seeded by ``config.seed``.
    """

    def __init__(
        self,
        config: DeblurDiffConfig,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        empty_text_emb: torch.Tensor,
        scheduler: DDPMScheduler,
        controlnet: ControlNetModel | None = None,
        lkpn: LKPN | None = None,
    ):
        super().__init__()
        self.config = config
        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet.requires_grad_(False).eval()
        self.register_buffer("empty_text_emb", empty_text_emb.detach().clone(), persistent=False)
        self.scheduler = scheduler
        latent_channels = unet.config.in_channels
        cond_channels = latent_channels if config.variant == "blurry" else 2 * latent_channels

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if controlnet is None:
                controlnet = new_controlnet(unet, cond_channels, config.controlnet_input)
            if lkpn is None and config.uses_lkpn:
                lkpn = LKPN(**self._lkpn_kwargs(config, latent_channels))
        if controlnet.config.conditioning_channels != cond_channels:
            raise ValueError(
                f"ControlNet has conditioning_channels={controlnet.config.conditioning_channels}, "
                f"variant {config.variant!r} needs {cond_channels}"
            )
        is_concat = isinstance(controlnet.controlnet_cond_embedding, ConditionConv)
        if is_concat != (config.controlnet_input == "concat"):
            raise ValueError(f"ControlNet condition input is {'concat' if is_concat else 'embedding'}, "
                             f"the config says {config.controlnet_input!r}")
        if config.uses_lkpn != (lkpn is not None):
            raise ValueError(f"variant {config.variant!r}: LKPN {'missing' if config.uses_lkpn else 'not used'}")
        if lkpn is not None:
            want = self._lkpn_kwargs(config, latent_channels)
            got = {k: lkpn.config[k] for k in ("kernel_size", "static", "direct")}
            if any(got[k] != want[k] for k in got):
                raise ValueError(f"LKPN config {got} does not match variant {config.variant!r}")
        self.controlnet = controlnet.train()
        self.lkpn = lkpn.train() if lkpn is not None else None
        # the released code windows its attention layers: 64 latent px halved per level in the UNets
        # (SD UNet, LKPN), 64 at every level in the ControlNet; a no-op up to 64x64 latents
        set_attention_windows(self.unet, config.attention_window, per_level=True)
        set_attention_windows(self.controlnet, config.attention_window, per_level=False)
        if self.lkpn is not None:
            set_attention_windows(self.lkpn.unet, config.attention_window, per_level=True)

    @staticmethod
    def _lkpn_kwargs(config: DeblurDiffConfig, latent_channels: int) -> dict:
        return {
            **config.lkpn,
            "latent_channels": latent_channels,
            "kernel_size": config.kernel_size,
            "static": config.variant == "lkpn-static",
            "direct": config.variant == "lkpn-direct",
        }

    # -- frozen parts -------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def train(self, mode: bool = True) -> "DeblurDiff":
        """Sets the trainable parts' mode; the frozen VAE and UNet always stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.unet.eval()
        return self

    def _vae_context(self, device: torch.device):
        """A VAE kept in float32 (its config's ``force_upcast``, or a float32 model) runs in
        float32 even under autocast; a half-precision VAE runs as it is."""
        if self.vae.dtype == torch.float32:
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

    def encode(
        self,
        images: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        blurry: bool = False,
    ) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 4, H/f, W/f) scaled float32 latents.

        ``blurry=True`` encodes a blurry (conditioning) image as ``config.blurry_range`` says,
        otherwise [-1, 1]. ``config.posterior`` chooses the posterior mean or a draw from it,
        made with ``generator`` (one, or one per image; None = torch's default generator).
        """
        f = self.vae_scale_factor
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"encode: expected (B, 3, H, W) images with H, W multiples of {f}, got {tuple(images.shape)}"
            )
        x = images if blurry and self.config.blurry_range == "unit" else images * 2 - 1
        with self._vae_context(images.device):
            dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
            z = dist.mode() if self.config.posterior == "mode" else dist.sample(generator)
        shift = self.vae.config.get("shift_factor") or 0.0
        return (z.float() - shift) * self.vae.config.scaling_factor

    def _decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> decoder output in its native [-1, 1] range, unclamped, differentiable."""
        shift = self.vae.config.get("shift_factor") or 0.0
        with self._vae_context(latents.device):
            z = latents.float() / self.vae.config.scaling_factor + shift
            return self.vae.decode(z.to(self.vae.dtype)).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) scaled latents -> (B, 3, h*f, w*f) images in [0, 1] (clamped)."""
        return ((self._decode_raw(latents) + 1) / 2).clamp(0, 1)

    # -- trainable parts ----------------------------------------------------------------------

    def _text(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.empty_text_emb.to(dtype).expand(batch, -1, -1)

    @staticmethod
    def _timesteps(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        return t.expand(batch) if t.ndim == 0 else t

    def condition(
        self, z_lq: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z_lq, z_t, t) -> (z_s (B, 4, h, w), kernels (B, 4*k*k, h, w) or None) for the variant.

        ``blurry``: (z_lq, None); ``lkpn-direct``: kernels None; ``lkpn-static`` ignores z_t, t.
        The LKPN's UNet reads z_lq and z_t in its own dtype; ``z_s = EAC(z_lq, K) + z_lq`` keeps
        z_lq's precision (a float32 z_lq gives a float32 z_s).
        """
        if self.lkpn is None:
            return z_lq, None
        t = self._timesteps(t, z_lq.shape[0], z_lq.device)
        out = self.lkpn(z_lq, z_t, t, self._text(z_lq.shape[0], self.lkpn.dtype))
        return out.z_s, out.kernels

    def predict_eps(
        self, z_t: torch.Tensor, t: torch.Tensor | int, z_lq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising prediction -> (prediction (B, 4, h, w), z_s (B, 4, h, w)).

        The kernels are re-estimated from z_t (LKPN -> EAC), then ControlNet(z_t, t, cond) feeds
        residuals to the frozen UNet. The prediction is what the scheduler's ``prediction_type``
        says (epsilon for SD 2.1-base and SD 1.5, v for v_prediction models). Inputs may be
        float32 whatever the networks' dtypes: each network gets them cast to its own dtype.
        """
        b = z_t.shape[0]
        t = self._timesteps(t, b, z_t.device)
        z_s, _ = self.condition(z_lq, z_t, t)
        cond = z_lq if self.config.variant == "blurry" else torch.cat([z_lq, z_s.to(z_lq.dtype)], dim=1)
        c_dtype, u_dtype = self.controlnet.dtype, self.unet.dtype
        down, mid = self.controlnet(z_t.to(c_dtype), t, self._text(b, c_dtype), controlnet_cond=cond.to(c_dtype),
                                    return_dict=False)
        pred = self.unet(
            z_t.to(u_dtype),
            t,
            encoder_hidden_states=self._text(b, u_dtype),
            down_block_additional_residuals=[r.to(u_dtype) for r in down],
            mid_block_additional_residual=mid.to(u_dtype),
        ).sample
        return pred, z_s

    def training_losses(
        self, blurry: torch.Tensor, sharp: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses on a batch of (B, 3, H, W) pairs in [0, 1] -> dict of scalar tensors.

        Keys: ``loss`` (weighted total, to backpropagate), ``loss_eps``, ``loss_latent``
        (mse(z_s, z0)), and ``loss_pixel`` when ``loss_pixel_weight > 0`` (mse of the frozen
        decoder's [-1, 1] outputs for z_s and z0). t ~ U{0..T-1} and the noise are drawn with
        ``generator`` (on its device; None = torch's default generator), and so are the posterior
        draws when ``config.posterior == "sample"``. Latents, noise and z_t are float32 whatever
        the networks' dtypes (bf16 z_t would put an RMS error of ~0.08 into the eps target near
        t = 0). For the ``blurry`` variant ``loss_latent`` is mse(z_lq, z0), reported but not in
        ``loss`` (nothing trains it).
        """
        cfg = self.config
        with torch.no_grad():
            z_lq = self.encode(blurry, generator, blurry=True)
            z0 = self.encode(sharp, generator)
        b, device = z0.shape[0], z0.device
        gen_device = generator.device if generator is not None else device
        n_steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, n_steps, (b,), generator=generator, device=gen_device).to(device)
        noise = torch.randn(z0.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)
        z_t = self.scheduler.add_noise(z0, noise, t)

        pred, z_s = self.predict_eps(z_t, t, z_lq)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(z0, noise, t)
        elif kind == "sample":
            target = z0
        else:
            raise ValueError(f"scheduler prediction_type {kind!r} not supported")

        losses = {"loss_eps": F.mse_loss(pred.float(), target.float())}
        losses["loss_latent"] = F.mse_loss(z_s.float(), z0.float())
        total = cfg.loss_eps_weight * losses["loss_eps"]
        if cfg.uses_lkpn:
            total = total + cfg.loss_latent_weight * losses["loss_latent"]
            if cfg.loss_pixel_weight > 0:
                with torch.no_grad():
                    x0 = self._decode_raw(z0)
                losses["loss_pixel"] = F.mse_loss(self._decode_raw(z_s).float(), x0.float())
                total = total + cfg.loss_pixel_weight * losses["loss_pixel"]
        losses["loss"] = total
        return losses

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the ControlNet and the LKPN (everything else is frozen)."""
        params = list(self.controlnet.parameters())
        if self.lkpn is not None:
            params += list(self.lkpn.parameters())
        return params

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Toggle activation checkpointing in ControlNet, LKPN and the frozen UNet/VAE (gradients
        flow through those to the ControlNet residuals and the pixel loss)."""
        for module in (self.controlnet, self.lkpn, self.unet, self.vae):
            if module is None or not module._supports_gradient_checkpointing:
                continue
            if enabled:
                module.enable_gradient_checkpointing()
            else:
                module.disable_gradient_checkpointing()

    # -- save / load --------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, include_frozen: bool = False,
                        extra: dict | None = None, extra_parts: dict | None = None) -> Path:
        """Write ``controlnet/``, ``lkpn/`` and ``deblurdiff.json`` to ``save_directory``, atomically:
        everything goes to a temporary sibling folder that then replaces the target.

        ``include_frozen``: also write the frozen parts (``vae/``, ``unet/``, ``scheduler/``,
        ``empty_text_emb.safetensors``), so the folder loads without the SD folder or preset.
        ``extra``: more JSON-able facts recorded in ``deblurdiff.json`` (e.g. where it came from).
        ``extra_parts``: ``{subfolder: object with save_pretrained}`` written alongside (e.g. a text encoder).
        """
        target = Path(save_directory).resolve()
        with replacing_folder(target) as tmp:
            self.controlnet.save_pretrained(tmp / "controlnet")
            if self.lkpn is not None:
                self.lkpn.save_pretrained(tmp / "lkpn")
            if include_frozen:
                from safetensors.torch import save_file

                self.vae.save_pretrained(tmp / "vae")
                self.unet.save_pretrained(tmp / "unet")
                self.scheduler.save_pretrained(tmp / "scheduler")
                save_file({"empty_text_emb": self.empty_text_emb.detach().cpu().contiguous()}, tmp / TEXT_EMB_NAME)
            for name, part in (extra_parts or {}).items():
                part.save_pretrained(tmp / name)
            record = {
                "format": "deblurdiff",
                "format_version": FORMAT_VERSION,
                "config": dataclasses.asdict(self.config),
                "frozen_parts_included": include_frozen,
                "versions": _versions(),
                **(extra or {}),
            }
            (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
        return target

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, pretrained: str | os.PathLike | None = None
    ) -> "DeblurDiff":
        """Load a folder written by :meth:`save_pretrained`.

        The frozen parts come from ``pretrained`` if given (sd presets), else from the folder
        itself if it holds them (``include_frozen``, converted checkpoints), else they are rebuilt
        from the recorded preset (tiny: from its seed; sd presets: the recorded path).
        """
        directory = Path(directory)
        config = read_config(directory)
        if pretrained is not None:
            config.pretrained = str(Path(pretrained).expanduser().resolve())
            frozen = None
        else:
            frozen = load_included_frozen_parts(directory)
        if frozen is None:
            frozen = load_frozen_parts(config.preset, config.pretrained, config.seed)
        controlnet, lkpn = load_trained_parts(directory, config)
        return cls(
            config,
            vae=frozen.vae,
            unet=frozen.unet,
            empty_text_emb=frozen.empty_text_emb,
            scheduler=frozen.scheduler,
            controlnet=controlnet,
            lkpn=lkpn,
        )


def read_config(directory: str | os.PathLike) -> DeblurDiffConfig:
    """The :class:`DeblurDiffConfig` recorded in a checkpoint folder (clear errors otherwise)."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing — was {directory} written by DeblurDiff.save_pretrained "
                                "(or 'deblurdiff convert')?")
    record = json.loads(path.read_text())
    if record.get("format") != "deblurdiff" or record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a deblurdiff checkpoint of format version {FORMAT_VERSION}")
    return DeblurDiffConfig(**record["config"])


def load_trained_parts(directory: str | os.PathLike, config: DeblurDiffConfig) -> tuple[ControlNetModel, LKPN | None]:
    """(ControlNet, LKPN or None) saved in ``directory`` by :meth:`DeblurDiff.save_pretrained`."""
    directory = Path(directory)
    controlnet = load_controlnet(directory / "controlnet", config.controlnet_input)
    lkpn = None
    if config.uses_lkpn:
        if not (directory / "lkpn" / "config.json").is_file():
            raise FileNotFoundError(f"{directory / 'lkpn'} missing — variant {config.variant!r} needs an LKPN")
        lkpn = LKPN.from_pretrained(directory / "lkpn", local_files_only=True)
    return controlnet, lkpn


def load_included_frozen_parts(directory: str | os.PathLike):
    """The frozen parts saved in a checkpoint folder (``include_frozen=True``), or None if it has none."""
    from safetensors.torch import load_file

    directory = Path(directory)
    present = [p for p in FROZEN_PARTS if (directory / p).is_dir()] + (
        [TEXT_EMB_NAME] if (directory / TEXT_EMB_NAME).is_file() else [])
    if not present:
        return None
    if len(present) != len(FROZEN_PARTS) + 1:
        missing = sorted({*FROZEN_PARTS, TEXT_EMB_NAME} - set(present))
        raise FileNotFoundError(f"{directory}: frozen parts incomplete, {', '.join(missing)} missing — "
                                "re-run 'deblurdiff convert' (or save_pretrained(include_frozen=True))")
    return FrozenParts(
        vae=AutoencoderKL.from_pretrained(directory / "vae", local_files_only=True).eval(),
        unet=UNet2DConditionModel.from_pretrained(directory / "unet", local_files_only=True).eval(),
        empty_text_emb=load_file(directory / TEXT_EMB_NAME)["empty_text_emb"],
        scheduler=DDPMScheduler.from_pretrained(directory / "scheduler", local_files_only=True),
    )


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    import deblurdiff

    return {
        "deblurdiff": deblurdiff.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
