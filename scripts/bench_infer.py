"""Benchmark ``deblurdiff infer``: seconds per image and peak memory per sampler, size and dtype.

    python scripts/bench_infer.py                                   # full SD-2.1 size, random weights, CUDA
    python scripts/bench_infer.py --preset tiny --device cpu --sizes 64x64,128x72   # CPU smoke run
    python scripts/bench_infer.py --preset tiny --device cpu --per-step --sizes 300x200,600x400

``--per-step`` measures the cost of one denoising step as a function of image size: each size is
run with ddim-1 and ddim-``1+K`` (K = ``--per-step-extra``, default 4) and the difference divided by K
(VAE encode/decode and colour fix cancel out), untiled. The baseline is the first size: the table
gives each size's pixel ratio and time ratio against it (linear cost: the two ratios are equal).

The full run builds DeblurDiff at SD 2.1-base size (VAE, UNet, ControlNet, paper-size LKPN) with
seeded *random* weights — timings do not depend on the weights and nothing is downloaded — and
runs the whole inference pipeline (pad, tiled encode, sampling with the kernels re-estimated every
step, tiled decode, colour fix) once per configuration after one warm-up run. Sizes above
``--tile-size`` are tiled exactly as ``deblurdiff infer`` does. Each row is compared with ddpm-50
(the paper's sampler) at the same size and dtype: the ratio is the baseline in the same run.
Peak memory is ``torch.cuda.max_memory_allocated`` (CUDA only). The paper reports 46 s and 7.8 GB
per 512×512 image, ~65 s for 1280×720 in fp32.
"""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_CONFIGS = "ddpm-50,ddim-20,dpmsolver-10"


