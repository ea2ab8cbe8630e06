"""Convert the released DeblurDiff checkpoint into a deblurdiff checkpoint folder.

The authors of DeblurDiff (Kong et al.; github.com/kkkls/DeblurDiff, built on DiffBIR v2)
released ``model.pth``: the whole ``ControlLDM`` state_dict of their code, LDM key naming::

    unet.*        the frozen Stable Diffusion 2.1-base UNet (LDM ``UNetModel``)
    vae.*         the frozen SD VAE (LDM ``AutoencoderKL``)
    clip.*        the frozen OpenCLIP ViT-H-14 text tower (``clip.model.*``, no visual tower)
    controlnet.*  the trained ControlNet; its first conv reads cat(z_t, z_lq, z_s), 12 -> 320
    kpn.*         the trained LKPN (``kpn.unet.*``: an LDM UNetModel, 8 -> 4*5*5 channels)

:func:`load_released` turns it into a :class:`deblurdiff.model.DeblurDiff` with the released
architecture and preprocessing (:data:`deblurdiff.presets.RELEASED_SETTINGS`), using diffusers'
single-file converters for the LDM UNet / ControlNet / VAE and OpenCLIP layouts; :func:`convert`
writes it as a self-contained checkpoint folder (``deblurdiff infer --checkpoint FOLDER``).

- Architectures are read from tensor shapes (widths, levels, blocks per level, attention
  levels, cross-attention width, text width and depth). What shapes cannot show comes from the
  released configs: 64 channels per attention head (``num_head_channels: 64`` in
  ``configs/inference/cldm.yaml``; OpenCLIP ViT-H-14's text tower: width 1024, 16 heads), the
  latent scale 0.18215 (``latent_scale_factor``), the 1000-step scaled-linear betas 0.00085 ..
  0.012 (``configs/inference/diffusion.yaml``; LDM's "linear" schedule is diffusers'
  "scaled_linear"), epsilon prediction.
- The ControlNet's 12-channel first conv is split by input channels: ``[:, :4]`` (z_t) becomes
  diffusers' ``conv_in`` with the bias, ``[:, 4:]`` (z_lq, z_s) the :class:`ConditionConv`.
- The text condition is the penultimate layer of the OpenCLIP text tower after its final
  LayerNorm (``FrozenOpenCLIPEmbedder(layer="penultimate")``): the converted ``CLIPTextModel``
  keeps the first L-1 of its L layers; its last layer, ``text_projection`` and ``logit_scale``
  are unused by the model. The empty prompt is embedded once, from :data:`EMPTY_PROMPT_IDS`.
- Every tensor is accounted for: per key group the converted values add up to the source's
  (less the unused text-tower tensors), and every part loads with ``strict=True``.

A file that is not this checkpoint is refused with the key groups that are missing or unexpected.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # torch is imported where it is used, so that 'deblurdiff convert --help' is instant
    import torch

GROUPS = ("unet", "vae", "clip", "controlnet", "kpn")
# OpenCLIP's tokenize(""): <start_of_text> 49406, <end_of_text> 49407, zero padding to the context
# length 77 (model/open_clip/tokenizer.py of the released code: sot/eot ids of
# bpe_simple_vocab_16e6.txt.gz, torch.zeros padding; checked against their tokenize in the scratch
# equivalence run).
EMPTY_PROMPT_IDS = [49406, 49407] + [0] * 75
HEAD_CHANNELS = 64  # channels per attention head in every released UNet (num_head_channels: 64)
TEXT_HEAD_CHANNELS = 64  # OpenCLIP ViT-H-14 text tower: width 1024 / 16 heads
LATENT_SCALE = 0.18215  # latent_scale_factor in configs/inference/cldm.yaml
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False)
FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype of a ``--dtype`` name (fp32, fp16, bf16)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
# what other checkpoints look like, to say what a refused file probably is
KNOWN_LAYOUTS = {
    "model": "a Stable Diffusion (LDM) checkpoint (model.diffusion_model.*)",
    "first_stage_model": "a Stable Diffusion (LDM) checkpoint",
    "control_model": "an LDM ControlNet checkpoint",
    "state_dict": "a Lightning checkpoint with a nested state_dict",
}


class ReleasedCheckpointError(ValueError):
    """A file that is not the released DeblurDiff checkpoint; the message names what is wrong."""


# ------------------------------------------------------------------------------------ reading


class _SafetensorsDict(Mapping):
    """A .safetensors file as a read-only mapping that loads each tensor when it is asked for."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._keys = list(self._file.keys())

    def __getitem__(self, key):
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state_dict in ``path`` (.pth/.pt/.ckpt/.bin via ``torch.load`` with mmap, or
    .safetensors read lazily); a ``{"state_dict": ...}`` wrapper is unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file — pass the released model.pth (github.com/kkkls/DeblurDiff)")
    if path.suffix == ".safetensors":
        return _SafetensorsDict(path)
    try:
        try:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # a legacy (non-zip) torch.save file cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReleasedCheckpointError(f"{path}: cannot be read as a PyTorch state_dict ({type(exc).__name__}: "
                                      f"{str(exc)[:200]}) — pass the released model.pth or a .safetensors of it") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict) and len(sd) <= 4:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ReleasedCheckpointError(f"{path}: not a state_dict of tensors — pass the released model.pth")
    return sd


