"""``blurforge synthesize``: paired blurry/sharp images from sharp photos and a kernel bank.

Per sample ``j`` of the sharp image ``REL_PATH`` (key ``PREFIX/seedSEED/REL_PATH/J``, PREFIX the mode
unless ``--key-prefix`` is given; the run seed in the key lets runs with other seeds merge):

1. ``seed = seed_for(run_seed, "MODE/REL_PATH/J")`` (:func:`sample_seed`: the run seed, the
   source and ``j``, never the key prefix); parameters are drawn from ``default_rng([seed, 0])``
   (kernel id, realism settings), the rendering's own randomness (noise) from
   ``default_rng([seed, 1])`` — so a row's ``seed`` and ``params`` re-render it exactly
   (``rerender``), whichever worker drew it and in whatever order. The row's ``group`` is
   ``sha256:`` + the SHA-256 of the sharp source file's bytes (see :func:`source_group`).
2. The sharp image is decoded (orientation, alpha, grey and bit depth normalised as
   ``blurforge.imageio.read_image`` documents) and stored losslessly as PNG at its own bit depth,
   so the stored sharp image is exactly the one that was blurred (cropped like the blurry one, see 4).
3. The blurry image is rendered in linear light (``blurforge.blur.render_uniform``) and stored as
   PNG (or JPEG when ``--jpeg-quality`` is given).
4. Borders (``--borders valid``, the default): a pixel within a kernel's reach of the edge
   would blur reflected, not real, content, so the blurry image is rendered from the whole
   source image and both images are cropped by the reach of the kernels applied
   (``border_crop``); ``params`` records ``borders`` and the ``crop`` in source pixels, and
   ``width``/``height`` are the cropped size. ``--borders reflect`` keeps the full image with
   reflected borders (``crop`` all 0). Everything else in ``params`` (e.g. object masks) is in
   source pixels.

``--mode nonuniform`` (``source = "nonuniform"``): the sharp image is segmented once per image
(``blurforge.segment``; the masks do not depend on the seed), each object gets its own kernel and
the background its own, and the layers are composited in linear light
(``blurforge.nonuniform``). ``params`` holds the background's ``kernel_id``, ``objects`` (each
with ``kernel_id``, ``kernel_length``, its full-resolution ``mask`` as COCO RLE, ``area`` and
compositing ``order``), ``composite`` (the layering method) and ``segmenter`` (backend, settings and
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

from blurforge.manifest import SCHEMA_VERSION, sha256_file
from blurforge.seeding import seed_for
from blurforge.storage import Location, check_separate
from blurforge.shards import (RunSummary, ShardTask, check_run_config, finish_shard, is_output_dir, make_tasks,
                              report_progress, run_shards)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

_BANKS: dict[str, object] = {}  # per-process cache: kernel bank path -> KernelBank
_SEGMENTERS: dict[str, object] = {}  # per-process cache: segmenter settings -> Segmenter (SAM 2 loads once)
MODES = ("uniform", "nonuniform")
BORDERS = ("valid", "reflect")  # crop every pair to what saw real content, or keep the reflected band


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


def sample_key(prefix: str, run_seed: int, rel: str, index: int | None = None) -> str:
    """A pair's key, ``PREFIX/seedSEED/REL/INDEX``: unique across runs with different seeds
    (without ``index``: the stem shared by the keys of the source ``rel``, for its error rows)."""
    stem = f"{prefix}/seed{int(run_seed)}/{rel}"
    return stem if index is None else f"{stem}/{index}"


def sample_seed(run_seed: int, source: str, rel: str, index: int) -> int:
    """A pair's seed from the run seed, the kind of pair (``uniform``, ``nonuniform``, ``frames``),
    its source (path relative to the input folder) and its index there (``j``, or the centre
    frame) — not from the key, so ``--key-prefix`` never changes what is drawn."""
    return seed_for(run_seed, f"{source}/{rel}/{index}")


def source_group(path: str | Path) -> str:
    """The group of every pair made from the file ``path``: ``sha256:`` + the SHA-256 of its bytes.

    The file's bytes, not its decoded pixels: anyone can recompute it (``sha256sum``), and it does
    not move with decoder versions (JPEG decoders differ in the last bit), so the same photo gets
    the same group on every machine of a cluster and in every later run. A re-encoded copy of a
    photo is a different file and a different group; ``blurforge.manifest.leakage`` still flags a
    lossless copy, whose stored sharp image is identical."""
    return f"sha256:{sha256_file(path)}"


def plan_uniform(sharp_dir: Path, pairs_per_image: int, key_prefix: str, run_seed: int,
                 skipped: list | None = None) -> list[tuple[str, str, int]]:
    """Work items ``(key, relative sharp path, j)``, sorted, one per (image, j). Folders under
    ``sharp_dir`` holding blurforge outputs are not scanned (appended to ``skipped``)."""
    from blurforge.imageio import find_images

    items = []
    for p in find_images(sharp_dir, skipped=skipped):
        rel = p.relative_to(sharp_dir).as_posix()
        for j in range(pairs_per_image):
            items.append((sample_key(key_prefix, run_seed, rel, j), rel, j))
    return items


def sample_uniform_params(rng: np.random.Generator, bank, config: dict) -> dict:
    """Draw a sample's parameters: which kernel, and the realism settings."""
    from blurforge.blur import sample_realism
    from blurforge.camera import DEFAULT_NOISE_PRESET

    i = int(rng.integers(len(bank)))
    kernel_id = bank.ids[i]
    return {
        "kernel_id": kernel_id,
        "kernel_length": float(bank.table.column("length")[i].as_py()),
        "kernel_bank_sha256": config["kernel_bank_sha256"],
        "realism": sample_realism(
            rng, noise=config["noise"], saturation=config["saturation"], jpeg_quality=config["jpeg_quality"],
            noise_preset=config.get("noise_preset") or DEFAULT_NOISE_PRESET,
        ),
    }