def sd21_random_model(seed: int = 0):
    """DeblurDiff at SD 2.1-base size with seeded random weights (no files needed)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from deblurdiff.model import DeblurDiff, DeblurDiffConfig
    from deblurdiff.presets import default_lkpn_config, tiny_scheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
        )
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        )
        emb = torch.randn(1, 77, 1024)
    config = DeblurDiffConfig(preset="sd21-base", seed=seed, lkpn=default_lkpn_config("sd21-base", 1024))
    return DeblurDiff(config, vae=vae.eval(), unet=unet.eval(), empty_text_emb=emb, scheduler=tiny_scheduler())


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        out.append((int(w), int(h)))
    return out


def parse_configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, steps = item.rsplit("-", 1)
        out.append((name, int(steps)))
    return out


def per_step(args) -> int:
    """--per-step: seconds per denoising step at each size; ratios against the first size."""
    import numpy as np
    import torch

    from deblurdiff.infer import Deblurrer, InferSettings, prepare_model, resolve_device
    from deblurdiff.presets import build_model

    device = resolve_device(args.device)
    if args.preset == "sd21-base" and device.type != "cuda":
        print("bench_infer --per-step: sd21-base needs a CUDA GPU — nothing measured; use --preset tiny on a CPU")
        return 0
    print(f"plan: preset {args.preset}, per-step cost at {args.sizes} on {device}, fp32, untiled, "
          f"ddim-1 vs ddim-{1 + args.per_step_extra}, median of {max(args.repeats, 3)} after a warm-up; "
          f"{torch.get_num_threads()} CPU thread(s)")
    model = prepare_model(sd21_random_model() if args.preset == "sd21-base" else build_model("tiny", seed=0),
                          device, torch.float32)
    rng = np.random.default_rng(0)
    rows = []
    for w, h in parse_sizes(args.sizes):
        img = rng.random((h, w, 3), dtype=np.float32)
        times = {}
        for steps in (1, 1 + args.per_step_extra):
            run = Deblurrer(model, InferSettings(sampler="ddim", steps=steps, tile_size=None, color_fix="none"))
            run([img], ["warm-up"])
            samples = []
            for _ in range(max(args.repeats, 3)):
                t0 = time.perf_counter()
                run([img], ["bench"])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - t0)
            times[steps] = float(np.median(samples))
        step_s = (times[1 + args.per_step_extra] - times[1]) / args.per_step_extra
        rows.append((w, h, times[1] - step_s, step_s))
        print(f"  {w}x{h}: ddim-1 {times[1]:.3f} s, ddim-{1 + args.per_step_extra} "
              f"{times[1 + args.per_step_extra]:.3f} s", file=sys.stderr)
    w0, h0, _, s0 = rows[0]
    print(f"{'size':<11}{'pixels':>10}{'s/step':>10}{'once s':>10}{'x pixels':>10}{'x s/step':>10}")
    for w, h, once, step_s in rows:
        print(f"{f'{w}x{h}':<11}{w * h:>10}{step_s:>10.3f}{once:>10.3f}{w * h / (w0 * h0):>10.2f}{step_s / s0:>10.2f}")
    print(f"bench_infer: seconds per denoising step of preset {args.preset}; 'once s' = encode, decode and the "
          f"rest of one image; ratios against {w0}x{h0}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["sd21-base", "tiny"], default="sd21-base",
                   help="sd21-base: full size, random weights (GPU); tiny: the test preset (smoke run)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--sizes", default="512x512,1280x720", help="WxH list")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="sampler-steps list; the first is the baseline")
    p.add_argument("--dtypes", default="bf16,fp32", help="list of fp32, bf16, fp16")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--tile-overlap", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (median)")
    p.add_argument("--per-step", action="store_true",
                   help="seconds per denoising step against image size (ddim-1 vs ddim-1+K, untiled, fp32)")
    p.add_argument("--per-step-extra", type=int, default=4, metavar="K", help="extra steps of --per-step")
    args = p.parse_args(argv)
    if args.per_step:
        return per_step(args)

    import torch

    sizes, configs, dtypes = parse_sizes(args.sizes), parse_configs(args.configs), args.dtypes.split(",")
    plan = (f"plan: preset {args.preset}; sizes {args.sizes}; samplers {args.configs}; dtypes {args.dtypes}; "
            f"tiles {args.tile_size}/{args.tile_overlap} px; {args.repeats} timed run(s) after a warm-up")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" or (args.device == "auto" and args.preset == "sd21-base"):
        if not cuda:
            print(plan)
            print("bench_infer: needs a CUDA GPU for this run — nothing measured. "
                  "For a CPU smoke run: --preset tiny --device cpu --sizes 64x64,128x72")
            return 0
    device = torch.device("cuda" if (args.device != "cpu" and cuda) else "cpu")
    print(plan + f"; device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")

    import numpy as np

    from deblurdiff.infer import Deblurrer, InferSettings, prepare_model, resolve_dtype
    from deblurdiff.presets import build_model
    from deblurdiff.tiling import n_tiles

    base = sd21_random_model() if args.preset == "sd21-base" else build_model("tiny", seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for dtype_name in dtypes:
        dtype, note = resolve_dtype(dtype_name, device)
        if note:
            print(f"note: {note}")
        model = prepare_model(base, device, dtype)
        for w, h in sizes:
            img = rng.random((h, w, 3), dtype=np.float32)
            baseline = None
            for name, steps in configs:
                settings = InferSettings(sampler=name, steps=steps, seed=0, tile_size=args.tile_size,
                                         tile_overlap=args.tile_overlap, color_fix="adain")
                run = Deblurrer(model, settings)
                run([img], ["warm-up"])  # warm-up (kernels, allocator)
                times = []
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run([img], ["bench"])
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                sec = float(np.median(times))
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                baseline = sec if baseline is None else baseline
                rows.append((f"{w}x{h}", dtype_name, f"{name}-{steps}", n_tiles(h, w, args.tile_size, args.tile_overlap),
                             sec, peak, sec / baseline))
                print(f"  {w}x{h} {dtype_name} {name}-{steps}: {sec:.2f} s", file=sys.stderr)
        base = model.to(torch.float32)

    header = f"{'size':<10}{'dtype':<6}{'sampler':<14}{'tiles':>6}{'s/image':>10}{'peak GiB':>10}{'vs ddpm-50':>12}"
    print(header)
    for size, dt, cfg, tiles, sec, peak, ratio in rows:
        peak_s = f"{peak:.2f}" if peak is not None else "n/a"
        print(f"{size:<10}{dt:<6}{cfg:<14}{tiles:>6}{sec:>10.3f}{peak_s:>10}{ratio:>11.2f}x")
    print(f"bench_infer: {len(rows)} configurations on {device}; ratio = seconds / seconds of "
          f"{configs[0][0]}-{configs[0][1]} at the same size and dtype")
    return 0


if __name__ == "__main__":
    sys.exit(main())