def check_groups(keys, source: str) -> None:
    """Refuse a state_dict whose top-level key groups are not exactly :data:`GROUPS`."""
    present = {k.split(".", 1)[0] for k in keys}
    missing = [g for g in GROUPS if g not in present]
    unexpected = sorted(present - set(GROUPS))
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append("missing key groups: " + ", ".join(f"{g}.*" for g in missing))
    if unexpected:
        parts.append("unexpected key groups: " + ", ".join(f"{g}.*" for g in unexpected[:8])
                     + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    hints = [KNOWN_LAYOUTS[g] for g in unexpected if g in KNOWN_LAYOUTS]
    if set(GROUPS) - {"kpn"} <= present and "kpn" in missing:
        hints.append("a DiffBIR ControlLDM without an LKPN")
    hint = f"; it looks like {hints[0]}" if hints else ""
    raise ReleasedCheckpointError(
        f"{source}: not the released DeblurDiff checkpoint — {'; '.join(parts)}{hint}. Expected the model.pth of "
        "github.com/kkkls/DeblurDiff: the ControlLDM state_dict with keys under unet.*, vae.*, clip.*, "
        "controlnet.*, kpn.*"
    )


def _group(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: sd[k] for k in sd.keys() if k.startswith(prefix)}


def _numel(sd: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in sd.values())


# ------------------------------------------------------------------- architectures from shapes


def _shape_error(group: str, what: str) -> ReleasedCheckpointError:
    return ReleasedCheckpointError(f"{group}.*: {what} — not the released DeblurDiff layout")


def ldm_unet_layout(sd: Mapping[str, torch.Tensor], group: str) -> dict:
    """Shape facts of an LDM UNetModel / ControlNet state_dict (keys without the group prefix):
    first-conv in/out channels, per-level widths, ResBlocks per level, attention per level."""
    if "input_blocks.0.0.weight" not in sd:
        raise _shape_error(group, "no input_blocks.0.0.weight")
    conv0 = sd["input_blocks.0.0.weight"]
    levels: list[list[tuple[int, bool]]] = [[]]
    i = 1
    while True:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.0.weight" in sd:
            width = sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
            levels[-1].append((int(width), f"input_blocks.{i}.1.proj_in.weight" in sd))
        else:
            break
        i += 1
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts:
        raise _shape_error(group, f"unequal ResBlocks per level {[len(lv) for lv in levels]}")
    widths, attention = [], []
    for level in levels:
        if len({w for w, _ in level}) != 1 or len({a for _, a in level}) != 1:
            raise _shape_error(group, "mixed widths or attention within a level")
        widths.append(level[0][0])
        attention.append(level[0][1])
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    if to_k is None or proj_in is None or "middle_block.1.proj_in.weight" not in sd:
        raise _shape_error(group, "no cross-attention transformer blocks")
    if any(re.search(r"transformer_blocks\.[1-9]", k) for k in sd):
        raise _shape_error(group, "more than one transformer block per attention layer")
    for w in widths:
        if w % HEAD_CHANNELS:
            raise _shape_error(group, f"width {w} is not a multiple of {HEAD_CHANNELS} channels per head")
    return {
        "conv_in": (int(conv0.shape[1]), int(conv0.shape[0])),
        "block_out_channels": widths,
        "layers_per_block": counts.pop(),
        "attention": attention,
        "cross_attention_dim": int(to_k.shape[1]),
        "use_linear_projection": proj_in.ndim == 2,
        "out_channels": int(sd["out.2.weight"].shape[0]) if "out.2.weight" in sd else None,
    }


def diffusers_unet_kwargs(layout: dict, in_channels: int) -> dict:
    """``UNet2DConditionModel`` keyword arguments for an LDM UNet ``layout``."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout["attention"])
    return {
        "in_channels": in_channels,
        "out_channels": layout["out_channels"],
        "down_block_types": down,
        "up_block_types": tuple(t.replace("Down", "Up") for t in reversed(down)),
        "block_out_channels": tuple(layout["block_out_channels"]),
        "layers_per_block": layout["layers_per_block"],
        "cross_attention_dim": layout["cross_attention_dim"],
        # diffusers' historical naming: the number of heads per level
        "attention_head_dim": tuple(w // HEAD_CHANNELS for w in layout["block_out_channels"]),
        "use_linear_projection": layout["use_linear_projection"],
        "norm_num_groups": 32,
        "sample_size": 64,
    }


def vae_kwargs(sd: Mapping[str, torch.Tensor]) -> dict:
    """``AutoencoderKL`` keyword arguments from an LDM VAE state_dict's shapes."""
    if "encoder.conv_in.weight" not in sd or "decoder.conv_out.weight" not in sd:
        raise _shape_error("vae", "no encoder.conv_in / decoder.conv_out")
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.down.")})
    widths = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(n)]
    layers = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": tuple(widths),
        "layers_per_block": layers,
        "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": LATENT_SCALE,
    }


