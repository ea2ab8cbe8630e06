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

``--mode nonuniform`` (``source = "nonuniform"``): the sharp image is segmented once per image
(``blurforge.segment``; the masks do not depend on the seed), each object gets its own kernel and
the background its own, and the layers are composited in linear light
(``blurforge.nonuniform``). ``params`` holds the background's ``kernel_id``, ``objects`` (each
with ``kernel_id``, ``kernel_length``, its full-resolution ``mask`` as COCO RLE, ``area`` and
compositing ``order``), ``composite`` (alpha shaping) and ``segmenter`` (backend, settings and
the resolution it worked at); the image is rendered from those decoded masks, so ``rerender``
reproduces it exactly without running the segmenter again.
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
from blurforge.storage import Location
from blurforge.shards import ShardTask, check_run_config, finish_shard, make_tasks, run_shards, RunSummary

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

_BANKS: dict[str, object] = {}  # per-process cache: kernel bank path -> KernelBank
_SEGMENTERS: dict[str, object] = {}  # per-process cache: segmenter settings -> Segmenter (SAM 2 loads once)
MODES = ("uniform", "nonuniform")


def _bank(path: str):
    from blurforge.kernels import read_bank

    if path not in _BANKS:
        _BANKS[path] = read_bank(path)
    return _BANKS[path]


def _segmenter(settings: dict):
    from blurforge.segment import make_segmenter

    key = json.dumps(settings, sort_keys=True)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = make_segmenter(**settings)
    return _SEGMENTERS[key]


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
    from blurforge.imageio import DEFAULT_PNG_LEVEL, ImageReadError, encode_image, read_image, sha256_bytes

    cfg = task.config
    out = Location(task.out)
    bank = _bank(cfg["kernels"])
    ksize = bank.size
    sharp_root = Path(cfg["sharp"])
    rows: list[dict] = []
    errors: list[dict] = []
    nonuniform = cfg.get("mode", "uniform") == "nonuniform"
    timing = {"decode_s": 0.0, "blur_s": 0.0, "encode_s": 0.0}
    if nonuniform:
        timing["segment_s"] = 0.0
    decoded: dict[str, tuple] = {}  # a shard holds all pairs of an image together: decode once
    segmented: dict[str, list] = {}  # ... and segment once (masks depend on the image only)

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

            seed = seed_for(cfg["seed"], key)
            if nonuniform:
                from blurforge.nonuniform import render_from_params, sample_nonuniform_params

                stage = "segment"
                t = time.perf_counter()
                segmenter = _segmenter(cfg["segmenter"])
                if rel not in segmented:
                    segmented.clear()
                    segmented[rel] = segmenter.segment(sharp)
                timing["segment_s"] += time.perf_counter() - t
                stage = "render"
                t = time.perf_counter()
                params = sample_nonuniform_params(np.random.default_rng([seed, 0]), bank, segmented[rel], cfg)
                params["segmenter"] = segmenter.describe(h, w)
                params.update(input=rel, bit_depth=info["bit_depth"], conversions=info["conversions"])
                blurry = render_from_params(sharp, bank, params, seed)
            else:
                stage = "render"
                t = time.perf_counter()
                params = sample_uniform_params(np.random.default_rng([seed, 0]), bank, cfg)
                params.update(input=rel, bit_depth=info["bit_depth"], conversions=info["conversions"])
                blurry = render_blurry(sharp, bank.kernel(params["kernel_id"]), params, seed)
            timing["blur_s"] += time.perf_counter() - t

            stage = "encode"
            t = time.perf_counter()
            jpeg = params["realism"].get("jpeg_quality")
            png_level = cfg.get("png", {}).get("level", DEFAULT_PNG_LEVEL)
            if jpeg:
                blur_bytes = encode_image(blurry, bit_depth=8, fmt="jpg", jpeg_quality=jpeg)
            else:
                blur_bytes = encode_image(blurry, bit_depth=info["bit_depth"], png_level=png_level)
            sharp_bytes = encode_image(sharp, bit_depth=info["bit_depth"], png_level=png_level)
            name = sample_name(key)
            blur_rel = f"blur/{task.shard}/{name}.{'jpg' if jpeg else 'png'}"
            sharp_rel = f"sharp/{task.shard}/{name}.png"
            stage = "write"
            out.write_bytes(blur_rel, blur_bytes)
            out.write_bytes(sharp_rel, sharp_bytes)
            timing["encode_s"] += time.perf_counter() - t
            rows.append(
                {
                    "key": key,
                    "blur_path": blur_rel,
                    "sharp_path": sharp_rel,
                    "split": "train",
                    "source": "nonuniform" if nonuniform else "uniform",
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
    """Re-render a uniform or nonuniform row's blurry image (sRGB float32) from its seed, params
    and stored sharp image (nonuniform rows carry their masks: no segmenter is run)."""
    from blurforge.imageio import read_image

    params = json.loads(row["params"])
    sharp, _ = read_image(Path(root) / row["sharp_path"])
    if row.get("source") == "nonuniform":
        from blurforge.nonuniform import render_from_params

        return render_from_params(sharp, bank, params, int(row["seed"]))
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
    segmenter: str = "classical",
    sam2_config: str | None = None,
    sam2_checkpoint: str | Path | None = None,
    device: str = "cpu",
    max_objects: int = 6,
    png_level: int | None = None,
) -> RunSummary:
    """Plan, run (resuming finished shards) and summarise a synthesize job.

    ``mode="nonuniform"`` segments each image with ``segmenter`` (``"classical"``, or ``"sam2"``
    with ``sam2_checkpoint``, a file matching ``sam2_config``, run on ``device``) and gives up to
    ``max_objects`` objects per image their own kernels; these settings are ignored in uniform mode.
    ``png_level``: libdeflate level of the PNG files (0–12, default ``DEFAULT_PNG_LEVEL``; lossless
    at every level — it trades file size for time).
    """
    from blurforge.imageio import png_settings

    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    sharp, kernels, out = Path(sharp), Path(kernels), Location(out)
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
        "png": png_settings(png_level),
    }
    if mode == "nonuniform":
        config["segmenter"] = _segmenter_settings(segmenter, sam2_config, sam2_checkpoint, device, max_objects)
    items = plan_uniform(sharp, pairs_per_image, config["key_prefix"])
    if not items:
        raise FileNotFoundError(f"--sharp {sharp}: no images found (looked for common image extensions)")
    out.makedirs()
    check_run_config(out.uri, config)
    tasks = make_tasks(items, shard_size, out.uri, config)
    return run_shards(synthesize_worker, tasks, workers=workers, progress=progress, desc="synthesize",
                      backend=backend, ray_address=ray_address, retries=retries)


