"""Object-wise (non-uniform) blur: every object moves with its own kernel, as layers in linear light.

The model (DESIGN §3). In linear light, with the sharp image ``S``, the background kernel ``K_0``
and objects ``i = 1..n`` (far to near) with masks ``m_i`` and kernels ``K_i``::

    S_i  = what layer i shows: S on its visible pixels, its hidden pixels filled     (see below)
    B    = K_0 ⊛ S_0                                  # the background, its occluded part filled
    for i in 1..n (far to near):
        B = K_i ⊛ (m_i · S_i) + (1 − K_i ⊛ m_i) · B    # premultiplied layer "over" what is behind

Each layer is a sharp picture moving along its kernel's path during the exposure; ``K ⊛ (m · S)``
and ``K ⊛ m`` are the time averages of its premultiplied colour and of its coverage. The result
is the time-integrated layered scene **exactly** when, at each step, either the layer or
everything behind it is static (a moving object over a static background, or a static object
over a moving background — with the true hidden content); when both move it is the standard
approximation (it averages the coverage and what is behind separately). Tested against a scene
moved sample by sample along the kernel's path (``tests/test_nonuniform.py``).

* **Fill.** A layer's hidden pixels — the background under every object, and an object's part
  under nearer objects (masks may overlap) — become visible as the layers move, but the sharp
  image does not show them. They are filled with the value of the nearest pixel the layer shows
  (OpenCV's 5×5 chamfer distance with per-pixel labels: deterministic, ~10 ms at 640×480).
  Pixels within ``rim`` px of a nearer mask are not used as sources (a mask's edge is a few
  pixels off and edge pixels mix both colours), unless nothing else is left. A layer with no
  visible pixel keeps ``S``. On a smooth background this is accurate; on a textured one it is an
  estimate (the README gives the measured error against the true hidden content).
* Object layers are convolved only over the mask's bounding box grown by the kernel's reach
  (outside it ``K_i ⊛ m_i`` is zero), so small objects cost little.
* Delta kernels everywhere return ``S`` exactly; a constant image stays constant; with no masks
  (or only empty ones) it is exactly the uniform blur ``K_0 ⊛ S``.
* Saturation (RSBlur, ``B += a · M_sat``): ``M_sat`` is formed by the same layering from each
  layer's clipped map ``S_i ≥ 1``; then noise is applied as in the uniform pipeline
  (``blur.apply_realism`` without its saturation term).

A row records ``params["composite"] = {"method": "layered", "version": 1, "fill": "nearest",
"rim": 2}``. Rows from the earlier alpha-blend compositing (``composite`` without ``method``:
every kernel blurred the whole image, blended by dilated, feathered alphas — it left a sharp copy
of moving objects and smeared their colour into the background) are refused by
``render_from_params`` with a message saying to re-synthesize them.

Masks in a manifest row (``params["objects"][i]["mask"]``) are COCO-style compressed RLE at full
image resolution: ``{"size": [H, W], "counts": "<ascii>"}``, column-major runs starting with a
run of zeros, each count delta-coded against the count two places earlier (from the fourth on)
and written as 5-bit groups + 48 — the string format of pycocotools' ``frPyObjects``/``encode``
(see ``rle_encode``), so ``pycocotools.mask.decode`` reads them too.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from blurforge.blur import apply_realism, convolve, convolve_planes, exact_codes, srgb_to_linear, to_output

_F32 = np.float32
COMPOSITE = {"method": "layered", "version": 1, "fill": "nearest"}  # what render_from_params implements
DEFAULT_RIM = 2  # pixels next to a nearer mask that are not used as fill sources


# ------------------------------------------------------------------------------------------ RLE


def rle_encode(mask: np.ndarray) -> dict:
    """A bool ``H×W`` mask as COCO compressed RLE: ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat.size and flat[0] == 1:
        counts = np.concatenate([[0], counts])  # runs alternate zeros/ones, starting with zeros
    return {"size": [int(h), int(w)], "counts": _counts_to_string(counts)}