def text_config_kwargs(sd: Mapping[str, torch.Tensor]) -> dict:
    """``CLIPTextConfig`` keyword arguments for the penultimate-layer text model of an OpenCLIP
    text tower state_dict (keys without ``clip.model.``)."""
    if "token_embedding.weight" not in sd or "positional_embedding" not in sd:
        raise _shape_error("clip", "no token_embedding / positional_embedding")
    vocab, width = (int(s) for s in sd["token_embedding.weight"].shape)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    if layers < 2 or width % TEXT_HEAD_CHANNELS:
        raise _shape_error("clip", f"{layers} text layers of width {width}")
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": layers - 1,  # the penultimate layer is the condition
        "num_attention_heads": width // TEXT_HEAD_CHANNELS,
        "max_position_embeddings": int(sd["positional_embedding"].shape[0]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": EMPTY_PROMPT_IDS[0],
        "eos_token_id": EMPTY_PROMPT_IDS[1],
        "pad_token_id": 0,
    }


# ------------------------------------------------------------------------------- conversion


@dataclass
class Converted:
    """The released checkpoint as diffusers/deblurdiff state_dicts and constructor kwargs."""

    unet: tuple[dict, dict]  # (UNet2DConditionModel kwargs, state_dict)
    vae: tuple[dict, dict]
    text: tuple[dict, dict]  # (CLIPTextConfig kwargs, state_dict of CLIPTextModel)
    controlnet: tuple[dict, dict]  # (ControlNetModel kwargs, state_dict incl. the ConditionConv)
    lkpn: tuple[dict, dict]  # (LKPN kwargs, state_dict)
    source_values: int  # values in the source file
    unused_values: int  # values of the text tower the model does not use (last layer, projection, logit scale)


