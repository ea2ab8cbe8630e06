"""Object-wise (non-uniform) blur: every object moves with its own kernel, composited without halos.

The model (DESIGN §3; layering as in ParallaxICB). In linear light, with the sharp image ``S``,
the background kernel ``K_0`` and objects ``i = 1..n`` with masks ``m_i`` and kernels ``K_i``::

    B = K_0 ⊛ S                                   # the background layer covers everything
    for i in objects, largest first:              # smaller (nearer) objects occlude larger ones
        a_i = smooth(K_i ⊛ dilate(m_i))           # the object's motion-smeared silhouette
        B   = B + a_i · (K_i ⊛ S − B)             # "over" compositing in linear light

* Every kernel blurs the **whole** image, never a masked image, so no hard mask edge (and no
  black outside the mask) is ever convolved into colours: a constant image stays constant for any
  masks and kernels, and where all kernels are equal the result is exactly the uniform blur.
* The alpha is the mask dilated by ``dilate`` pixels (to absorb segmentation error at the
  silhouette), blurred by the object's own kernel (so it reaches exactly the mask dilated by the
  kernel's support: where the object passed during the exposure), then Gaussian-smoothed with
  ``sigma = feather`` pixels (so no seam is hard even for a near-delta kernel) and clipped to [0, 1].
* ``B + a (L − B)`` rather than ``(1 − a) B + a L``: where a layer equals what is below it the
  result is bit-identical, whatever the alpha.
* Saturation (RSBlur) uses the same layering: ``M_sat = Σ`` layers of ``K_i ⊛ (S ≥ 1)`` with the
  same alphas; then noise is applied as in the uniform pipeline (``blur.apply_realism``).

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

from blurforge.blur import apply_realism, convolve, linear_to_srgb, srgb_to_linear

_F32 = np.float32
DEFAULT_DILATE = 2  # pixels of dilation of every mask before its kernel
DEFAULT_FEATHER = 1.0  # sigma (pixels) of the Gaussian that softens every alpha


# ------------------------------------------------------------------------------------------ RLE


def rle_encode(mask: np.ndarray) -> dict:
    """A bool ``H×W`` mask as COCO compressed RLE: ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts  # runs alternate zeros/ones, starting with zeros
    return {"size": [int(h), int(w)], "counts": _counts_to_string(counts)}


def rle_decode(rle: dict) -> np.ndarray:
    """The bool ``H×W`` mask of a COCO compressed RLE dict (``rle_encode``'s inverse)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = _string_to_counts(rle["counts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE mask ({exc!r}): expected {{'size': [H, W], 'counts': str}}") from exc
    if sum(counts) != h * w or min(counts, default=0) < 0:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected H*W = {h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if h * w else np.zeros((h, w), bool)


def _counts_to_string(counts: Sequence[int]) -> str:
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            chunk = x & 0x1F
            x >>= 5  # arithmetic shift: -1 stays -1
            more = x != -1 if chunk & 0x10 else x != 0
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
    return "".join(out)


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


# ------------------------------------------------------------------------------------ compositing


def layer_alpha(mask: np.ndarray, kernel: np.ndarray, dilate: int = DEFAULT_DILATE,
                feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The soft alpha ``H×W float32`` in [0, 1] of an object: ``smooth(K ⊛ dilate(mask))``."""
    return _feather(convolve(_dilate(mask, dilate), kernel), feather)


def _dilate(mask: np.ndarray, dilate: int) -> np.ndarray:
    a = np.asarray(mask, dtype=bool).astype(_F32)
    if dilate > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        a = cv2.dilate(a, disc, borderType=cv2.BORDER_REFLECT)
    return a


def _feather(a: np.ndarray, feather: float) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=_F32)
    if feather > 0:
        a = cv2.GaussianBlur(a, (0, 0), feather, borderType=cv2.BORDER_REFLECT)
    return np.clip(a, 0.0, 1.0, out=a)


