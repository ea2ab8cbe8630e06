"""``blurforge synthesize``: paired blurry/sharp images from sharp photos and a kernel bank.

Per sample (key ``PREFIX/REL_PATH/J``):

1. ``seed = seed_for(run_seed, key)``; parameters are drawn from ``default_rng([seed, 0])``
   (kernel id, realism settings), the rendering's own randomness (noise) from
   ``default_rng([seed, 1])`` — so a row's ``seed`` and ``params`` re-render it exactly
   (``rerender``), whichever worker drew it and in whatever order.
2. The sharp image is decoded (orientation, alpha, grey and bit depth normalised as
   ``blurforge.imageio.read_image`` documents) and stored losslessly as PNG at its own bit depth,
   so the stored sharp image is exactly the one that was blurred.
3. The blurry image is rendered in linear light (``blurforge.blur.render_uniform``) and stored as
   PNG (or JPEG when ``--jpeg-quality`` is given).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from blurforge.manifest import sha256_file
from blurforge.seeding import seed_for
from blurforge.shards import ShardTask, check_run_config, finish_shard, make_tasks, run_shards, RunSummary

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

_BANKS: dict[str, object] = {}  # per-process cache: kernel bank path -> KernelBank


def _bank(path: str):
    from blurforge.kernels import read_bank

    if path not in _BANKS:
        _BANKS[path] = read_bank(path)
    return _BANKS[path]


def sample_name(key: str) -> str:
    """A file-system-safe, collision-free file stem for ``key``."""
    import hashlib

    return f"{_SAFE.sub('_', key).strip('_')[:80]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def plan_uniform(sharp_dir: Path, pairs_per_image: int, key_prefix: str) -> list[tuple[str, str]]:
    """Work items ``(key, relative sharp path)``, sorted, one per (image, j)."""
    from blurforge.imageio import find_images

    items = []
    for p in find_images(sharp_dir):
        rel = p.relative_to(sharp_dir).as_posix()
        for j in range(pairs_per_image):
            items.append((f"{key_prefix}/{rel}/{j}", rel))
    return items


def sample_uniform_params(rng: np.random.Generator, bank, config: dict) -> dict:
    """Draw a sample's parameters: which kernel, and the realism settings."""
    from blurforge.blur import sample_realism

    i = int(rng.integers(len(bank)))
    kernel_id = bank.ids[i]
    return {
        "kernel_id": kernel_id,
        "kernel_length": float(bank.table.column("length")[i].as_py()),
        "kernel_bank_sha256": config["kernel_bank_sha256"],
        "realism": sample_realism(
            rng, noise=config["noise"], saturation=config["saturation"], jpeg_quality=config["jpeg_quality"]
        ),
    }


def render_blurry(sharp_srgb: np.ndarray, kernel: np.ndarray, params: dict, seed: int) -> np.ndarray:
    """The blurry sRGB image of a sample, from its sharp image, kernel, params and seed (pure)."""
    from blurforge.blur import render_uniform

    return render_uniform(sharp_srgb, kernel, params["realism"], np.random.default_rng([seed, 1]))


