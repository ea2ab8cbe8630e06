"""Object masks of a sharp image, for object-wise (non-uniform) blur.

One interface, two backends (DESIGN §3)::

    segmenter.segment(image_srgb, rng=None) -> list of H×W bool masks, largest first

* ``ClassicalSegmenter`` (``--segmenter classical``, the default): a **fallback for SAM 2** —
  no weights, deterministic, but it finds colour regions, not objects; it warns once per process
  and records ``"fallback_for": "sam2"`` in its description. The image is reduced to at most
  ``max_side`` pixels on its long side, over-segmented by a marker watershed on a regular grid
  of seeds (OpenCV), and the regions are merged greedily by Ward's criterion on their mean CIE
  Lab colour (the adjacent pair whose merge adds the least colour variance goes first) until
  ``max_objects + 1`` connected regions are left. The region with the most pixels on the image
  border is the background; regions that hug the frame (ground, sky, corners, strips along an
  edge) or are slivers join it (``object_regions``); the rest are objects.
* ``Sam2Segmenter`` (``--segmenter sam2``): SAM 2's automatic mask generator
  (``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``) on a model built with
  ``sam2.build_sam.build_sam2(config, checkpoint, device)``. The checkpoint is a file the user
  supplies; nothing is downloaded. torch is imported only here, inside this backend.

Both backends then share the same post-processing (``Segmenter.finalize``): masks are brought
to the input's full resolution, masks smaller than ``min_area`` (fraction of the image) and
near-duplicates (IoU ≥ ``dedupe_iou`` with a larger kept mask) are dropped, and the ``max_objects``
largest are kept, sorted by area (largest first; ties by the backend's order). Masks may overlap.

``describe()`` returns the settings that determine the masks (including the working
resolution) so they can be recorded with a sample.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import cv2
import numpy as np

SEGMENTERS = ("classical", "sam2")
DEFAULT_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` of an image reduced so that its long side is at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_uint8(image_srgb: np.ndarray) -> np.ndarray:
    """``H×W×3`` float sRGB in [0, 1] → uint8 (clipped, rounded)."""
    return np.rint(np.clip(np.asarray(image_srgb, np.float32), 0, 1) * 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask resized to ``height×width``: bilinear on {0, 1}, then ≥ 0.5 (smooth edges)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask.copy()
    up = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return up >= 0.5


class Segmenter:
    """Base class: ``segment`` = backend masks (at any resolution) + shared ``finalize``."""

    name = "base"

    def __init__(self, max_objects: int = 6, min_area: float = 0.005, dedupe_iou: float = 0.9,
                 max_side: int = 256):
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}")
        if not 0 <= min_area < 1:
            raise ValueError(f"min_area is a fraction of the image in [0, 1), got {min_area}")
        if max_side < 8:
            raise ValueError(f"max_side must be at least 8 pixels, got {max_side}")
        self.max_objects = int(max_objects)
        self.min_area = float(min_area)
        self.dedupe_iou = float(dedupe_iou)
        self.max_side = int(max_side)

    def segment(self, image_srgb: np.ndarray, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Object masks of ``image_srgb`` (``H×W×3`` float sRGB in [0, 1]): a list of ``H×W`` bool
        arrays, largest first, at most ``max_objects``. ``rng`` is accepted for the common
        signature; both backends are deterministic and ignore it."""
        image = np.asarray(image_srgb)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image_srgb must be H×W×3, got shape {image.shape}")
        h, w = image.shape[:2]
        sh, sw = working_size(h, w, self.max_side)
        small = cv2.resize(np.ascontiguousarray(image, np.float32), (sw, sh), interpolation=cv2.INTER_AREA) \
            if (sh, sw) != (h, w) else np.asarray(image, np.float32)
        return self.finalize(self._segment(small), h, w)

    def _segment(self, small_srgb: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def finalize(self, masks: Sequence[np.ndarray], height: int, width: int) -> list[np.ndarray]:
        """Full-resolution masks, filtered by area and duplicates, largest first, capped."""
        full = [resize_mask(m, height, width) for m in masks]
        min_pixels = max(1, int(np.ceil(self.min_area * height * width)))
        areas = [int(m.sum()) for m in full]
        order = sorted((i for i in range(len(full)) if areas[i] >= min_pixels), key=lambda i: (-areas[i], i))
        kept: list[int] = []
        for i in order:
            if len(kept) == self.max_objects:
                break
            duplicate = any(
                np.logical_and(full[i], full[j]).sum() >= self.dedupe_iou * np.logical_or(full[i], full[j]).sum()
                for j in kept
            )
            if not duplicate:
                kept.append(i)
        return [full[i] for i in kept]

    def describe(self, height: int, width: int) -> dict:
        """The settings that determine the masks of an ``height×width`` image (JSON-able)."""
        sh, sw = working_size(height, width, self.max_side)
        return {"name": self.name, "max_objects": self.max_objects, "min_area": self.min_area,
                "dedupe_iou": self.dedupe_iou, "resolution": [sw, sh]}


# ------------------------------------------------------------------------------------ classical


class ClassicalFallbackWarning(UserWarning):
    """The classical segmenter is in use: a labelled stand-in for SAM 2."""


FALLBACK_NOTE = ("classical segmenter: a weight-free fallback for SAM 2 (colour regions, not objects; "
                 "use --segmenter sam2 for object masks)")
_warned_fallback = False


def warn_classical_fallback() -> None:
    """Say once per process that masks come from the classical fallback, not SAM 2."""
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(FALLBACK_NOTE, ClassicalFallbackWarning, stacklevel=3)


# Which colour regions count as objects (fractions; thickness = 2 · area / outline pixels, as a
# fraction of the image's short side). Chosen by inspecting scikit-image's photographs: thin strips
# and corners along the frame have 44–64% of their outline on the border and thickness 0.08–0.10;
# a subject cut by the frame (a bust, a suit) has 20–40% and thickness ≥ 0.15; a ground or sky
# spanning the frame has > 50%.
REGION_RULES = {
    "frame_share": 0.5,  # more of the outline on the image border than this: it hugs the frame
    "strip_share": 0.25,  # ... or more than this while thinner than strip_thickness: a strip
    "strip_thickness": 0.12,
    "min_thickness": 0.03,  # thinner than this anywhere: a sliver
}


class ClassicalSegmenter(Segmenter):
    """Watershed over-segmentation + Ward merging on Lab colour; no weights, deterministic.

    A labelled fallback for SAM 2: its regions are colour regions, not objects. Building one
    warns once per process (``ClassicalFallbackWarning``), and ``describe()`` says so in the row.
    The background is the region with the most pixels on the image border; regions that hug the
    frame or are slivers join it (``object_regions``, ``REGION_RULES``).

    Args:
        max_objects: objects returned at most (the background region is not one of them).
        min_area: drop objects smaller than this fraction of the image.
        max_side: the image is segmented at this long side (masks are returned at full size).
        superpixels: seeds of the watershed over-segmentation (a grid).
    """

    name = "classical"

    def __init__(self, max_objects: int = 6, min_area: float = 0.005, dedupe_iou: float = 0.9,
                 max_side: int = 256, superpixels: int = 300):
        super().__init__(max_objects, min_area, dedupe_iou, max_side)
        self.superpixels = int(superpixels)
        warn_classical_fallback()

    def describe(self, height: int, width: int) -> dict:
        return {**super().describe(height, width), "superpixels": self.superpixels, "regions": dict(REGION_RULES),
                "fallback_for": "sam2", "note": FALLBACK_NOTE}

    def _segment(self, small_srgb: np.ndarray) -> list[np.ndarray]:
        labels = self.regions(small_srgb, self.max_objects + 1)
        return [labels == r for r in object_regions(labels)]

    def regions(self, image_srgb: np.ndarray, n_regions: int) -> np.ndarray:
        """A partition of ``image_srgb`` into at most ``n_regions`` connected regions: ``H×W`` int labels."""
        h, w = image_srgb.shape[:2]
        lab = cv2.cvtColor(cv2.GaussianBlur(np.ascontiguousarray(image_srgb, np.float32), (0, 0), 1.0),
                           cv2.COLOR_RGB2Lab)
        labels = _watershed_superpixels(image_srgb, lab, self.superpixels)
        return _ward_merge(labels, lab.reshape(-1, 3), n_regions)


def object_regions(labels: np.ndarray, rules: dict = REGION_RULES) -> list[int]:
    """The labels of ``labels`` (``H×W`` ints ``0..R-1``) that are objects, in label order.

    The background is the region with the most pixels on the image border (ties: the larger
    region, then the lower label). Another region is an object unless, with ``share`` = the
    fraction of its outline pixels on the image border and ``thickness`` = ``2 · area / outline
    pixels`` over the image's short side (a strip's width), ``share > frame_share`` (it hugs the
    frame), or ``share > strip_share`` and ``thickness < strip_thickness`` (a strip along the
    frame), or ``thickness < min_thickness`` (a sliver). An outline pixel is a region pixel with a
    4-neighbour outside the region, or on the image border.
    """
    h, w = labels.shape
    r = int(labels.max()) + 1
    area = np.bincount(labels.ravel(), minlength=r)
    frame = np.zeros((h, w), bool)
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True
    on_border = np.bincount(labels[frame], minlength=r)
    edge = frame.copy()
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        differs = labels[a] != labels[b]
        edge[a] |= differs
        edge[b] |= differs
    outline = np.maximum(np.bincount(labels[edge], minlength=r), 1)
    background = max(range(r), key=lambda i: (on_border[i], area[i], -i))
    share = on_border / outline
    thickness = 2 * area / outline / min(h, w)
    return [
        i for i in range(r)
        if i != background and area[i] > 0
        and share[i] <= rules["frame_share"]
        and not (share[i] > rules["strip_share"] and thickness[i] < rules["strip_thickness"])
        and thickness[i] >= rules["min_thickness"]
    ]


def _watershed_superpixels(image_srgb: np.ndarray, lab: np.ndarray, n_seeds: int) -> np.ndarray:
    """Marker watershed from a grid of seeds, each moved to the flattest pixel of its 3×3
    neighbourhood; returns ``H×W`` labels ``0..R-1`` (no boundary pixels)."""
    h, w = lab.shape[:2]
    grad = sum(cv2.Sobel(lab[..., c], cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(lab[..., c], cv2.CV_32F, 0, 1) ** 2
               for c in range(3))
    step = max(2.0, np.sqrt(h * w / max(1, n_seeds)))
    ys = np.arange(step / 2, h, step).astype(int)
    xs = np.arange(step / 2, w, step).astype(int)
    markers = np.zeros((h, w), np.int32)
    label = 1
    for y in ys:
        for x in xs:
            y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
            dy, dx = np.unravel_index(np.argmin(grad[y0:y1, x0:x1]), (y1 - y0, x1 - x0))
            markers[y0 + dy, x0 + dx] = label
            label += 1
    cv2.watershed(to_uint8(image_srgb), markers)  # floods by colour distance; channel order is irrelevant
    # Boundary (-1) pixels join the nearest labelled pixel.
    from scipy import ndimage

    unlabelled = markers <= 0
    if unlabelled.any():
        _, (iy, ix) = ndimage.distance_transform_edt(unlabelled, return_indices=True)
        markers = markers[iy, ix]
    _, dense = np.unique(markers, return_inverse=True)
    return dense.reshape(h, w).astype(np.int32)


def _ward_merge(labels: np.ndarray, features: np.ndarray, n_regions: int, min_gain: float = 0.01) -> np.ndarray:
    """Merge adjacent regions greedily by Ward's cost ``n_a n_b / (n_a + n_b) · |μ_a − μ_b|²``
    (the colour variance a merge adds) until at most ``n_regions`` remain, and go on while the
    cheapest merge adds at most ``min_gain`` of the image's total colour variance (so a flat
    image is one region and thin blended rims join a neighbour); ties go to the lowest index pair.
    ``labels``: ``H×W`` ints ``0..R-1``; ``features``: ``(H·W, F)``. Returns relabelled ``H×W``."""
    r = int(labels.max()) + 1
    flat = labels.ravel()
    size = np.bincount(flat, minlength=r).astype(np.float64)
    mean = np.stack([np.bincount(flat, weights=features[:, c], minlength=r) for c in range(features.shape[1])], 1)
    mean /= np.maximum(size, 1)[:, None]
    adjacent = np.zeros((r, r), bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        adjacent[a[diff], b[diff]] = True
    adjacent |= adjacent.T
    np.fill_diagonal(adjacent, False)
    parent = np.arange(r)
    alive = np.ones(r, bool)
    n_alive = r

    def cost_row(i: int) -> np.ndarray:
        d2 = ((mean - mean[i]) ** 2).sum(1)
        c = size * size[i] / np.maximum(size + size[i], 1) * d2
        c[~adjacent[i]] = np.inf
        return c

    total_ss = float((size[:, None] * (mean - (size @ mean) / size.sum()) ** 2).sum())
    cost = np.full((r, r), np.inf)
    for i in range(r):
        cost[i] = cost_row(i)
    while n_alive > 1:
        flat_min = int(np.argmin(cost))
        i, j = divmod(flat_min, r)
        if not np.isfinite(cost[i, j]):
            break  # no adjacent pair left (cannot happen for a connected image)
        i, j = min(i, j), max(i, j)
        if n_alive <= n_regions and cost[i, j] > min_gain * total_ss:
            break  # few enough regions, and every merge left would lose visible structure
        merged = size[i] + size[j]
        mean[i] = (mean[i] * size[i] + mean[j] * size[j]) / merged
        size[i], size[j] = merged, 0
        adjacent[i] |= adjacent[j]
        adjacent[:, i] = adjacent[i]
        adjacent[i, i] = False
        adjacent[j], adjacent[:, j] = False, False
        parent[parent == j] = i
        alive[j] = False
        n_alive -= 1
        cost[j], cost[:, j] = np.inf, np.inf
        cost[i] = cost_row(i)
        cost[i, ~alive] = np.inf
        cost[:, i] = cost[i]
    _, dense = np.unique(parent, return_inverse=True)
    return dense[labels].astype(np.int32)


# ----------------------------------------------------------------------------------------- SAM2


class Sam2Unavailable(RuntimeError):
    """SAM 2 cannot run here; the message says why and what to do."""


class Sam2Segmenter(Segmenter):
    """SAM 2 automatic masks (the ``sam2`` package, 1.1.0) through the shared post-processing.

    Args:
        config: a config name inside the sam2 package, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``.
        checkpoint: path of the matching ``.pt`` file (e.g. ``sam2.1_hiera_tiny.pt``), which the
            user downloads once; required unless ``random_weights=True`` (tests only).
        device: ``"cpu"`` or ``"cuda"``.
        max_side: the image is given to SAM 2 at this long side (SAM 2 itself works at 1024).
        generator_options: keyword arguments for ``SAM2AutomaticMaskGenerator``
            (``points_per_side``, ``pred_iou_thresh``, ``stability_score_thresh``, ...).
        generator: an object with SAM2AutomaticMaskGenerator's ``generate(uint8 H×W×3) -> list of
            dicts`` (``'segmentation'`` bool H×W, ``'area'``, ``'predicted_iou'``,
            ``'stability_score'``, ...) to use instead of building one; for tests.

    The masks SAM 2 returns are sorted by area, then predicted IoU, then stability score (all
    descending) before the shared filtering, so the result does not depend on SAM 2's order.
    """

    name = "sam2"

    def __init__(self, config: str = DEFAULT_SAM2_CONFIG, checkpoint: str | None = None, device: str = "cpu",
                 max_objects: int = 6, min_area: float = 0.005, dedupe_iou: float = 0.9, max_side: int = 1024,
                 generator_options: dict | None = None, generator: Any = None, random_weights: bool = False):
        super().__init__(max_objects, min_area, dedupe_iou, max_side)
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
        self.config = config
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = str(device)
        self.generator_options = dict(generator_options or {})
        self.random_weights = bool(random_weights)
        self._generator = generator
        if generator is None and not random_weights:
            check_sam2_checkpoint(self.checkpoint)

    def describe(self, height: int, width: int) -> dict:
        from pathlib import Path

        ckpt = None if self.checkpoint is None else Path(self.checkpoint).name
        return {**super().describe(height, width), "config": self.config, "checkpoint": ckpt,
                "generator_options": self.generator_options}

    @property
    def generator(self):
        if self._generator is None:
            self._generator = build_sam2_generator(self.config, self.checkpoint, self.device,
                                                   self.generator_options, self.random_weights)
        return self._generator

    def _segment(self, small_srgb: np.ndarray) -> list[np.ndarray]:
        records = list(self.generator.generate(to_uint8(small_srgb)))
        h, w = small_srgb.shape[:2]
        for i, rec in enumerate(records):
            seg = np.asarray(rec.get("segmentation") if isinstance(rec, dict) else None)
            if seg.dtype == object or seg.shape != (h, w):
                raise ValueError(
                    f"SAM 2 mask {i}: 'segmentation' must be a bool {h}x{w} array, got {seg.shape} — "
                    "build SAM2AutomaticMaskGenerator with output_mode='binary_mask' (the default)"
                )
        ranked = sorted(
            range(len(records)),
            key=lambda i: (-int(np.count_nonzero(records[i]["segmentation"])),
                           -float(records[i].get("predicted_iou", 0.0)),
                           -float(records[i].get("stability_score", 0.0)), i),
        )
        return [np.asarray(records[i]["segmentation"], bool) for i in ranked]


def check_sam2_checkpoint(checkpoint: str | None) -> None:
    """Raise a clear error unless ``checkpoint`` names an existing file."""
    import os

    hint = ("download the SAM 2.1 checkpoint that matches --sam2-config once (e.g. sam2.1_hiera_tiny.pt for "
            "configs/sam2.1/sam2.1_hiera_t.yaml, from the facebookresearch/sam2 release page) and pass its "
            "path; nothing is downloaded at run time — or use --segmenter classical")
    if checkpoint is None:
        raise FileNotFoundError(f"--segmenter sam2 needs --sam2-checkpoint PATH — {hint}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--sam2-checkpoint {checkpoint}: no such file — {hint}")


def import_sam2() -> tuple[Callable, type]:
    """``(build_sam2, SAM2AutomaticMaskGenerator)``, or ``Sam2Unavailable`` naming the fix."""
    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise Sam2Unavailable(
            f"--segmenter sam2: the 'sam2' package is not installed ({exc}) — install it with "
            "PIP_CONSTRAINT=scripts/constraints.txt SAM2_BUILD_CUDA=0 pip install --no-deps "
            "--no-build-isolation sam2==1.1.0 hydra-core iopath, or use --segmenter classical"
        ) from exc
    except Exception as exc:  # e.g. hydra-core against an incompatible antlr4/omegaconf
        raise Sam2Unavailable(
            f"--segmenter sam2: 'import sam2' failed ({type(exc).__name__}: {exc}) — sam2 1.1.0 needs "
            "hydra-core 1.3 with omegaconf 2.3 and antlr4-python3-runtime 4.9; fix those versions, "
            "or use --segmenter classical"
        ) from exc
    try:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
    except Exception as exc:  # noqa: BLE001 — classified below
        if "torchvision" in f"{type(exc).__name__}: {exc}" or getattr(exc, "name", "") == "torchvision":
            raise Sam2Unavailable(
                f"--segmenter sam2: torchvision is missing or broken ({type(exc).__name__}: {exc}). SAM 2's "
                "automatic mask generator needs torchvision.ops.batched_nms and torchvision.transforms from a "
                "torchvision built for the installed torch (the registry's default torchvision is CUDA-linked "
                "and does not import with a CPU-only torch; installing it can also replace torch — check that "
                "transformers/diffusers still import afterwards), or use --segmenter classical"
            ) from exc
        raise Sam2Unavailable(
            f"--segmenter sam2: importing SAM 2 failed ({type(exc).__name__}: {exc}) — "
            "reinstall sam2==1.1.0, or use --segmenter classical"
        ) from exc
    return build_sam2, SAM2AutomaticMaskGenerator


def build_sam2_generator(config: str, checkpoint: str | None, device: str = "cpu",
                         generator_options: dict | None = None, random_weights: bool = False):
    """A ``SAM2AutomaticMaskGenerator`` on ``build_sam2(config, checkpoint, device)``.

    ``random_weights=True`` builds the model without a checkpoint (random weights; tests only).
    """
    if not random_weights:
        check_sam2_checkpoint(checkpoint)
    build_sam2, generator_cls = import_sam2()
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise Sam2Unavailable("--device cuda: torch sees no CUDA device here — use --device cpu")
    try:
        model = build_sam2(config, None if random_weights else checkpoint, device=device)
    except Exception as exc:  # noqa: BLE001 — hydra's MissingConfigException, a bad state dict, ...
        raise Sam2Unavailable(
            f"--sam2-config {config} / --sam2-checkpoint {checkpoint}: building SAM 2 failed "
            f"({type(exc).__name__}: {exc}) — the config is a name inside the sam2 package such as "
            f"{DEFAULT_SAM2_CONFIG}, and the checkpoint must be the one made for that config"
        ) from exc
    return generator_cls(model, **(generator_options or {}))


# ---------------------------------------------------------------------------------------- factory


def make_segmenter(name: str = "classical", max_objects: int = 6, sam2_config: str = DEFAULT_SAM2_CONFIG,
                   sam2_checkpoint: str | None = None, device: str = "cpu", **options) -> Segmenter:
    """The segmenter called ``name`` (``"classical"`` or ``"sam2"``) with these settings."""
    if name == "classical":
        return ClassicalSegmenter(max_objects=max_objects, **options)
    if name == "sam2":
        return Sam2Segmenter(config=sam2_config, checkpoint=sam2_checkpoint, device=device,
                             max_objects=max_objects, **options)
    raise ValueError(f"--segmenter must be one of {', '.join(SEGMENTERS)}, got {name!r}")


def segment(image_srgb: np.ndarray, rng: np.random.Generator | None = None, segmenter: str = "classical",
            **options) -> list[np.ndarray]:
    """Object masks of ``image_srgb`` with a fresh ``make_segmenter(segmenter, **options)``."""
    return make_segmenter(segmenter, **options).segment(image_srgb, rng)