def render_blurry(sharp_srgb: np.ndarray, kernel: np.ndarray, params: dict, seed: int) -> np.ndarray:
    """The blurry sRGB image of a sample, from its sharp image, kernel, params and seed (pure):
    float sRGB, or its exact 8-bit codes when the params say so (``blur.exact_codes``)."""
    from blurforge.blur import exact_codes, render_uniform

    return render_uniform(sharp_srgb, kernel, params["realism"], np.random.default_rng([seed, 1]),
                          codes=exact_codes(params))


def synthesize_worker(task: ShardTask) -> dict:
    """Pure shard worker: reads sharp images, renders pairs, writes images then the shard tables."""
    from blurforge.blur import EXACT_QUANTISER
    from blurforge.imageio import (ImageReadError, encode_image, pixels_to_float, png_options, read_image_pixels,
                                   sha256_bytes)

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

    for key, rel, j in task.items:
        src = sharp_root / rel
        stage = "read"
        try:
            t = time.perf_counter()
            if rel not in decoded:
                decoded.clear()
                pixels, info = read_image_pixels(src)
                # 8-bit photos stay codes (rendered through a table, written as they are); 16-bit as floats
                decoded[rel] = (pixels if info["bit_depth"] == 8 else pixels_to_float(pixels, 16), info)
                group = source_group(src)
            sharp, info = decoded[rel]
            h, w = sharp.shape[:2]
            if h < ksize or w < ksize:
                raise ImageReadError(
                    f"{src}: image {w}x{h} is smaller than the {ksize}x{ksize} kernels — "
                    "use larger images or a kernel bank with a smaller --size"
                )
            timing["decode_s"] += time.perf_counter() - t

            seed = sample_seed(cfg["seed"], cfg["mode"], rel, j)
            if nonuniform:
                from blurforge.nonuniform import sample_nonuniform_params

                stage = "segment"
                t = time.perf_counter()
                segmenter = _segmenter(cfg["segmenter"])
                if rel not in segmented:
                    segmented.clear()
                    segmented[rel] = segmenter.segment(pixels_to_float(sharp, 8) if sharp.dtype == np.uint8 else sharp)
                timing["segment_s"] += time.perf_counter() - t
                stage = "render"
                t = time.perf_counter()
                params = sample_nonuniform_params(np.random.default_rng([seed, 0]), bank, segmented[rel], cfg)
                params["segmenter"] = segmenter.describe(h, w)
                params.update(input=rel, bit_depth=info["bit_depth"], conversions=info["conversions"])
            else:
                stage = "render"
                t = time.perf_counter()
                params = sample_uniform_params(np.random.default_rng([seed, 0]), bank, cfg)
                params.update(input=rel, bit_depth=info["bit_depth"], conversions=info["conversions"])
            if info["bit_depth"] == 8 or params["realism"].get("jpeg_quality"):
                params["quantiser"] = EXACT_QUANTISER  # 8-bit output: exactly rounded codes (blur.to_output)
            stage = "crop"
            borders = cfg.get("borders", "valid")
            params.update(borders=borders, crop=border_crop(params, bank, borders))
            check_crop(src, h, w, params["crop"])
            stage = "render"
            blurry, sharp_pair = render_pair(sharp, bank, params, seed, "nonuniform" if nonuniform else "uniform")
            timing["blur_s"] += time.perf_counter() - t

            stage = "encode"
            t = time.perf_counter()
            jpeg = params["realism"].get("jpeg_quality")
            png = png_options(cfg.get("png"))
            if jpeg:
                blur_bytes = encode_image(blurry, bit_depth=8, fmt="jpg", jpeg_quality=jpeg)
            else:
                blur_bytes = encode_image(blurry, bit_depth=info["bit_depth"], **png)
            sharp_bytes = encode_image(sharp_pair, bit_depth=info["bit_depth"], **png)
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
                    "group": group,
                    "source": "nonuniform" if nonuniform else "uniform",
                    "width": blurry.shape[1],
                    "height": blurry.shape[0],
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
        report_progress(len(rows) + len(errors), len(rows), len(errors))  # every item gives a row or an error
    return finish_shard(task, rows, errors, {k: round(v, 4) for k, v in timing.items()})


