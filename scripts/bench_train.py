"""Training throughput and peak memory of DeblurDiff: batch sizes × gradient checkpointing; and the
data loader's throughput at 1080p and 4K.

Loader rows (CPU, any machine): pairs/s of one worker (``PairCrops.__getitem__``: decode both PNGs,
crop 512×512 in their stored 8-bit samples, convert the crop) against the baseline that decodes
both full images to float and then crops, in the same run. The pairs are scikit-image photographs
upscaled with mild noise (PNG sizes like photographs': ~3.5 MB at 1080p, ~13 MB at 4K).

    python scripts/bench_train.py --loader-only            # loader rows only

Builds the model at full SD 2.1-base size with random weights from configs in-process (no
download, no weights needed) and times optimizer steps exactly as ``deblurdiff train`` takes them
(accelerate, frozen parts in the half dtype, autocast, fp32 trained weights, clipping, AdamW).
Prints a table with, per batch size, the ratio of checkpointing on vs off (the in-run baseline).

    python scripts/bench_train.py                         # CUDA: 512x512, bf16, batch 1 2 4 8
    python scripts/bench_train.py --device cpu --preset tiny --resolution 32 --steps 3   # smoke run

Without CUDA the full-size run is not attempted: the script prints what it would run and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time


def sd21_base_model(seed: int = 0):
    """DeblurDiff with SD 2.1-base-shaped frozen parts (random weights) and the paper's LKPN size."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from deblurdiff.model import DeblurDiff, DeblurDiffConfig
    from deblurdiff.presets import default_lkpn_config, tiny_scheduler

    torch.manual_seed(seed)
    vae = AutoencoderKL(  # stabilityai/stable-diffusion-2-1-base vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=768, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(  # unet/config.json of the same model
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
    )
    config = DeblurDiffConfig(preset="sd21-base", seed=seed, lkpn=default_lkpn_config("sd21-base", 1024))
    # SD 2.1-base's scheduler is the same 1000-step scaled-linear epsilon schedule as the tiny preset's
    return DeblurDiff(config, vae=vae, unet=unet, empty_text_emb=torch.randn(1, 77, 1024), scheduler=tiny_scheduler())


