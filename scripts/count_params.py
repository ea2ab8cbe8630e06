"""Print parameter counts of DeblurDiff's parts: paper-size LKPN, full-size SD 2.1-base parts, tiny preset.

Full-size parts are built from their configs on the meta device (no weights, no memory, no
download); the tiny preset is built for real. The paper reports an LKPN of ~145M parameters.

    python scripts/count_params.py      # after `pip install -e .[model]`, or with PYTHONPATH=.
"""

from __future__ import annotations

import argparse

PAPER_LKPN = 145e6

# stabilityai/stable-diffusion-2-1-base unet/config.json and vae/config.json, architecture fields only.
SD21_UNET = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)
SD21_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from deblurdiff.lkpn import LKPN
    from deblurdiff.presets import build_model, default_lkpn_config

    rows: list[tuple[str, int, str]] = []
    with torch.device("meta"):
        lkpn21 = LKPN(**default_lkpn_config("sd21-base", 1024))
        lkpn15 = LKPN(**default_lkpn_config("sd15", 768))
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_channels=8, conditioning_embedding_out_channels=(320,), load_weights_from_unet=False
        )
    for name, lkpn in (("cross_attention_dim=1024 (SD 2.1)", lkpn21), ("cross_attention_dim=768 (SD 1.5)", lkpn15)):
        rows.append((f"LKPN paper size, {name}", count(lkpn), f"{count(lkpn) / PAPER_LKPN:.3f} x paper's ~145M"))
    rows.append(("SD 2.1-base UNet (frozen)", count(unet), ""))
    rows.append(("SD 2.1-base VAE (frozen)", count(vae), ""))
    rows.append(("ControlNet from SD 2.1-base UNet, cond 8 ch", count(controlnet), ""))
    rows.append(("trainable at paper size (ControlNet + LKPN)", count(controlnet) + count(lkpn21), ""))

    tiny = build_model("tiny")
    for name in ("vae", "unet", "controlnet", "lkpn"):
        rows.append((f"tiny {name}", count(getattr(tiny, name)), ""))
    rows.append(("tiny trainable (ControlNet + LKPN)", sum(p.numel() for p in tiny.trainable_parameters()), ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'part':<{width}}  {'parameters':>13}  note")
    for name, n, note in rows:
        print(f"{name:<{width}}  {n:>13,}  {note}")
    print(f"{len(rows)} parts counted; LKPN paper size {count(lkpn21) / 1e6:.1f}M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