def _checked(converted: dict, source: Mapping, group: str, less: int = 0) -> dict:
    missing = sorted(k for k, v in converted.items() if v is None)
    if missing:
        raise _shape_error(group, f"tensors missing for {', '.join(missing[:5])}")
    if _numel(converted) != _numel(source) - less:
        raise _shape_error(group, f"{_numel(source) - less - _numel(converted)} values were not converted")
    return converted


def convert_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Converted:
    """Map the released state_dict to the parts' state_dicts (no model is built; works on meta tensors)."""
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    check_groups(sd.keys(), source)
    with _quiet_diffusers():
        # frozen SD UNet
        unet_sd = _group(sd, "unet.")
        unet_layout = ldm_unet_layout(unet_sd, "unet")
        unet_kwargs = diffusers_unet_kwargs(unet_layout, unet_layout["conv_in"][0])
        unet = _checked(convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in unet_sd.items()},
                                                    unet_kwargs), unet_sd, "unet")
        latent = unet_kwargs["in_channels"]

        # LKPN: an LDM UNet reading cat(z_lq, z_t) and writing latent*k*k kernels
        kpn_sd = _group(sd, "kpn.unet.")
        if len(kpn_sd) != len(_group(sd, "kpn.")):
            raise _shape_error("kpn", "tensors outside kpn.unet")
        kpn_layout = ldm_unet_layout(kpn_sd, "kpn")
        kpn_in = kpn_layout["conv_in"][0]
        k = round((kpn_layout["out_channels"] / latent) ** 0.5)
        if kpn_in != 2 * latent or k * k * latent != kpn_layout["out_channels"] or k % 2 == 0:
            raise _shape_error("kpn", f"LKPN reads {kpn_in} channels and writes {kpn_layout['out_channels']}; "
                               f"expected {2 * latent} and {latent}*k*k")
        if kpn_layout["attention"] != [True] * (len(kpn_layout["attention"]) - 1) + [False]:
            raise _shape_error("kpn", f"attention on levels {kpn_layout['attention']}; the LKPN has it on all but the last")
        kpn_unet = diffusers_unet_kwargs(kpn_layout, kpn_in)
        lkpn_kwargs = {
            "block_out_channels": list(kpn_layout["block_out_channels"]),
            "layers_per_block": kpn_layout["layers_per_block"],
            "cross_attention_dim": kpn_layout["cross_attention_dim"],
            "attention_head_dim": HEAD_CHANNELS,
            "norm_num_groups": 32,
            "zero_init": "residual-branches",
        }
        lkpn = {f"unet.{n}": v for n, v in _checked(
            convert_ldm_unet_checkpoint({f"model.diffusion_model.{k_}": v for k_, v in kpn_sd.items()}, kpn_unet),
            kpn_sd, "kpn").items()}

        # ControlNet: the UNet encoder; its first conv reads cat(z_t, z_lq, z_s)
        cn_sd = _group(sd, "controlnet.")
        cn_layout = ldm_unet_layout(cn_sd, "controlnet")
        cn_in, width = cn_layout["conv_in"]
        cond_channels = cn_in - latent
        if cond_channels != 2 * latent or cn_layout["block_out_channels"] != unet_layout["block_out_channels"]:
            raise _shape_error("controlnet", f"first conv reads {cn_in} channels, widths "
                               f"{cn_layout['block_out_channels']}; expected {3 * latent} and the UNet's widths")
        cn_kwargs = {k_: v for k_, v in diffusers_unet_kwargs(cn_layout, latent).items()
                     if k_ not in ("out_channels", "up_block_types", "norm_num_groups", "sample_size")}
        cn_kwargs.update(conditioning_channels=cond_channels, conditioning_embedding_out_channels=(width,))
        controlnet = convert_controlnet_checkpoint(dict(cn_sd), cn_kwargs)
        first = controlnet.pop("conv_in.weight")
        controlnet["conv_in.weight"] = first[:, :latent].contiguous()
        controlnet["controlnet_cond_embedding.weight"] = first[:, latent:].contiguous()
        controlnet = _checked(controlnet, cn_sd, "controlnet")

        # VAE
        vae_sd = _group(sd, "vae.")
        vae_kw = vae_kwargs(vae_sd)
        vae = _checked(convert_ldm_vae_checkpoint({f"first_stage_model.{k_}": v for k_, v in vae_sd.items()}, vae_kw),
                       vae_sd, "vae")

        # OpenCLIP text tower, penultimate layer
        clip_sd = _group(sd, "clip.model.")
        if len(clip_sd) != len(_group(sd, "clip.")):
            raise _shape_error("clip", "tensors outside clip.model")
        text_kw = text_config_kwargs(clip_sd)
        last = f"transformer.resblocks.{text_kw['num_hidden_layers']}."
        unused = {k_: v for k_, v in clip_sd.items()
                  if k_.startswith(last) or k_ in ("text_projection", "logit_scale")}
        used = {f"clip.model.{k_}": v for k_, v in clip_sd.items() if k_ not in unused}
        text = convert_open_clip_checkpoint(_TextModelShape(text_kw["hidden_size"]), used, prefix="clip.model.")
        text = _checked({k_.removeprefix("text_model."): v for k_, v in text.items()}, clip_sd, "clip",
                        less=_numel(unused))
    return Converted(
        unet=(unet_kwargs, unet), vae=(vae_kw, vae), text=(text_kw, text), controlnet=(cn_kwargs, controlnet),
        lkpn=({**lkpn_kwargs, "kernel_size": k, "latent_channels": latent}, lkpn),
        source_values=_numel(sd), unused_values=_numel(unused),
    )