def bench_one(model, accelerator, batch: int, resolution: int, checkpointing: bool, steps: int, warmup: int) -> dict:
    import torch

    from deblurdiff.train import _loss_module_class, build_optimizer

    model.set_gradient_checkpointing(checkpointing)
    params = model.trainable_parameters()
    optimizer = build_optimizer(params, "adamw", 5e-5, 0.0)
    module, optimizer = accelerator.prepare(_loss_module_class()(model), optimizer)
    cuda = accelerator.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    blurry = torch.rand(batch, 3, resolution, resolution, generator=g).to(accelerator.device)
    sharp = torch.rand(batch, 3, resolution, resolution, generator=g).to(accelerator.device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        for i in range(warmup + steps):
            if i == warmup:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = module(blurry, sharp, g)["loss"]
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else _rss_peak_gib()
        return {"samples_per_s": batch * steps / dt, "peak_gib": peak, "s_per_step": dt / steps}
    except torch.OutOfMemoryError:
        return {"samples_per_s": float("nan"), "peak_gib": float("nan"), "s_per_step": float("nan"), "oom": True}
    finally:
        accelerator.free_memory()
        del optimizer, module
        for p in params:
            p.grad = None
        if cuda:
            torch.cuda.empty_cache()


def _rss_peak_gib() -> float:
    """CPU runs: the process's peak resident memory so far (never decreases between configurations)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def loader_pairs(root, sizes):
    """One blurry/sharp PNG pair per (name, (w, h)) under ``root``; returns a PairSet over them."""
    import cv2
    import numpy as np
    import pyarrow as pa
    from skimage import data

    from deblurdiff.data import PairList, PairSet

    rng = np.random.default_rng(0)
    rows = []
    for name, (w, h) in sizes.items():
        sharp = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        sharp = np.clip(sharp + rng.normal(0, 3, sharp.shape), 0, 255).astype(np.uint8)
        blur = cv2.GaussianBlur(sharp, (9, 9), 3)
        for kind, img in (("sharp", sharp), ("blur", blur)):
            cv2.imwrite(str(root / f"{name}_{kind}.png"), img[..., ::-1])
        rows.append({"key": name, "blur_path": f"{name}_blur.png", "sharp_path": f"{name}_sharp.png",
                     "width": w, "height": h, "manifest": 0})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("key", pa.string()), ("blur_path", pa.string()), ("sharp_path", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("manifest", pa.int32())]))
    return PairSet(PairList(table, [str(root)]), [str(root)], [len(rows)], 0, "pad", "train")


def bench_loader(crop: int = 512, repeats: int = 5) -> None:
    """Print pairs/s per worker of the loader vs decode-to-float-then-crop, at 1080p and 4K."""
    import tempfile
    import time
    from pathlib import Path

    from blurforge.imageio import read_image
    from deblurdiff.data import PairCrops, apply_crop, to_tensor

    sizes = {"1080p": (1920, 1080), "4K": (3840, 2160)}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = loader_pairs(Path(tmp), sizes)
        ds = PairCrops(pairs, crop, seed=0)

        def baseline(i):  # decode both full images to float, then crop
            pair, p = ds.params(i)
            blur, sharp = read_image(pair.blur)[0], read_image(pair.sharp)[0]
            return to_tensor(apply_crop(blur, p, crop)), to_tensor(apply_crop(sharp, p, crop))

        print(f"{'loader (1 worker)':<18} {'baseline pairs/s':>17} {'crop-first pairs/s':>19} {'speed-up':>9}")
        for i, name in enumerate(sizes):
            samples = [g for g in range(len(sizes) * repeats * 2) if ds.params(g)[0].key == name][:repeats]
            rates = []
            for fn in (baseline, ds.__getitem__):
                fn(samples[0])  # warm-up
                t0 = time.perf_counter()
                for g in samples:
                    fn(g)
                rates.append(len(samples) / (time.perf_counter() - t0))
            print(f"{name + f' PNG, {crop} crop':<18} {rates[0]:>17.2f} {rates[1]:>19.2f} {rates[1] / rates[0]:>9.2f}",
                  flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", choices=["sd21-base", "tiny"], default="sd21-base",
                   help="sd21-base: full size, random weights; tiny: the CPU test model")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="bf16")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--loader-only", action="store_true", help="only the data-loader rows (CPU)")
    args = p.parse_args(argv)

    bench_loader()
    if args.loader_only:
        return 0

    plan = (f"{args.preset} at {args.resolution}x{args.resolution}, {args.mixed_precision}, batch sizes "
            f"{args.batch_sizes}, gradient checkpointing off/on, {args.warmup}+{args.steps} steps each")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_train: would run {plan} — needs a CUDA GPU (none found); "
              "for a CPU smoke run: --device cpu --preset tiny --resolution 32")
        return 0

    from accelerate import Accelerator

    from deblurdiff.presets import build_model
    from deblurdiff.train import cast_frozen, half_dtype

    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    t0 = time.perf_counter()
    with torch.device(accelerator.device):
        model = sd21_base_model() if args.preset == "sd21-base" else build_model("tiny")
    cast_frozen(model, half_dtype(args.mixed_precision))
    model.to(accelerator.device).train()
    n_train = sum(p.numel() for p in model.trainable_parameters())
    print(f"bench_train: {plan} on {accelerator.device} "
          f"({torch.cuda.get_device_name() if accelerator.device.type == 'cuda' else 'cpu'}); "
          f"{n_train / 1e6:.1f}M trained parameters; built in {time.perf_counter() - t0:.1f} s")

    if accelerator.device.type != "cuda":
        print("(cpu: 'peak GiB' is the process's peak RSS so far, not per configuration)")
    print(f"{'batch':>5} {'ckpt':>5} {'samples/s':>10} {'s/step':>8} {'peak GiB':>9} {'speed vs off':>13} {'mem vs off':>11}")
    for b in args.batch_sizes:
        base = None
        for ckpt in (False, True):
            r = bench_one(model, accelerator, b, args.resolution, ckpt, args.steps, args.warmup)
            if base is None:
                base = r
            speed = r["samples_per_s"] / base["samples_per_s"]
            mem = r["peak_gib"] / base["peak_gib"]
            note = "  OOM" if r.get("oom") else ""
            print(f"{b:>5} {'on' if ckpt else 'off':>5} {r['samples_per_s']:>10.2f} {r['s_per_step']:>8.3f} "
                  f"{r['peak_gib']:>9.2f} {speed:>13.2f} {mem:>11.2f}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