def rle_decode(rle: dict) -> np.ndarray:
    """The bool ``H×W`` mask of a COCO compressed RLE dict (``rle_encode``'s inverse)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = _string_to_counts(rle["counts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE mask ({exc!r}): expected {{'size': [H, W], 'counts': str}}") from exc
    total = int(counts.sum())
    if total != h * w or (counts.size and counts.min() < 0):
        raise ValueError(f"RLE counts sum to {total}, expected H*W = {h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if h * w else np.zeros((h, w), bool)


# COCO's string form of the run lengths (pycocotools' rleToString / rleFrString): from the
# fourth count on, each is stored as its difference to the count two before; every value is
# written in 5-bit groups, least significant first, as characters 48 + group, with 0x20 set on
# all groups but a value's last, whose bit 0x10 is the sign. Vectorised over all values (a
# mask of a 1280×720 photo has thousands of runs).
_RLE_MAX_GROUPS = 12  # 60 bits: far beyond any image's run length


def _counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    c = np.asarray(counts, dtype=np.int64)
    x = c.copy()
    x[3:] -= c[1:-2]
    groups = np.ones(x.shape, np.int64)  # the fewest 5-bit groups that hold x in two's complement
    limit = 16
    while True:
        wider = (x >= limit) | (x < -limit)
        if not wider.any():
            break
        groups += wider
        limit <<= 5
    k = np.arange(int(groups.max(initial=1)))
    chunks = (x[:, None] >> (5 * k)) & 0x1F
    chunks |= np.where(k < (groups - 1)[:, None], 0x20, 0)
    return (chunks[k < groups[:, None]] + 48).astype(np.uint8).tobytes().decode("ascii")


def _string_to_counts(s: str) -> np.ndarray:
    if not isinstance(s, str):
        raise TypeError(f"RLE counts must be a str, got {type(s).__name__}")
    b = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.min() < 0 or b.max() > 63:
        raise ValueError("RLE counts: characters outside '0'..'o'")
    last = (b & 0x20) == 0  # a value's last group
    if not last[-1]:
        raise ValueError("RLE counts: the string ends inside a value")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _RLE_MAX_GROUPS:
        raise ValueError(f"RLE counts: a value of more than {_RLE_MAX_GROUPS} groups")
    k = np.arange(b.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    negative = (b[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])  # sign-extend the last group
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])  # counts[i] = x[i] + counts[i - 2] from i = 3 on
    counts[2::2] = np.cumsum(x[2::2])
    return counts


# ------------------------------------------------------------------------------------ compositing


def fill_hidden(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (``H×W×C``) whose ``target`` pixels take the value of their nearest
    ``source`` pixel (OpenCV's 5×5 chamfer distance, per-pixel labels); other pixels are kept.

    ``source``, ``target``: ``H×W`` bool. With no source pixel the image is returned unchanged.
    Only the bounding box of ``source | target`` is searched.
    """
    out = np.array(image, dtype=_F32, copy=True)
    if not target.any() or not source.any():
        return out
    box = _bbox(source | target)
    src, tgt = source[box], target[box]
    # distanceTransform measures from the zero pixels; DIST_LABEL_PIXEL numbers them 1.. in row-major order
    _, labels = cv2.distanceTransformWithLabels(np.where(src, 0, 1).astype(np.uint8), cv2.DIST_L2,
                                                cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL)
    index = np.arange(src.size)  # where each pixel of the box takes its value from
    index[np.flatnonzero(tgt)] = np.flatnonzero(src)[labels[tgt] - 1]
    crop = out[box]
    out[box] = np.take(crop.reshape(-1, crop.shape[2]), index, axis=0).reshape(crop.shape)
    return out


def _bbox(mask: np.ndarray, grow: int = 0) -> tuple[slice, slice]:
    """The bounding box of a non-empty ``H×W`` bool mask grown by ``grow`` px (clipped to the image)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(0, rows[0] - grow), rows[-1] + grow + 1), slice(max(0, cols[0] - grow), cols[-1] + grow + 1))


def _layer_content(sharp: np.ndarray, support: np.ndarray, nearer: np.ndarray, rim: int) -> np.ndarray:
    """What a layer with mask ``support`` shows when the nearer layers (union ``nearer``) are
    lifted off: ``sharp`` where it is visible, its hidden pixels (``support & nearer``) filled from
    its visible pixels, preferring those more than ``rim`` px from ``nearer``. Computed over the
    support's bounding box (grown by ``rim``); returns a full-size copy."""
    box = _bbox(support, rim)
    support, nearer = support[box], nearer[box]
    visible = support & ~nearer
    source = visible
    if rim > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
        away = visible & ~cv2.dilate(nearer.astype(np.uint8), disc).astype(bool)
        source = away if away.any() else visible
    out = sharp.copy()
    out[box] = fill_hidden(sharp[box], source, support & nearer)
    return out


def _reach(kernel: np.ndarray) -> int:
    """How far (pixels, any direction) a convolution with ``kernel`` moves content from its centre."""
    k = np.asarray(kernel)
    rows, cols = np.flatnonzero(k.any(axis=1)), np.flatnonzero(k.any(axis=0))
    if rows.size == 0:
        return 0
    cy, cx = k.shape[0] // 2, k.shape[1] // 2
    return int(max(cy - rows[0], rows[-1] - cy, cx - cols[0], cols[-1] - cx, 0))


