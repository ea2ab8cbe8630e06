"""Latent Kernel Prediction Network (LKPN) of DeblurDiff (Kong et al., arXiv 2502.03810).

LKPN is an SD-style UNet (diffusers' ``UNet2DConditionModel``) that reads the blurry latent
``z_lq`` and the noisy latent ``z_t`` and predicts, for every latent pixel and channel, a k×k
deblurring kernel. The kernels are applied to ``z_lq`` by Element-wise Adaptive Convolution
(EAC) and added back to it::

    K   = UNet(cat(z_lq, z_t), t, text_emb)          # (B, 4*k*k, h, w), no softmax
    z_s = eac(z_lq, K) + z_lq                         # (B, 4, h, w)

The UNet's output layer (GroupNorm - SiLU - conv3x3) has its conv zero-initialised, so at
initialisation ``K == 0`` and ``z_s == z_lq`` exactly. ``zero_init="residual-branches"`` (the
released code's LDM UNet) also zero-initialises the last conv of every ResBlock and the output
projection of every transformer block, so each block starts as the identity on its skip path.

The input order is ``cat(z_lq, z_t)`` (blurry latent first), as in the released code
(``LKPN.forward``: ``merge = torch.cat([x, hint], dim=1)`` with ``x = c_img``, ``hint = x_noisy``).

Paper size: block channels (128, 256, 512, 512), 2 ResBlocks per level, GroupNorm(32), SiLU,
timestep embedding added in every ResBlock, transformer blocks (self-attention + cross-attention
to the empty-prompt text embedding, 64 channels per head, linear projections as SD 2.x) on the
first three levels and the middle block, none on the last level; ~145M parameters with
``cross_attention_dim=1024`` (SD 2.1).

Two ablation modes (paper, Sec. 4.4), both documented on ``LKPN.__init__``:

- ``static=True``  ("LKPN without z_t"): the input is ``z_lq`` alone (4 channels) and the
  timestep is fixed to 0, so the time-embedding MLP reduces to a learned constant; the
  prediction does not change along the diffusion trajectory.
- ``direct=True``  ("LKPN predicting the latent directly", no EAC): the UNet outputs 4 channels
  ``r`` (zero-initialised) and ``z_s = r + z_lq``; ``kernels`` is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models import UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from deblurdiff.ops import eac

ZERO_INITS = ("output", "residual-branches")


@dataclass
class LKPNOutput(BaseOutput):
    """Output of :class:`LKPN`.

    Attributes:
        kernels: (B, C*k*k, h, w) per-pixel, per-channel kernels, channel index ``c*k*k + kh*k + kw``
            (the layout :func:`deblurdiff.ops.eac` expects); ``None`` in ``direct`` mode.
        z_s: (B, C, h, w) the deblurred latent estimate, ``eac(z_lq, kernels) + z_lq``
            (``direct`` mode: ``unet_output + z_lq``).
    """

    kernels: torch.Tensor | None
    z_s: torch.Tensor


class LKPN(ModelMixin, ConfigMixin):
    """Latent Kernel Prediction Network: ``LKPN(z_lq, z_t, t, text_emb) -> LKPNOutput``.

    ``save_pretrained`` / ``from_pretrained`` write and read ``config.json`` + safetensors;
    ``enable_gradient_checkpointing()`` checkpoints the UNet's blocks.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        cross_attention_dim: int = 1024,
        attention_head_dim: int = 64,
        kernel_size: int = 5,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        static: bool = False,
        direct: bool = False,
        zero_init: str = "output",
    ):
        """
        Args:
            block_out_channels: channels per UNet level; attention on every level but the last.
            layers_per_block: ResBlocks per down level (up levels get one more, as in SD).
            cross_attention_dim: width of the text embedding (1024 for SD 2.x, 768 for SD 1.5).
            attention_head_dim: channels per attention head (the true head width; every level's
                width must be a multiple of it). Converted to diffusers' head *counts*.
            kernel_size: k of the predicted k×k kernels (odd).
            latent_channels: channels of the VAE latent (4 for SD).
            norm_num_groups: GroupNorm groups.
            static: ablation "LKPN without z_t": input z_lq only, timestep fixed to 0.
            direct: ablation "no EAC": predict a latent residual instead of kernels.
            zero_init: "output" (only the output conv starts at zero) or "residual-branches"
                (also every ResBlock's conv2 and every transformer's proj_out, as the released
                code's LDM UNet).
        """
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LKPN: kernel_size must be a positive odd int, got {kernel_size}")
        if zero_init not in ZERO_INITS:
            raise ValueError(f"LKPN: zero_init {zero_init!r} unknown — choose one of {', '.join(ZERO_INITS)}")
        if any(c % attention_head_dim for c in block_out_channels):
            raise ValueError(
                f"LKPN: block_out_channels {tuple(block_out_channels)} must be multiples of "
                f"attention_head_dim={attention_head_dim}"
            )
        n_levels = len(block_out_channels)
        in_channels = latent_channels if static else 2 * latent_channels
        out_channels = latent_channels if direct else latent_channels * kernel_size * kernel_size
        self.unet = UNet2DConditionModel(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=("CrossAttnDownBlock2D",) * (n_levels - 1) + ("DownBlock2D",),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_levels - 1),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            # diffusers' historical naming: this argument is the number of heads per level.
            attention_head_dim=tuple(c // attention_head_dim for c in block_out_channels),
            use_linear_projection=True,
        )
        zeroed = [self.unet.conv_out]
        if zero_init == "residual-branches":
            for name, module in self.unet.named_modules():
                if name.endswith("resnets") or name.endswith("attentions"):
                    for block in module:
                        zeroed.append(block.conv2 if hasattr(block, "conv2") else block.proj_out)
        for module in zeroed:
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def forward(
        self,
        z_lq: torch.Tensor,
        z_t: torch.Tensor | None,
        t: torch.Tensor | int | None,
        text_emb: torch.Tensor,
    ) -> LKPNOutput:
        """
        Args:
            z_lq: (B, C, h, w) blurry latent; any float dtype (the UNet reads it in its own dtype,
                the residual ``+ z_lq`` keeps its precision).
            z_t: (B, C, h, w) noisy latent at step t; ignored (may be None) when ``static``.
            t: (B,) or scalar timestep; ignored (may be None) when ``static``.
            text_emb: (B or 1, L, cross_attention_dim) text embedding (the empty prompt).
        Returns:
            LKPNOutput(kernels (B, C*k*k, h, w) or None, z_s (B, C, h, w)).
        """
        b = z_lq.shape[0]
        if self.config.static:
            x, t = z_lq, torch.zeros((b,), dtype=torch.long, device=z_lq.device)
        else:
            if z_t is None or t is None:
                raise ValueError("LKPN: z_t and t are required unless the LKPN is static")
            x = torch.cat([z_lq, z_t], dim=1)
        if text_emb.shape[0] != b:
            text_emb = text_emb.expand(b, *text_emb.shape[1:])
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=text_emb.to(self.dtype)).sample
        if self.config.direct:
            return LKPNOutput(kernels=None, z_s=out + z_lq)
        return LKPNOutput(kernels=out, z_s=eac(z_lq, out) + z_lq)