class _TextModelShape:
    """What ``convert_open_clip_checkpoint`` reads from its model argument: ``config.hidden_size``."""

    def __init__(self, hidden_size: int):
        self.config = type("TextConfig", (), {"hidden_size": hidden_size})()


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# ------------------------------------------------------------------------------- the model


def _on_meta(cls, *args, **kwargs):
    import torch

    with torch.device("meta"):
        return cls(*args, **kwargs)


def _load(module: torch.nn.Module, state: dict, name: str, dtype: torch.dtype | None) -> torch.nn.Module:
    """Load ``state`` into a meta-built ``module`` strictly (assigning, no copy), cast to ``dtype``."""
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise _shape_error(name, f"does not load into the converted model ({str(exc)[:400]})") from None
    return module.eval()


def build_text_encoder(kwargs: dict, state: dict):
    """The converted ``CLIPTextModel`` (float32) holding the penultimate-layer text tower."""
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = _on_meta(CLIPTextModel, CLIPTextConfig(**kwargs))
    finally:
        logging.set_verbosity(level)
    import torch

    if hasattr(model, "text_model"):  # transformers < 5.6 wraps the text model one level down
        state = {f"text_model.{k}": v for k, v in state.items()}
    _load(model, state, "clip", torch.float32)
    for module in model.modules():  # non-persistent buffers are not in the state_dict
        if "position_ids" in getattr(module, "_buffers", {}):
            module.register_buffer("position_ids", torch.arange(kwargs["max_position_embeddings"])[None],
                                   persistent=False)
    return model


def empty_prompt_embedding(text_encoder) -> torch.Tensor:
    """(1, 77, width) float32: the text model's last hidden state (after its final LayerNorm) for
    :data:`EMPTY_PROMPT_IDS`."""
    import torch

    ids = torch.tensor([EMPTY_PROMPT_IDS])
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state.float()


