"""Per-core cost of every blurforge path and the core-hours of the paper's ~500k-pair mix, before/after.

    python scripts/bench_scale.py --baseline /path/to/old/checkout      # before/after in one run (~10 min)
    python scripts/bench_scale.py --baseline /path/to/old/checkout --quick   # smoke run (~2 min)
    python scripts/bench_scale.py --scaling                              # + 1/2 workers, local/Ray

The same inputs (1280×720 photos from scikit-image, a 63×63 kernel bank, 1280×720 clips in each of
``--codecs``, a folder of existing pairs) go through each path in one single-threaded worker process
(``cv2.setNumThreads(1)``, as in the process pool): ``synthesize`` uniform, ``synthesize --mode
nonuniform`` (classical segmenter), ``frames --window 5 --interpolate 15 --stride 5`` (REDS-like,
once per clip codec) and ``build-manifest --import`` (hashing). Its cost is the process's CPU time
per pair (all its threads: the video decoder's, the PNG writers'), after an untimed warm-up of every
path; the versions (this checkout and, with ``--baseline DIR``, the blurforge in DIR, each in its
own interpreter) alternate ``--repeats`` times and each keeps its lowest. CPU time is what a
core-hour budget counts, and it is far less disturbed by other load on a shared machine than wall
time. The mix: 100k uniform + 100k non-uniform + 200k REDS-like + 100k imports; core-hours = Σ pairs
× CPU s/pair / 3600, i.e. assuming the per-core cost holds when every core runs a worker
(``--scaling`` shows how 2 workers do). The clips are a noisy pan (``bench_frames.write_clip``);
the first codec of ``--codecs`` (default H.264, what cameras and phones record) prices the mix, and
the REDS-like row and the mix total are repeated for the others (MJPEG; FFV1, lossless, whose
decoding alone costs ~10× more).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_frames import CODECS  # noqa: E402 — the clip codecs and their writer
MIX = {"uniform": 100_000, "nonuniform": 100_000, "frames REDS-like": 200_000, "imports": 100_000}
REDS = "frames REDS-like"  # measured once per clip codec: "frames REDS-like h264", ...


def make_inputs(root: Path, images: int, width: int, height: int, kernel_size: int, frames: int,
                imports: int, codecs: tuple[str, ...] = ("h264",)) -> dict:
    import cv2
    import numpy as np
    from skimage import data

    from bench_frames import write_clip

    from blurforge.kernels import generate_bank, write_bank

    photos = root / "photos"
    photos.mkdir(parents=True)
    names = ("astronaut", "coffee", "chelsea", "rocket")
    for i in range(images):
        img = getattr(data, names[i % len(names)])()[..., :3]
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(photos / f"p{i:03d}.png"), np.roll(img, 7 * i, axis=1)[..., ::-1])
    bank = root / "kernels.parquet"
    write_bank(generate_bank(256, seed=0, size=kernel_size, progress=False, workers=1), bank)
    videos = {}
    for codec in codecs:  # one folder per codec, one clip in each
        videos[codec] = root / "videos" / codec
        videos[codec].mkdir(parents=True)
        write_clip(videos[codec] / "clip", width, height, frames, codec)
    pairs = root / "pairs" / "train" / "seq0"  # GoPro layout: SEQ/blur/*.png + SEQ/sharp/*.png
    for d in ("blur", "sharp"):
        (pairs / d).mkdir(parents=True)
    for i in range(imports):
        img = cv2.imread(str(photos / f"p{i % images:03d}.png"))
        cv2.imwrite(str(pairs / "sharp" / f"{i:06d}.png"), img)
        cv2.imwrite(str(pairs / "blur" / f"{i:06d}.png"), cv2.blur(img, (9, 1)))
    return {"photos": str(photos), "bank": str(bank), "videos": {c: str(v) for c, v in videos.items()},
            "pairs": str(root / "pairs")}


def measure(inputs: dict, out: Path) -> dict:
    """CPU seconds and pairs of each path, in this interpreter (run once per version)."""
    import cv2

    from blurforge.cli import main as cli
    from blurforge.frames import run_frames
    from blurforge.synthesize import run_synthesize

    cv2.setNumThreads(1)
    photos, bank = Path(inputs["photos"]), Path(inputs["bank"])
    videos = {codec: Path(v) for codec, v in inputs["videos"].items()}

    def uniform(o):
        return run_synthesize(photos, bank, o, seed=0, workers=1, progress=False).pairs

    def nonuniform(o):
        return run_synthesize(photos, bank, o, seed=0, workers=1, progress=False, mode="nonuniform",
                              segmenter="classical").pairs

    def reds(codec):
        return lambda o: run_frames(videos[codec], o, seed=0, window=5, interpolate=15, stride=5,
                                    progress=False).pairs

    def imports(o):
        o.mkdir(parents=True)
        assert cli(["build-manifest", "--import", f"bench={inputs['pairs']}", "--out", str(o / "m.parquet"),
                    "--quiet"]) == 0
        return inputs["n_imports"]

    paths = {"uniform": uniform, "nonuniform": nonuniform, **{f"{REDS} {c}": reds(c) for c in videos},
             "imports": imports}
    warm = out / "warm-up"  # imports, caches; a cheap frames job
    run_synthesize(photos, bank, warm / "u", seed=0, workers=1, progress=False)
    run_synthesize(photos, bank, warm / "n", seed=0, workers=1, progress=False, mode="nonuniform",
                   segmenter="classical")
    for codec, folder in videos.items():
        run_frames(folder, warm / f"f-{codec}", seed=0, window=3, interpolate=1, stride=20, progress=False)
    imports(warm / "i")
    result = {}
    for name, fn in paths.items():
        c, t = time.process_time(), time.perf_counter()
        pairs = fn(out / name.replace(" ", "-"))
        result[name] = {"pairs": pairs, "cpu": time.process_time() - c, "wall": time.perf_counter() - t}
    return result


def run_version(root: Path, inputs: dict, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench_scale as b; from pathlib import Path; "
            "print('RESULT ' + json.dumps(b.measure(json.loads(sys.argv[2]), Path(sys.argv[3]))))")
    out.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(inputs), str(out)],
                          env=env, cwd=out, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"measuring {root} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "stats" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def scaling(inputs: dict, root: Path, backends: list[str]) -> None:
    """This checkout's uniform synthesize with 1 and 2 workers, local and Ray: speed-up and identity."""
    from blurforge.synthesize import run_synthesize

    photos, bank = Path(inputs["photos"]), Path(inputs["bank"])
    run_synthesize(photos, bank, root / "warm", seed=0, workers=1, shard_size=2, progress=False)
    results, reference = [], None
    for backend in backends:
        if backend == "ray":
            try:
                from blurforge.shards import ensure_ray

                ensure_ray(None, 2)  # start the local cluster outside the timed region
            except ImportError as exc:
                print(f"ray: skipped ({exc})")
                continue
        for workers in (1, 2):
            out = root / f"{backend}-{workers}"
            t0 = time.perf_counter()
            s = run_synthesize(photos, bank, out, seed=0, workers=workers, shard_size=2, progress=False,
                               backend=backend)
            seconds = time.perf_counter() - t0
            digest = tree_digest(out)
            reference = reference or digest
            results.append((backend, workers, s.pairs, seconds, digest == reference))
    base = results[0][2] / results[0][3]
    print(f"\nuniform synthesize, {results[0][2]} pairs, shard size 2 (wall time; a 1-worker local run keeps "
          f"OpenCV's threads on every core)")
    print(f"{'backend':<8}{'workers':>8}{'pairs':>7}{'seconds':>9}{'pairs/s':>9}{'speed-up':>10}{'identical':>11}")
    for backend, workers, pairs, seconds, same in results:
        rate = pairs / seconds
        print(f"{backend:<8}{workers:>8}{pairs:>7}{seconds:>9.2f}{rate:>9.2f}{rate / base:>9.2f}x"
              f"{'yes' if same else 'NO':>11}")