def composite_layers(
    sharp_lin: np.ndarray,
    background_kernel: np.ndarray,
    masks: Sequence[np.ndarray],
    kernels: Sequence[np.ndarray],
    saturation_a: float | None = None,
    rim: int = DEFAULT_RIM,
) -> np.ndarray:
    """Blur ``sharp_lin`` as moving layers: the background (its occluded part filled) with
    ``background_kernel``, then each ``(mask, kernel)`` layer **in the order given, far to near**
    (``B = K ⊛ (m·S) + (1 − K ⊛ m)·B``; see the module docstring).

    Args:
        sharp_lin: ``H×W×3`` float linear light.
        background_kernel, kernels: PSFs (2-D, non-negative, sum 1, centre ``(kh//2, kw//2)``);
            one kernel per mask.
        masks: ``H×W`` bool masks, far to near (any overlap; empty or full masks are fine).
        saturation_a: if set, RSBlur's saturation ``B += a · M_sat`` with ``M_sat`` the same
            layering of each layer's clipped map ``S_i ≥ 1``, then clip to [0, 1] (as
            ``blur.apply_realism``).
        rim: fill sources keep this many pixels away from nearer masks (see the module docstring).

    Returns ``H×W×3 float32`` (linear light).
    """
    sharp = np.asarray(sharp_lin, dtype=_F32)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp_lin must be H×W×3, got shape {sharp.shape}")
    if len(masks) != len(kernels):
        raise ValueError(f"one kernel per mask: got {len(masks)} masks and {len(kernels)} kernels")
    h, w = sharp.shape[:2]
    masks = [np.asarray(m, dtype=bool) for m in masks]
    for i, m in enumerate(masks):
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, the image is {h}x{w}")

    # What each layer shows, near to far: a layer's hidden part is under the union of nearer masks.
    contents: list[np.ndarray | None] = [None] * len(masks)
    nearer = np.zeros((h, w), bool)
    for i in reversed(range(len(masks))):
        if masks[i].any():
            if (masks[i] & nearer).any():
                contents[i] = _layer_content(sharp, masks[i], nearer, rim)
            nearer |= masks[i]
    background = _layer_content(sharp, np.ones((h, w), bool), nearer, rim) if nearer.any() else sharp

    # Fills copy visible pixels, so a layer has clipped pixels only if the sharp image has.
    with_sat = saturation_a is not None and bool((sharp >= 1.0).any())

    def planes(content: np.ndarray) -> np.ndarray:  # colour, then the clipped map if needed
        return np.concatenate([content, (content >= 1.0).astype(_F32)], axis=2) if with_sat else content

    out = convolve(planes(background), background_kernel)  # premultiplied by an alpha of 1
    for mask, kernel, content in zip(masks, kernels, contents):
        if not mask.any():
            continue  # an object that covers nothing changes nothing
        box = _bbox(mask, _reach(kernel) + 1)
        m = mask[box].astype(_F32)
        colour = planes(sharp[box] if content is None else content[box])
        n = colour.shape[2]
        # (m·S_i, m) as n + 1 planes; channel by channel throughout: numpy's broadcasting of an
        # H×W×1 factor over a last axis of 3 runs ~3× slower than 2-D loops, and planes need no
        # splitting and merging around the convolution
        blurred = convolve_planes([np.multiply(colour[..., c], m) for c in range(n)] + [m], kernel)
        keep = 1.0 - np.clip(blurred[n], 0.0, 1.0)  # 1 − coverage: K ⊛ m
        region = out[box]
        for c in range(n):
            channel = region[..., c]
            channel *= keep
            channel += blurred[c]  # K ⊛ (m·S_i)
    if saturation_a is None:
        return out
    blurry = out[..., :3]
    if with_sat:
        blurry = blurry + _F32(saturation_a) * out[..., 3:]
    return np.clip(blurry, 0.0, 1.0)


# ------------------------------------------------------------------------------------- sampling


def sample_nonuniform_params(rng: np.random.Generator, bank, masks: Sequence[np.ndarray], config: dict) -> dict:
    """Draw a sample's parameters: the background kernel, one kernel per mask, realism settings.

    ``masks`` come from a segmenter (largest first). Draw order: background kernel index,
    one index per object (in the given order), then ``sample_realism``. The objects are
    recorded largest first with ``order`` = their compositing position (0 goes on first, right
    above the background).
    """
    from blurforge.blur import sample_realism
    from blurforge.camera import DEFAULT_NOISE_PRESET

    lengths = bank.table.column("length")

    def pick() -> tuple[str, float]:
        i = int(rng.integers(len(bank)))
        return bank.ids[i], float(lengths[i].as_py())

    bg_id, bg_length = pick()
    areas = [int(np.count_nonzero(m)) for m in masks]
    order = sorted(range(len(masks)), key=lambda i: (-areas[i], i))
    objects = []
    for position, i in enumerate(order):
        kid, length = pick()
        objects.append({"kernel_id": kid, "kernel_length": length, "mask": rle_encode(masks[i]),
                        "area": areas[i], "order": position})
    return {
        "kernel_id": bg_id,  # the background's kernel (as in a uniform row)
        "kernel_length": bg_length,
        "kernel_bank_sha256": config["kernel_bank_sha256"],
        "objects": objects,
        "composite": {**COMPOSITE, "rim": int(config.get("rim", DEFAULT_RIM))},
        "realism": sample_realism(
            rng, noise=config["noise"], saturation=config["saturation"], jpeg_quality=config["jpeg_quality"],
            noise_preset=config.get("noise_preset") or DEFAULT_NOISE_PRESET,
        ),
    }


