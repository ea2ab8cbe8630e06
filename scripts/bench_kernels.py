"""Benchmark the Boracchi–Foi kernel bank against a one-kernel-at-a-time Python loop.

Both draw the same random numbers from the same per-kernel generators, so the loop's kernels
must equal the bank's (up to float32 rounding): the script checks that too.

    python scripts/bench_kernels.py                      # 100k kernels, 2 workers (~20 s)
    python scripts/bench_kernels.py --count 20000 --single-count 0

Run from the repository root with the package installed (``pip install -e .``) or with
``PYTHONPATH=.``.
"""

from __future__ import annotations

import argparse
import cmath
import math
import sys
import time

import numpy as np

from blurforge.kernels import (
    bank_summary,
    generate_bank,
    kernel_id,
    sample_shape_params,
    sample_trajectory_params,
    sample_walk_draws,
)
from blurforge.seeding import seed_for

TARGET_COUNT, TARGET_SECONDS = 100_000, 60.0


def loop_kernel(index: int, seed: int, size: int, length_min: float, length_max: float, num_steps: int = 2000,
                max_attempts: int = 100) -> tuple[np.ndarray, int]:
    """The same model written straightforwardly: one kernel, a Python loop over the time steps,
    a Python loop over the samples for the bilinear splat, reject-and-resample.
    Returns the ``(size, size)`` float32 kernel and its number of resamples."""
    rng = np.random.default_rng(seed_for(seed, kernel_id(index)))
    centre = (size - 1) / 2
    for attempt in range(max_attempts):
        if attempt == 0:
            params = sample_trajectory_params(rng, length_min, length_max)
            length = params["length"]
        else:
            params = sample_shape_params(rng)
        normals, uniforms = sample_walk_draws(rng, num_steps)
        nr, ni = normals.tolist()
        u_shake, u_angle = uniforms.tolist()
        anxiety, step = params["anxiety"], length / (num_steps - 1)
        p_shake = params["freq_big_shakes"] * anxiety
        # createTrajectory.m
        v = cmath.exp(1j * math.radians(params["angle"])) * (anxiety if anxiety > 0 else 1.0)
        x = [0j] * num_steps
        for t in range(num_steps - 1):
            shake = 2 * v * cmath.exp(1j * (math.pi + (u_angle[t] - 0.5))) if u_shake[t] < p_shake else 0
            gaussian = params["gaussian_term"] * complex(nr[t], ni[t])
            v = v + shake + anxiety * (gaussian - params["centripetal"] * x[t]) * step
            v = v / abs(v) * step if length > 0 else 0j
            x[t + 1] = x[t] + v
        # centre on the centroid, reject if it leaves the window
        mean = sum(x) / num_steps
        x = [p - mean + complex(centre, centre) for p in x]
        if not all(0 <= p.real < size - 1 and 0 <= p.imag < size - 1 for p in x):
            continue
        # createPSFs.m: bilinear splat
        psf = np.zeros((size, size))
        for p in x:
            c0, r0 = int(p.real), int(p.imag)
            fc, fr = p.real - c0, p.imag - r0
            psf[r0, c0] += (1 - fc) * (1 - fr)
            psf[r0, c0 + 1] += fc * (1 - fr)
            psf[r0 + 1, c0] += (1 - fc) * fr
            psf[r0 + 1, c0 + 1] += fc * fr
        return (psf / psf.sum()).astype(np.float32), attempt
    raise RuntimeError(f"kernel {index} did not fit in {max_attempts} attempts")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="kernels for the vectorised bank (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the vectorised bank (default 2)")
    parser.add_argument("--loop-count", type=int, default=200, help="kernels for the Python loop (default 200)")
    parser.add_argument("--single-count", type=int, default=10_000,
                        help="kernels for a workers=1 run, the per-core comparison (default 10000; 0 skips it)")
    parser.add_argument("--size", type=int, default=63)
    parser.add_argument("--length-min", type=float, default=1.0)
    parser.add_argument("--length-max", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setting = dict(size=args.size, length_min=args.length_min, length_max=args.length_max)

    rows = []
    start = time.perf_counter()
    bank = generate_bank(args.count, args.seed, workers=args.workers, **setting)
    rows.append((f"vectorised, workers={args.workers}", args.count, time.perf_counter() - start))
    if args.single_count:
        start = time.perf_counter()
        generate_bank(args.single_count, args.seed, workers=1, progress=False, **setting)
        rows.append(("vectorised, workers=1", args.single_count, time.perf_counter() - start))
    start = time.perf_counter()
    looped = [loop_kernel(i, args.seed, **setting) for i in range(args.loop_count)]
    rows.append(("python loop, 1 kernel at a time", args.loop_count, time.perf_counter() - start))

    print(f"\nBoracchi–Foi kernels {args.size}x{args.size}, L ~ U[{args.length_min:g}, {args.length_max:g}], "
          "2000 steps")
    print(f"{'method':<34}{'kernels':>10}{'seconds':>10}{'kernels/s':>12}")
    for method, n, seconds in rows:
        print(f"{method:<34}{n:>10}{seconds:>10.2f}{n / seconds:>12.1f}")
    loop_rate = rows[-1][1] / rows[-1][2]
    for method, n, seconds in rows[:-1]:
        print(f"speed-up of {method} over the loop: {n / seconds / loop_rate:.1f}x")

    # Same draws, same model: the kernels agree up to rounding, which a few long, shaky walks
    # amplify (the walk is chaotic over 2000 steps), so compare relative to each kernel's peak.
    compared = min(args.loop_count, args.count)
    stored = bank.column("kernel").slice(0, compared).to_numpy(zero_copy_only=False)
    relative = np.array([np.abs(k - np.asarray(s).reshape(k.shape)).max() / k.max()
                         for (k, _), s in zip(looped, stored)])
    same_resamples = np.array([r for _, r in looped[:compared]]) == bank.column("resamples").to_numpy()[:compared]
    agree = same_resamples & (relative < 1e-3)
    print(f"loop vs bank, first {compared} kernels: {agree.sum()} agree (max |difference| / peak = "
          f"{relative.max(initial=0):.1e}, same resamples for {same_resamples.sum()})")
    summary = bank_summary(bank)
    print(f"rejection rate {summary['rejection_rate']:.3f} "
          f"({summary['total_resamples']} resamples for {summary['count']} kernels)")

    rate = args.count / rows[0][2]
    projected = TARGET_COUNT / rate
    met = projected < TARGET_SECONDS
    print(f"target {TARGET_COUNT} kernels in < {TARGET_SECONDS:.0f} s with workers={args.workers}: "
          f"{'met' if met else 'NOT met'} "
          f"({'measured' if args.count == TARGET_COUNT else 'projected'} {projected:.1f} s)")
    return 0 if agree.mean() >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