def synthesize_worker(task: ShardTask) -> dict:
    """Pure shard worker: reads sharp images, renders pairs, writes images then the shard tables."""
    from blurforge.imageio import ImageReadError, encode_image, read_image, sha256_bytes, write_bytes_atomic

    cfg = task.config
    out = Path(task.out)
    bank = _bank(cfg["kernels"])
    ksize = bank.size
    sharp_root = Path(cfg["sharp"])
    rows: list[dict] = []
    errors: list[dict] = []
    timing = {"decode_s": 0.0, "blur_s": 0.0, "encode_s": 0.0}
    decoded: dict[str, tuple] = {}  # a shard holds all pairs of an image together: decode once

    for key, rel in task.items:
        src = sharp_root / rel
        stage = "read"
        try:
            t = time.perf_counter()
            if rel not in decoded:
                decoded.clear()
                decoded[rel] = read_image(src)
            sharp, info = decoded[rel]
            h, w = sharp.shape[:2]
            if h < ksize or w < ksize:
                raise ImageReadError(
                    f"{src}: image {w}x{h} is smaller than the {ksize}x{ksize} kernels — "
                    "use larger images or a kernel bank with a smaller --size"
                )
            timing["decode_s"] += time.perf_counter() - t

            stage = "render"
            t = time.perf_counter()
            seed = seed_for(cfg["seed"], key)
            params = sample_uniform_params(np.random.default_rng([seed, 0]), bank, cfg)
            params.update(input=rel, bit_depth=info["bit_depth"], conversions=info["conversions"])
            blurry = render_blurry(sharp, bank.kernel(params["kernel_id"]), params, seed)
            timing["blur_s"] += time.perf_counter() - t

            stage = "encode"
            t = time.perf_counter()
            jpeg = params["realism"].get("jpeg_quality")
            blur_bytes = encode_image(blurry, bit_depth=8 if jpeg else info["bit_depth"], fmt="jpg" if jpeg else "png",
                                      jpeg_quality=jpeg)
            sharp_bytes = encode_image(sharp, bit_depth=info["bit_depth"], fmt="png")
            name = sample_name(key)
            blur_rel = f"blur/{task.shard}/{name}.{'jpg' if jpeg else 'png'}"
            sharp_rel = f"sharp/{task.shard}/{name}.png"
            stage = "write"
            write_bytes_atomic(out / blur_rel, blur_bytes)
            write_bytes_atomic(out / sharp_rel, sharp_bytes)
            timing["encode_s"] += time.perf_counter() - t
            rows.append(
                {
                    "key": key,
                    "blur_path": blur_rel,
                    "sharp_path": sharp_rel,
                    "split": "train",
                    "source": "uniform",
                    "width": w,
                    "height": h,
                    "seed": seed,
                    "params": json.dumps(params, sort_keys=True),
                    "blur_sha256": sha256_bytes(blur_bytes),
                    "sharp_sha256": sha256_bytes(sharp_bytes),
                }
            )
        except ImageReadError as exc:
            errors.append({"input": str(src), "stage": stage, "error": str(exc), "key": key})
        except Exception as exc:  # noqa: BLE001 — any per-sample failure is recorded, the run goes on
            errors.append({"input": str(src), "stage": stage, "error": f"{src}: {type(exc).__name__}: {exc}",
                           "key": key})
    return finish_shard(task, rows, errors, {k: round(v, 4) for k, v in timing.items()})


def rerender(row: dict, bank, root: Path) -> np.ndarray:
    """Re-render a uniform row's blurry image (sRGB float32) from its seed, params and stored sharp image."""
    from blurforge.imageio import read_image

    params = json.loads(row["params"])
    sharp, _ = read_image(root / row["sharp_path"])
    return render_blurry(sharp, bank.kernel(params["kernel_id"]), params, int(row["seed"]))


def run_synthesize(
    sharp: str | Path,
    kernels: str | Path,
    out: str | Path,
    seed: int,
    mode: str = "uniform",
    workers: int = 1,
    noise: str = "none",
    saturation: bool = False,
    jpeg_quality: int | None = None,
    pairs_per_image: int = 1,
    shard_size: int = 64,
    key_prefix: str | None = None,
    progress: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
    retries: int = 2,
) -> RunSummary:
    """Plan, run (resuming finished shards) and summarise a synthesize job."""
    if mode != "uniform":
        raise NotImplementedError(
            f"--mode {mode}: not implemented yet — only 'uniform' synthesis exists in this version"
        )
    sharp, kernels, out = Path(sharp), Path(kernels), Path(out)
    if not sharp.is_dir():
        raise FileNotFoundError(f"--sharp {sharp}: not a directory of sharp images")
    if not kernels.is_file():
        raise FileNotFoundError(f"--kernels {kernels}: no such file — make one with 'blurforge kernels'")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if pairs_per_image < 1:
        raise ValueError(f"--pairs-per-image must be at least 1, got {pairs_per_image}")
    _bank(str(kernels.resolve()))  # fail early, in the driver, on a bad bank
    config = {
        "mode": mode,
        "sharp": str(sharp.resolve()),
        "kernels": str(kernels.resolve()),
        "kernel_bank_sha256": sha256_file(kernels),
        "seed": int(seed),
        "noise": noise,
        "saturation": bool(saturation),
        "jpeg_quality": jpeg_quality,
        "pairs_per_image": pairs_per_image,
        "shard_size": shard_size,
        "key_prefix": key_prefix or mode,
    }
    items = plan_uniform(sharp, pairs_per_image, config["key_prefix"])
    if not items:
        raise FileNotFoundError(f"--sharp {sharp}: no images found (looked for common image extensions)")
    out.mkdir(parents=True, exist_ok=True)
    check_run_config(out, config)
    tasks = make_tasks(items, shard_size, out, config)
    return run_shards(synthesize_worker, tasks, workers=workers, progress=progress, desc="synthesize",
                      backend=backend, ray_address=ray_address, retries=retries)


def summarize_timing(stats: Sequence[dict]) -> dict:
    keys = ("decode_s", "blur_s", "encode_s")
    return {k: sum(s.get(k, 0.0) for s in stats) for k in keys}