def layers_of(params: dict) -> list[dict]:
    """A row's objects in compositing order (``order`` ascending)."""
    return sorted(params.get("objects", []), key=lambda o: int(o["order"]))


# ------------------------------------------------------------------------------------ rendering


def render_nonuniform(
    sharp_srgb: np.ndarray,
    background_kernel: np.ndarray,
    masks: Sequence[np.ndarray],
    kernels: Sequence[np.ndarray],
    realism_params: dict | None,
    rng: np.random.Generator,
    rim: int = DEFAULT_RIM,
    codes: bool = False,
) -> np.ndarray:
    """Object-wise blur of a sharp sRGB image in linear light, then the realism stage.

    ``sharp_srgb``: ``H×W×3`` float in [0, 1] or ``uint8`` codes; ``masks``/``kernels`` in
    compositing order (far to near). ``rng`` supplies only the noise realisation. Returns
    ``H×W×3 float32`` sRGB in [0, 1], or with ``codes`` its exact 8-bit codes
    (``blur.to_output``). With no masks (or only empty ones) this is exactly ``blur.render_uniform``.
    """
    for k in [background_kernel, *kernels]:
        k = np.asarray(k, dtype=_F32)
        if k.ndim != 2 or k.min() < 0 or abs(float(k.sum(dtype=np.float64)) - 1.0) > 1e-3:
            raise ValueError("every kernel must be 2-D, non-negative and sum to 1 — normalise it with k / k.sum()")
    sharp = np.asarray(sharp_srgb)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp_srgb must be H×W×3, got shape {sharp.shape}")
    sharp_lin = srgb_to_linear(sharp)
    realism = dict(realism_params or {})
    a = realism.get("saturation_a")
    blurry_lin = composite_layers(sharp_lin, background_kernel, masks, kernels, saturation_a=a, rim=rim)
    if realism:
        # saturation is already in; apply_realism adds the noise exactly as for uniform pairs
        blurry_lin = apply_realism(blurry_lin, sharp_lin, background_kernel, {**realism, "saturation_a": None}, rng)
    return to_output(blurry_lin, codes)


def render_from_params(sharp_srgb: np.ndarray, bank, params: dict, seed: int) -> np.ndarray:
    """The blurry sRGB image of a ``nonuniform`` row from its sharp image, bank, params and seed
    (its exact 8-bit codes when the row says so: ``blur.exact_codes``).

    Raises ``ValueError`` for a row made by another compositing method (e.g. the earlier
    alpha-blend rule, which this version no longer implements)."""
    comp = check_composite(params.get("composite"))
    objects = layers_of(params)
    h, w = np.shape(sharp_srgb)[:2]
    masks = []
    for o in objects:
        m = rle_decode(o["mask"])
        if m.shape != (h, w):
            raise ValueError(f"object mask is {m.shape[1]}x{m.shape[0]}, the sharp image {w}x{h}")
        masks.append(m)
    return render_nonuniform(
        sharp_srgb,
        bank.kernel(params["kernel_id"]),
        masks,
        [bank.kernel(o["kernel_id"]) for o in objects],
        params.get("realism"),
        np.random.default_rng([seed, 1]),
        rim=int(comp["rim"]),
        codes=exact_codes(params),
    )


def check_composite(composite: dict | None) -> dict:
    """``params["composite"]`` if this version renders it exactly, else a ``ValueError`` saying why."""
    composite = composite if isinstance(composite, dict) else {}
    if any(composite.get(k) != v for k, v in COMPOSITE.items()) or "rim" not in composite:
        made_by = ("the alpha-blend compositing of an earlier blurforge (every kernel blurred the whole "
                   "image, blended by feathered alphas), which this version no longer implements"
                   if "method" not in composite else "a compositing method this version does not implement")
        raise ValueError(
            f"params composite {composite}: this row was made by {made_by}; this version renders "
            f"{COMPOSITE} only — re-synthesize it with 'blurforge synthesize --mode nonuniform' (its stored "
            "images are still valid pairs, they just cannot be re-rendered here)"
        )
    return composite