def kernel_ids(params: dict) -> list[str]:
    """Every ``kernel_id`` in a row's params (the background's, each object's, ...), once each,
    in the order found."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "kernel_id" and isinstance(v, str):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(params)
    return list(dict.fromkeys(found))


def border_crop(params: dict, bank, borders: str) -> dict:
    """The crop of a pair, in source pixels: ``{"top", "left", "bottom", "right"}``.

    ``borders="valid"``: per side, the largest reach (:func:`blurforge.kernels.border_reach`)
    of every kernel the row applies, so every pixel left saw only real image content; the
    actual support of the drawn kernels, not the bank's ``size // 2``, so a short blur costs
    only a few pixels. ``"reflect"``: nothing is cropped (the full image, with reflected
    borders in a band as wide as the kernel's reach).
    """
    from blurforge.kernels import border_reach

    if borders not in BORDERS:
        raise ValueError(f"borders must be one of {', '.join(BORDERS)}, got {borders!r}")
    crop = {"top": 0, "left": 0, "bottom": 0, "right": 0}
    if borders == "valid":
        for kid in kernel_ids(params):
            reach = border_reach(bank.kernel(kid))
            crop = {side: max(crop[side], reach[side]) for side in crop}
    return crop


def check_crop(src, h: int, w: int, crop: dict) -> None:
    """Refuse (as a bad input) an image that nothing is left of once cropped."""
    from blurforge.imageio import ImageReadError

    ch, cw = h - crop["top"] - crop["bottom"], w - crop["left"] - crop["right"]
    if ch < 1 or cw < 1:
        raise ImageReadError(
            f"{src}: image {w}x{h} leaves {max(cw, 0)}x{max(ch, 0)} pixels once the kernels' reach is cropped "
            f"(top {crop['top']}, left {crop['left']}, bottom {crop['bottom']}, right {crop['right']}) — use larger "
            "images, a kernel bank with a smaller --size / --working-size, or --borders reflect"
        )


def crop_image(image: np.ndarray, crop: dict | None) -> np.ndarray:
    """``image[top : H - bottom, left : W - right]`` (a view); ``crop=None`` keeps it whole."""
    if not crop:
        return image
    h, w = image.shape[:2]
    return image[crop["top"] : h - crop["bottom"], crop["left"] : w - crop["right"]]


def render_pair(sharp_srgb: np.ndarray, bank, params: dict, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A row's ``(blurry, sharp)`` sRGB pair: the blurry image rendered from the whole source
    image, then both cropped by ``params["crop"]`` (absent in rows made before borders were
    recorded: nothing is cropped)."""
    if source == "nonuniform":
        from blurforge.nonuniform import render_from_params

        blurry = render_from_params(sharp_srgb, bank, params, seed)
    else:
        blurry = render_blurry(sharp_srgb, bank.kernel(params["kernel_id"]), params, seed)
    return crop_image(blurry, params.get("crop")), crop_image(sharp_srgb, params.get("crop"))


def rerender(row: dict, bank, root: Path, sharp_root: str | Path | None = None) -> np.ndarray:
    """Re-render a uniform or nonuniform row's blurry image (sRGB float32) from its seed, params
    and sharp image (nonuniform rows carry their masks: no segmenter is run).

    A row cropped to its valid region was blurred from the whole source image, so that image is
    read again: ``sharp_root / params["input"]``, ``sharp_root`` defaulting to the ``--sharp``
    recorded in ``root/run.json`` (a synthesize output directory); it must crop to the stored
    sharp image exactly. Other rows are re-rendered from the stored sharp image alone.
    """
    from blurforge.imageio import read_image

    params = json.loads(row["params"])
    stored, _ = read_image(Path(root) / row["sharp_path"])
    crop = params.get("crop")
    source = stored
    if crop and any(crop.values()):
        if sharp_root is None:
            run = Path(root) / "run.json"
            if not run.is_file():
                raise FileNotFoundError(
                    f"{row['key']}: the pair was cropped from a larger source image; pass sharp_root=the "
                    f"--sharp directory it was made from (no {run} to read it from)"
                )
            sharp_root = json.loads(run.read_text())["sharp"]
        path = Path(sharp_root) / params["input"]
        source, _ = read_image(path)
        if not np.array_equal(crop_image(source, crop), stored):
            raise ValueError(
                f"{path}: cropped by {crop} it is not the stored sharp image of {row['key']} — pass the --sharp "
                "directory the pair was made from, unchanged"
            )
    return render_pair(source, bank, params, int(row["seed"]), row.get("source", "uniform"))[0]


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
    noise_preset: str = "realblur",
    borders: str = "valid",
    png_level: int | None = None,
    png_compressor: str | None = None,
) -> RunSummary:
    """Plan, run (resuming finished shards) and summarise a synthesize job.

    ``mode="nonuniform"`` segments each image with ``segmenter`` (``"classical"``, or ``"sam2"``
    with ``sam2_checkpoint``, a file matching ``sam2_config``, run on ``device``) and gives up to
    ``max_objects`` objects per image their own kernels; these settings are ignored in uniform mode.
    ``noise="rsblur"`` adds RSBlur's camera-pipeline noise with ``noise_preset`` (``realblur`` or
    ``rsblur``, see ``blurforge.camera``).
    ``borders="valid"`` crops every pair by the reach of its kernels (:func:`border_crop`);
    ``"reflect"`` keeps the full image with reflected borders.
    ``png_compressor`` (``"isal"``, default, or ``"libdeflate"``) and its ``png_level``: how the PNG
    files are compressed (``imageio.png_settings``; lossless at every level — it trades file size
    for time).
    """
    from blurforge.imageio import png_settings

    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if borders not in BORDERS:
        raise ValueError(f"--borders must be one of {', '.join(BORDERS)}, got {borders!r}")
    sharp, kernels, out = Path(sharp), Path(kernels), Location(out)
    if not sharp.is_dir():
        raise FileNotFoundError(f"--sharp {sharp}: not a directory of sharp images")
    if not kernels.is_file():
        raise FileNotFoundError(f"--kernels {kernels}: no such file — make one with 'blurforge kernels'")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if pairs_per_image < 1:
        raise ValueError(f"--pairs-per-image must be at least 1, got {pairs_per_image}")
    from blurforge.blur import check_noise_options

    check_noise_options(noise, noise_preset)
    if is_output_dir(sharp):
        raise ValueError(
            f"--sharp {sharp} is a blurforge output folder (run.json, manifest/, stats/): its images are pairs, "
            f"not sharp photos — point --sharp at the photos, or at {sharp / 'sharp'} to blur its sharp images again"
        )
    check_separate(out, sharp, "--sharp")
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
        "borders": borders,
        "manifest_schema": SCHEMA_VERSION,  # keys, seeds and groups of this layout
        "png": png_settings(png_level, png_compressor),
    }
    if noise != "none":  # only with noise, so runs without it keep their run.json
        config["noise_preset"] = noise_preset
    if mode == "nonuniform":
        config["segmenter"] = _segmenter_settings(segmenter, sam2_config, sam2_checkpoint, device, max_objects)
    skipped: list = []
    items = plan_uniform(sharp, pairs_per_image, config["key_prefix"], seed, skipped=skipped)
    if not items:
        raise FileNotFoundError(f"--sharp {sharp}: no images found (looked for common image extensions)")
    out.makedirs()
    check_run_config(out.uri, config)
    tasks = make_tasks(items, shard_size, out.uri, config)
    summary = run_shards(synthesize_worker, tasks, workers=workers, progress=progress, desc="synthesize",
                         backend=backend, ray_address=ray_address, retries=retries, unit="pair")
    summary.notes += skipped_note(skipped, "--sharp")
    return summary


def skipped_note(skipped: Sequence, flag: str) -> list[str]:
    """The line telling which blurforge output folders an input scan left out (none: no line)."""
    if not skipped:
        return []
    names = ", ".join(str(p) for p in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return [f"skipped {len(skipped)} blurforge output folder(s) inside {flag}: {names}"]


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