def composite_layers(
    sharp_lin: np.ndarray,
    background_kernel: np.ndarray,
    masks: Sequence[np.ndarray],
    kernels: Sequence[np.ndarray],
    dilate: int = DEFAULT_DILATE,
    feather: float = DEFAULT_FEATHER,
    saturation_a: float | None = None,
) -> np.ndarray:
    """Blur ``sharp_lin`` object-wise: background kernel everywhere, then each ``(mask, kernel)``
    layer on top **in the order given** (callers put larger objects first).

    Args:
        sharp_lin: ``H×W×3`` float linear light.
        background_kernel, kernels: PSFs (2-D, non-negative, sum 1); one kernel per mask.
        masks: ``H×W`` bool masks (any overlap; empty or full masks are fine).
        dilate, feather: alpha shaping, see the module docstring.
        saturation_a: if set, RSBlur's saturation ``B += a · M_sat`` with ``M_sat`` the same
            composite of ``K_i ⊛ (sharp_lin ≥ 1)``, then clip to [0, 1] (as ``apply_realism``).

    Returns ``H×W×3 float32`` (linear light).
    """
    sharp = np.asarray(sharp_lin, dtype=_F32)
    if sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"sharp_lin must be H×W×3, got shape {sharp.shape}")
    if len(masks) != len(kernels):
        raise ValueError(f"one kernel per mask: got {len(masks)} masks and {len(kernels)} kernels")
    h, w = sharp.shape[:2]
    for i, m in enumerate(masks):
        if np.shape(m) != (h, w):
            raise ValueError(f"mask {i} has shape {np.shape(m)}, the image is {h}x{w}")
    clipped = sharp >= 1.0 if saturation_a is not None else None
    with_sat = clipped is not None and bool(clipped.any())
    # Colours (and the saturation map) go through each kernel in one call: 3 or 6 planes.
    stack = np.concatenate([sharp, clipped.astype(_F32)], axis=2) if with_sat else sharp
    out = convolve(stack, background_kernel)
    for mask, kernel in zip(masks, kernels):
        if not np.any(mask):
            continue  # an object that covers nothing changes nothing
        alpha = layer_alpha(mask, kernel, dilate, feather)[..., None]
        layer = convolve(stack, kernel)
        layer -= out
        layer *= alpha
        out += layer
    if saturation_a is not None:
        blurry = out[..., :3]
        if with_sat:
            blurry = blurry + _F32(saturation_a) * out[..., 3:]
        return np.clip(blurry, 0.0, 1.0)
    return out


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
        "composite": {"dilate": int(config.get("dilate", DEFAULT_DILATE)),
                      "feather": float(config.get("feather", DEFAULT_FEATHER))},
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
    dilate: int = DEFAULT_DILATE,
    feather: float = DEFAULT_FEATHER,
) -> np.ndarray:
    """Object-wise blur of a sharp sRGB image in linear light, then the realism stage.

    ``sharp_srgb``: ``H×W×3`` float in [0, 1]; ``masks``/``kernels`` in compositing order.
    ``rng`` supplies only the noise realisation. Returns ``H×W×3 float32`` sRGB in [0, 1].
    With no masks (or all kernels equal) this is exactly ``blur.render_uniform``.
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
    blurry_lin = composite_layers(sharp_lin, background_kernel, masks, kernels, dilate, feather, saturation_a=a)
    if realism:
        # saturation is already in; apply_realism adds the noise exactly as for uniform pairs
        blurry_lin = apply_realism(blurry_lin, sharp_lin, background_kernel, {**realism, "saturation_a": None}, rng)
    return linear_to_srgb(blurry_lin)


def render_from_params(sharp_srgb: np.ndarray, bank, params: dict, seed: int) -> np.ndarray:
    """The blurry sRGB image of a ``nonuniform`` row from its sharp image, bank, params and seed."""
    objects = layers_of(params)
    h, w = np.shape(sharp_srgb)[:2]
    masks = []
    for o in objects:
        m = rle_decode(o["mask"])
        if m.shape != (h, w):
            raise ValueError(f"object mask is {m.shape[1]}x{m.shape[0]}, the sharp image {w}x{h}")
        masks.append(m)
    comp = params.get("composite", {})
    return render_nonuniform(
        sharp_srgb,
        bank.kernel(params["kernel_id"]),
        masks,
        [bank.kernel(o["kernel_id"]) for o in objects],
        params.get("realism"),
        np.random.default_rng([seed, 1]),
        dilate=int(comp.get("dilate", DEFAULT_DILATE)),
        feather=float(comp.get("feather", DEFAULT_FEATHER)),
    )