def build_networks(parts: Converted, dtype: torch.dtype | None = None) -> dict[str, torch.nn.Module]:
    """The converted networks (``unet``, ``vae``, ``controlnet``, ``lkpn``, ``text_encoder``), each
    built on the meta device and loaded strictly from ``parts`` by assignment (no copies unless
    ``dtype`` casts; the text encoder stays float32)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from deblurdiff.lkpn import LKPN
    from deblurdiff.model import ConditionConv

    cn_kwargs, cn_state = parts.controlnet
    controlnet = _on_meta(ControlNetModel, **cn_kwargs)
    with torch.device("meta"):
        controlnet.controlnet_cond_embedding = ConditionConv(cn_kwargs["conditioning_channels"],
                                                             cn_kwargs["block_out_channels"][0])
    return {
        "unet": _load(_on_meta(UNet2DConditionModel, **parts.unet[0]), parts.unet[1], "unet", dtype),
        "vae": _load(_on_meta(AutoencoderKL, **parts.vae[0]), parts.vae[1], "vae", dtype),
        "controlnet": _load(controlnet, cn_state, "controlnet", dtype),
        "lkpn": _load(_on_meta(LKPN, **parts.lkpn[0]), parts.lkpn[1], "kpn", dtype),
        "text_encoder": build_text_encoder(*parts.text),
    }


def build_model(parts: Converted, dtype: torch.dtype | None = None, keep_text_encoder: bool = False):
    """``(DeblurDiff, text_encoder or None)`` from converted state_dicts; the model's tensors are
    the converted ones (no copies unless ``dtype`` casts them)."""
    from diffusers import DDPMScheduler

    from deblurdiff.model import DeblurDiff, DeblurDiffConfig
    from deblurdiff.presets import RELEASED_SETTINGS

    nets = build_networks(parts, dtype)
    empty = empty_prompt_embedding(nets["text_encoder"])
    lkpn_kwargs = parts.lkpn[0]
    settings = {k: v for k, v in RELEASED_SETTINGS.items() if k != "lkpn"}
    config = DeblurDiffConfig(
        preset="sd21-base", variant="lkpn", pretrained=None, seed=0, kernel_size=lkpn_kwargs["kernel_size"],
        lkpn={k: v for k, v in lkpn_kwargs.items() if k not in ("kernel_size", "latent_channels")}, **settings,
    )
    scheduler = DDPMScheduler(**SCHEDULE, timestep_spacing=config.timestep_spacing)
    model = DeblurDiff(config, vae=nets["vae"], unet=nets["unet"], empty_text_emb=empty, scheduler=scheduler,
                       controlnet=nets["controlnet"], lkpn=nets["lkpn"])
    return model.eval(), (nets["text_encoder"] if keep_text_encoder else None)


def load_released(path: str | os.PathLike, dtype: torch.dtype | None = None, keep_text_encoder: bool = False):
    """``(DeblurDiff, text_encoder or None)`` from the released ``model.pth`` (or a .safetensors of it)."""
    path = Path(path)
    sd = read_checkpoint(path)
    parts = convert_state_dict(sd, str(path))
    return build_model(parts, dtype, keep_text_encoder)


def convert(path: str | os.PathLike, output: str | os.PathLike, dtype: torch.dtype | None = None,
            text_encoder: bool = True) -> tuple[Path, dict]:
    """Write the released checkpoint ``path`` as a self-contained checkpoint folder ``output``
    (atomically, as ``DeblurDiff.save_pretrained``). Returns (folder, parameter counts per part)."""
    path, output = Path(path), Path(output).resolve()
    model, text_model = load_released(path, dtype, keep_text_encoder=text_encoder)
    source = {"file": str(path.resolve()), "bytes": path.stat().st_size,
              "origin": "github.com/kkkls/DeblurDiff model.pth (ControlLDM state_dict)"}
    parts = {}
    if text_model is not None:
        from transformers.utils import logging

        logging.disable_progress_bar()
        parts["text_encoder"] = text_model
    model.save_pretrained(output, include_frozen=True, extra={"converted_from": source}, extra_parts=parts)
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("unet", "vae", "controlnet", "lkpn")}
    if text_model is not None:
        counts["text_encoder"] = sum(p.numel() for p in text_model.parameters())
    return output, counts


# ------------------------------------------------------------------------------------- CLI


CONVERT_DESCRIPTION = (
    "Convert the DeblurDiff authors' released weights (model.pth of github.com/kkkls/DeblurDiff: the whole "
    "ControlLDM state_dict, Stable Diffusion 2.1-base and OpenCLIP included) into a self-contained checkpoint "
    "folder that 'deblurdiff infer --checkpoint' loads, with the released architecture and preprocessing "
    "recorded in it. About a minute for the 7 GB file, read memory-mapped; nothing is downloaded. Other "
    "files are refused with the key groups that are missing or unexpected."
)
CONVERT_EPILOG = """\
examples:
  deblurdiff convert --checkpoint model.pth --output deblurdiff-released/
  deblurdiff convert --checkpoint model.pth --output deblurdiff-released-fp16/ --dtype fp16 --no-text-encoder