def print_mix_table(best: dict[str, dict], versions: list[str], codecs: list[str]) -> dict[str, float]:
    """Per path: CPU s per pair, pairs/s per core and core-hours of its share of the mix, per version;
    the REDS-like share with the first codec's clip, then that row and the mix total with each other
    codec's clip. Returns the mix's core-hours per version (first codec)."""
    cells = [("s/pair", 14, "{:.3f}"), ("pairs/s/core", 19, "{:.2f}"), ("core-h", 13, "{:.1f}")]
    head = f"| {'path':<30} | {'mix pairs':>9} |" + "".join(
        f" {v + ' ' + name:>{w}} |" for v in versions for name, w, _ in cells)
    compare = "before" in versions
    head += f" {'speed-up':>8} |" if compare else ""
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")

    def cost(v: str, path: str) -> float:
        return best[v][path]["cpu"] / best[v][path]["pairs"]

    def line(label: str, n: int, per_pair: dict[str, float | None], hours: dict[str, float]) -> None:
        text = f"| {label:<30} | {n:>9,} |"
        for v in versions:
            c = per_pair[v]
            values = (c, None if c is None else 1 / c, hours[v])
            text += "".join(f" {'' if x is None else fmt.format(x):>{w}} |" for x, (_, w, fmt) in zip(values, cells))
        if compare:
            ratio = (per_pair["before"] / per_pair["after"]) if per_pair["after"] else hours["before"] / hours["after"]
            text += f" {ratio:>7.2f}x |"
        print(text)

    def mix_rows(codec: str, show_rest: bool) -> dict[str, float]:
        totals = dict.fromkeys(versions, 0.0)
        for path, n in MIX.items():
            key = f"{REDS} {codec}" if path == REDS else path
            per_pair = {v: cost(v, key) for v in versions}
            hours = {v: n * per_pair[v] / 3600 for v in versions}
            for v in versions:
                totals[v] += hours[v]
            if show_rest or path == REDS:
                line(f"{REDS} ({codec} clip)" if path == REDS else path, n, per_pair, hours)
        line(f"500k mix ({codec} clip)", sum(MIX.values()), dict.fromkeys(versions), totals)
        return totals

    totals = mix_rows(codecs[0], True)
    for codec in codecs[1:]:
        mix_rows(codec, False)
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--baseline", metavar="DIR", help="a checkout of the code to compare against (before)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 2 photos, an 11-frame clip (2 REDS-like pairs), 8 imports, the first codec only, one pass")
    ap.add_argument("--images", type=int, default=6, help="sharp photos (one uniform and one non-uniform pair each)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--kernel-size", type=int, default=63)
    ap.add_argument("--frames", type=int, default=51,
                    help="frames of each clip (REDS-like pairs: (frames - 1) // 5; REDS clips have 100)")
    ap.add_argument("--imports", type=int, default=24, help="pairs in the imported folder")
    ap.add_argument("--codecs", default="h264,mjpeg,ffv1",
                    help=f"clip codecs, comma-separated, from {', '.join(CODECS)}; the first one prices the mix "
                         "(h264: what cameras and phones record; ffv1: lossless, ~10x slower to decode)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating passes per version (lowest CPU kept)")
    ap.add_argument("--scaling", action="store_true", help="also time 1 and 2 workers, local and Ray")
    ap.add_argument("--backends", default="local,ray")
    args = ap.parse_args(argv)
    codecs = args.codecs.split(",")
    if args.quick:
        args.images, args.frames, args.imports, args.repeats, codecs = 2, 11, 8, 1, codecs[:1]
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        ap.error(f"--codecs: unknown {', '.join(unknown)} — choose from {', '.join(CODECS)}")
    sys.path.insert(0, str(REPO))

    versions = {"after": REPO}
    if args.baseline:
        versions = {"before": Path(args.baseline).resolve(), "after": REPO}
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        inputs = make_inputs(root / "in", args.images, args.width, args.height, args.kernel_size, args.frames,
                             args.imports, tuple(codecs))
        inputs["n_imports"] = args.imports
        load = os.getloadavg()[0]
        started = time.perf_counter()
        best: dict[str, dict] = {v: {} for v in versions}
        for rep in range(args.repeats):
            for name, code_root in versions.items():
                for path, r in run_version(code_root, inputs, root / f"{name}-{rep}").items():
                    if path not in best[name] or r["cpu"] < best[name][path]["cpu"]:
                        best[name][path] = r
        load = (load, os.getloadavg()[0])
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                          if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
            else platform.processor()
        print(f"\n{args.width}x{args.height}, {args.kernel_size}x{args.kernel_size} kernels, clips: "
              + "; ".join(f"{c} ({CODECS[c][1]}, {args.frames} frames)" for c in codecs)
              + f"; one single-threaded worker; CPU s per pair (all the process's threads), lowest of {args.repeats}; "
              f"machine: {cpu_model}, {os.cpu_count()} CPUs, load average {load[0]:.1f} -> {load[1]:.1f}; "
              f"measured in {time.perf_counter() - started:.0f} s")
        for v, root_dir in versions.items():
            print(f"  {v}: {root_dir}")
        totals = print_mix_table(best, list(versions), codecs)
        print(f"\nthe 500k mix ({codecs[0]} clips) ≈ {totals['after']:.0f} core-hours"
              + (f" (before: {totals['before']:.0f}, {totals['before'] / totals['after']:.2f}x)" if "before" in totals
                 else "") + f": hours ≈ {totals['after']:.0f} / (N nodes × C cores × efficiency)")
        if args.scaling:
            scaling(inputs, root / "scaling", args.backends.split(","))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
