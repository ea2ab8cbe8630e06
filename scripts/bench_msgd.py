"""Benchmark MSGD on a GPU: training samples/s at 256² crops and seconds per 1280×720 image.

    python scripts/bench_msgd.py                                   # msgd-base on CUDA (the lent GPU)
    python scripts/bench_msgd.py --preset msgd-tiny --device cpu --crop 64 --size 96x64 --batch-size 4   # smoke run

Both halves use seeded random weights (timings do not depend on them) and the project's own code
paths: ``MSGD.training_losses`` + backward + Adam step under autocast (what ``deblurdiff train``
runs per step), and :class:`deblurdiff.msgd_infer.MSGDDeblurrer` (padding, sampler, tiles above
``--tile-size``, sample averaging). Each row is compared with a baseline in the same run: the
plain icDPM (``guidance="none"``, the same UNet without the guidance module) at the same
precision, so the ratio is the guidance module's cost. Peak memory is
``torch.cuda.max_memory_allocated`` (CUDA only).
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def bench_train(model, crop: int, batch: int, dtype, device, steps: int) -> tuple[float, float | None]:
    """(samples/s, peak GiB) of training steps on random crops."""
    import torch

    model.train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    blurry = torch.rand(batch, 3, crop, crop, device=device)
    sharp = torch.rand(batch, 3, crop, crop, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model.training_losses(blurry, sharp, gen, step=10**6)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (kernels, allocator)
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps * batch / (time.perf_counter() - t0)
    return rate, peak(device)


def bench_infer(model, size: tuple[int, int], settings, device, dtype, repeats: int) -> tuple[float, float | None]:
    """(seconds per image, peak GiB) of MSGDDeblurrer on one random image."""
    import numpy as np
    import torch

    from deblurdiff.msgd_infer import MSGDDeblurrer

    model = model.eval().to(device=device, dtype=dtype)
    w, h = size
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    run = MSGDDeblurrer(model, settings)
    run([img], ["warm-up"])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run([img], ["bench"])
        sync(device)
        times.append(time.perf_counter() - t0)
    model.to(torch.float32)
    return float(np.median(times)), peak(device)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="msgd-base", help="MSGD preset (default msgd-base)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--crop", type=int, default=256, help="training crop side (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (default 32 per GPU)")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps (default 10)")
    p.add_argument("--size", default="1280x720", help="inference image WxH (default 1280x720)")
    p.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpmsolver (default ddim)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--samples", type=int, default=1, help="samples averaged per image (default 1)")
    p.add_argument("--tile-size", type=int, default=0, help="tile side in pixels, 0 = untiled (default 0)")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma list of fp32, bf16, fp16 (default bf16,fp32)")
    p.add_argument("--repeats", type=int, default=3, help="timed inference runs (median) (default 3)")
    args = p.parse_args(argv)

    import torch

    from deblurdiff.infer import InferSettings
    from deblurdiff.msgd import build_msgd

    cuda = torch.cuda.is_available()
    plan = (f"plan: {args.preset}; training {args.batch_size}x{args.crop}² crops, {args.train_steps} steps; "
            f"inference {args.size} {args.sampler}-{args.steps}, {args.samples} sample(s), "
            f"tiles {args.tile_size or 'off'}; dtypes {args.dtypes}; baseline: the same preset without guidance")
    if (args.device == "cuda" or (args.device == "auto" and args.preset == "msgd-base")) and not cuda:
        print(plan)
        print("bench_msgd: needs a CUDA GPU for this run — nothing measured. CPU smoke run: "
              "--preset msgd-tiny --device cpu --crop 64 --size 96x64 --batch-size 4")
        return 0
    device = torch.device("cuda" if (args.device != "cpu" and cuda) else "cpu")
    print(plan + f"; device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    settings = InferSettings(sampler=args.sampler, steps=args.steps, tile_size=args.tile_size or None,
                             tile_overlap=min(128, (args.tile_size or 256) // 4), color_fix="none",
                             samples=args.samples)
    rows = []
    for name in args.dtypes.split(","):
        dtype = dtypes[name]
        for guidance in ("none", "multiscale"):
            model = build_msgd(args.preset, guidance=guidance)
            rate, train_peak = bench_train(model, args.crop, args.batch_size, dtype, device, args.train_steps)
            sec, infer_peak = bench_infer(model, parse_size(args.size), settings, device, dtype, args.repeats)
            rows.append((name, guidance, sum(x.numel() for x in model.parameters()), rate, train_peak, sec, infer_peak))
            print(f"  {name} guidance={guidance}: {rate:.1f} samples/s, {sec:.2f} s/image", file=sys.stderr)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def gib(v):
        return f"{v:.2f}" if v is not None else "n/a"

    print(f"{'dtype':<6}{'guidance':<12}{'params':>12}{'train smp/s':>13}{'vs plain':>9}{'train GiB':>10}"
          f"{'s/image':>9}{'vs plain':>9}{'infer GiB':>10}")
    for name, guidance, n, rate, tp, sec, ip in rows:
        base = next(r for r in rows if r[0] == name and r[1] == "none")
        print(f"{name:<6}{guidance:<12}{n:>12,}{rate:>13.1f}{rate / base[3]:>8.2f}x{gib(tp):>10}"
              f"{sec:>9.3f}{sec / base[5]:>8.2f}x{gib(ip):>10}")
    print(f"bench_msgd: {args.preset} on {device}; training at {args.crop}² crops (batch {args.batch_size}), "
          f"inference at {args.size}; 'vs plain' = the same preset without the guidance module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