def _segmenter_settings(name: str, sam2_config: str | None, sam2_checkpoint, device: str, max_objects: int) -> dict:
    """Check the segmenter options in the driver (clear errors before any shard runs) and
    return the settings the workers build it from."""
    from blurforge.segment import DEFAULT_SAM2_CONFIG, SEGMENTERS, check_sam2_checkpoint, import_sam2

    if name not in SEGMENTERS:
        raise ValueError(f"--segmenter must be one of {', '.join(SEGMENTERS)}, got {name!r}")
    if max_objects < 0:
        raise ValueError(f"--max-objects must be >= 0, got {max_objects}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if name == "classical":
        return {"name": "classical", "max_objects": int(max_objects)}
    checkpoint = None if sam2_checkpoint is None else str(Path(sam2_checkpoint).resolve())
    check_sam2_checkpoint(checkpoint)
    try:
        import_sam2()
    except RuntimeError as exc:  # Sam2Unavailable: a user error with its fix in the message
        raise ValueError(str(exc)) from exc
    return {"name": "sam2", "max_objects": int(max_objects), "sam2_config": sam2_config or DEFAULT_SAM2_CONFIG,
            "sam2_checkpoint": checkpoint, "device": device}


def summarize_timing(stats: Sequence[dict]) -> dict:
    keys = ("decode_s", "segment_s", "blur_s", "encode_s")
    return {k: sum(s.get(k, 0.0) for s in stats) for k in keys if any(k in s for s in stats)}
