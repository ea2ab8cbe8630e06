"""Benchmark EAC forward+backward: unfold reference vs PyTorch loop vs CUDA extension.

    python scripts/bench_eac.py                      # CUDA if available, else CPU
    python scripts/bench_eac.py --device cpu --repeats 3

For each shape and dtype it times one forward + backward (both gradients) and prints, per
implementation: time, speed-up vs the unfold reference, peak extra memory (CUDA only; measured
with torch.cuda.max_memory_allocated above the inputs) and its ratio to unfold's, the same ratio
without the x/kernels gradients ("wksp/unf": scratch memory only), bytes saved for backward (any
device, via saved_tensors_hooks), and the achieved bandwidth against the minimal traffic
(read x, kernels twice; write out; read grad_out; write grad_x, grad_kernels) as a fraction of
the GPU's peak. Targets for the extension in bf16: >= 3x faster, <= 1/4 of unfold's peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Known peak DRAM bandwidths (bytes/s), matched by substring of the device name, most specific first.
PEAK_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB
    ("L40S", 0.864e12),
    ("RTX 4090", 1.008e12),
    ("A10", 0.6e12),
    ("V100", 0.9e12),
    ("T4", 0.32e12),
]

SHAPES = [(16, 4, 64, 64), (4, 4, 128, 128), (1, 4, 256, 256)]


def peak_bandwidth(torch, device) -> float | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    for key, bw in PEAK_BANDWIDTH:
        if key in props.name:
            return bw
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def minimal_bytes(x, kernels, out_dtype_size: int) -> int:
    """Compulsory DRAM traffic of forward + backward computing both gradients."""
    xb, kb = x.numel() * x.element_size(), kernels.numel() * kernels.element_size()
    ob = x.numel() * out_dtype_size
    return 2 * xb + 2 * kb + ob + ob + xb + kb  # reads x,K (fwd, bwd); out; grad_out; gx; gk


def saved_bytes(torch, fn, x, kernels) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, kernels)
    return sum(sizes)


def time_fwd_bwd(torch, fn, x, kernels, grad, warmup: int, repeats: int):
    """Median ms of one forward+backward; peak extra CUDA bytes with and without the gradients
    (None on CPU)."""

    def step():
        x.grad = kernels.grad = None
        fn(x, kernels).backward(grad)

    for _ in range(warmup):
        step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        x.grad = kernels.grad = None
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        grads = sum(t.grad.numel() * t.grad.element_size() for t in (x, kernels))
        peak = (peak, peak - grads)  # with / without the two gradients every method must produce
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), peak
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--k", type=int, default=5, help="kernel size (odd), default 5")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, fp16, bf16")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (20 GPU / 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (5 GPU / 1 CPU)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from deblurdiff.ops import _cuda
    from deblurdiff.ops.eac import eac, eac_reference

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    repeats = args.repeats or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    try:
        wanted = [dtypes[d.strip()] for d in args.dtypes.split(",")]
    except KeyError as exc:
        parser.error(f"--dtypes: unknown dtype {exc}; use fp32, fp16, bf16")

    ext_reason = "needs a CUDA device"
    if on_gpu:
        ext_reason = None if _cuda.load_extension() is not None else _cuda.load_error()
    impls = {
        "unfold": eac_reference,
        "torch": lambda a, b: eac(a, b, backend="torch"),
        "cuda-ext": lambda a, b: eac(a, b, backend="cuda"),
    }
    bw_peak = peak_bandwidth(torch, device)
    dev_name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"EAC forward+backward, k={args.k}, device {dev_name}, median of {repeats} "
          f"(warm-up {warmup}); peak bandwidth "
          f"{f'{bw_peak / 1e12:.2f} TB/s' if bw_peak else 'n/a'}")
    if ext_reason:
        print(f"cuda-ext unavailable: {ext_reason.splitlines()[0][:200]}")
    header = (f"{'shape':>16} {'dtype':>5} {'impl':>8} {'ms':>9} {'speedup':>8} "
              f"{'peak MiB':>9} {'mem/unf':>8} {'wksp/unf':>8} {'saved MiB':>9} {'GB/s':>8} {'%peak':>6}")
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    n_rows = 0
    for b, c, h, w in SHAPES:
        for dtype in wanted:
            x = torch.randn(b, c, h, w, generator=gen).to(device, dtype).requires_grad_()
            kern = torch.randn(b, c * args.k**2, h, w, generator=gen).to(device, dtype)
            kern.requires_grad_()
            grad = torch.randn(b, c, h, w, generator=gen).to(device, dtype)
            traffic = minimal_bytes(x, kern, x.element_size())
            base_ms = base_peak = None
            for name, fn in impls.items():
                label = f"{b}x{c}x{h}x{w}"
                dname = {v: k for k, v in dtypes.items()}[dtype]
                if name == "cuda-ext" and ext_reason:
                    print(f"{label:>16} {dname:>5} {name:>8} {'unavailable':>9}")
                    continue
                ms, peak = time_fwd_bwd(torch, fn, x, kern, grad, warmup, repeats)
                saved = saved_bytes(torch, fn, x, kern)
                if name == "unfold":
                    base_ms, base_peak = ms, peak
                gbs = traffic / (ms * 1e-3) / 1e9
                peak_s, ratio, wksp = f"{'n/a':>9}", f"{'n/a':>8}", f"{'n/a':>8}"
                if peak is not None:
                    peak_s = f"{peak[0] / 2**20:9.1f}"
                    ratio = f"{peak[0] / max(base_peak[0], 1):8.2f}"
                    wksp = f"{peak[1] / max(base_peak[1], 1):8.2f}"
                frac = f"{100 * gbs * 1e9 / bw_peak:5.1f}%" if bw_peak else f"{'n/a':>6}"
                print(f"{label:>16} {dname:>5} {name:>8} {ms:9.3f} {base_ms / ms:7.2f}x "
                      f"{peak_s} {ratio} {wksp} {saved / 2**20:9.1f} {gbs:8.1f} {frac}")
                n_rows += 1
    print(f"done: {n_rows} measurements on {dev_name}"
          + ("" if on_gpu else " (CPU: GPU timings/peak memory not measured)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