then: deblurdiff infer --checkpoint deblurdiff-released/ --input blurry/ --output deblurred/

what is written (OUTPUT/): deblurdiff.json (the released settings: one-conv ControlNet input over
cat(z_t, z_lq, z_s), blurry image VAE-encoded from [0, 1], posterior sampling, linspace timesteps),
controlnet/, lkpn/, unet/, vae/, scheduler/, empty_text_emb.safetensors and text_encoder/
(diffusers / transformers formats).
"""


def add_convert_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="the released model.pth of github.com/kkkls/DeblurDiff (or a .safetensors of the same "
                             "state_dict)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="checkpoint folder to write (replaced atomically if it exists)")
    parser.add_argument("--dtype", choices=["keep", *DTYPE_NAMES], default="keep",
                        help="precision of the written weights (keep = as in the file)")
    parser.add_argument("--no-text-encoder", action="store_true",
                        help="do not write text_encoder/ (the model only needs the empty-prompt embedding, "
                             "which is always written)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages (the summary is still printed)")


def run_convert(args) -> int:
    """The ``convert`` command: 0 when the folder is written; a file that is not the released
    checkpoint raises ``ReleasedCheckpointError`` (a ``ValueError``) before anything is written."""
    t0 = time.perf_counter()
    src = Path(args.checkpoint)
    if not src.is_file():
        raise FileNotFoundError(f"--checkpoint {src}: no such file — download model.pth from "
                                "github.com/kkkls/DeblurDiff and pass its path")
    if Path(args.output).resolve() == src.resolve() or src.resolve().is_relative_to(Path(args.output).resolve()):
        raise ValueError(f"--output {args.output} would replace the input {src} — choose another folder")
    if not args.quiet:
        print(f"convert: reading {src} and converting (about a minute for the 7 GB file; memory-mapped)",
              file=sys.stderr)
    _, counts = convert(src, args.output, None if args.dtype == "keep" else torch_dtype(args.dtype),
                        text_encoder=not args.no_text_encoder)
    parts = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in counts.items())
    print(f"convert: {src} -> {args.output} ({parts} parameters; released settings: concat ControlNet input, "
          f"blurry latents from [0, 1], posterior sampling, linspace timesteps) in {time.perf_counter() - t0:.1f} s")
    return 0


def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """Whether ``--checkpoint`` names a single weights file (converted on the fly) rather than a folder."""
    p = Path(path)
    return p.is_file() and p.suffix in FILE_SUFFIXES
