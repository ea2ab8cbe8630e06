"""Training pairs from blurforge manifests: a reproducible, resumable stream of aligned crops.

The stream is a pure function of the run seed, so a resumed run sees exactly the samples the
interrupted one would have seen, whatever the number of DataLoader workers or processes::

    global sample g  ->  epoch e = g // L, position p = g % L        (L = number of train pairs)
    pair index       =   order(seed, e)[p]                           (a permutation per epoch,
                                                                      or weighted draws, below)
    crop and flips   =   crop_params(default_rng([seed, 1, e, p]), h, w, size)

The data position saved in a checkpoint is the next ``g`` (reported as ``(epoch, position)``).
:class:`SampleStream` hands out ``g = start + rank + world_size * k``, so with ``N`` processes
each rank sees every ``N``-th sample of one global stream (manual DDP sharding; no
``accelerator.prepare`` of the loader).

Epoch order. Without weights: ``default_rng([seed, 0, e]).permutation(L)`` — every pair once per
epoch. With ``weights`` (one per manifest): manifest ``m`` gets a share ``w_m / sum(w)`` of the
draws, spread uniformly over its pairs; an epoch is ``L`` draws with replacement from
``default_rng([seed, 0, e])``.

Pairs smaller than the crop (by the manifest's ``width``/``height``): ``small="pad"`` (default)
reflect-pads both images to the crop size (the same padding as blurforge's reflected borders, so
the blur stays consistent at the seam); ``small="skip"`` drops them when the manifests are
loaded. Either way they are counted (:attr:`PairSet.small`) and each padded sample is flagged in
its item so the trainer can report how many it saw.

Items are ``{"blurry": (3, H, W), "sharp": (3, H, W)}`` float32 tensors in [0, 1] (what
``DeblurDiff.encode`` expects) plus ``key``, ``sample`` (g) and ``padded``. Images are decoded to
their stored 8/16-bit samples, cropped (and padded, flipped) there, and only the crop is
converted to float: a 512 crop of a 4K pair converts 3% of the pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from blurforge.imageio import ImageReadError, read_image_pixels
from blurforge.manifest import ManifestError, read_manifest, resolve

SMALL_POLICIES = ("pad", "skip")


class DataError(ValueError):
    """Training data that cannot be used; the message names the input and what to do."""


@dataclass(frozen=True)
class Pair:
    """One blurry/sharp pair: absolute paths plus where it came from."""

    key: str
    blur: str
    sharp: str
    width: int
    height: int
    manifest: int  # index into PairSet.manifests


class PairList(Sequence[Pair]):
    """Pairs stored column-wise in Arrow arrays — no Python object per pair — so millions of
    pairs stay compact in memory and cheap to pickle into every DataLoader worker. Indexing
    builds the :class:`Pair` (absolute paths resolved against its manifest's root) on demand."""

    COLUMNS = ("key", "blur_path", "sharp_path", "width", "height", "manifest")

    def __init__(self, table: pa.Table, roots: Sequence[str]):
        self.table = table.select(list(self.COLUMNS)).combine_chunks()
        self.roots = list(roots)  # image paths of manifest i are relative to roots[i]
        self._cols = [self.table.column(c).chunk(0) if self.table.num_rows else None for c in self.COLUMNS]

    @classmethod
    def empty(cls) -> "PairList":
        schema = pa.schema([("key", pa.string()), ("blur_path", pa.string()), ("sharp_path", pa.string()),
                            ("width", pa.int32()), ("height", pa.int32()), ("manifest", pa.int32())])
        return cls(schema.empty_table(), [])

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("PairList slices take step 1")
            return PairList(self.table.slice(start, max(0, stop - start)), self.roots)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"pair {i} out of range ({n} pairs)")
        key, blur, sharp, width, height, manifest = (c[i].as_py() for c in self._cols)
        root = self.roots[manifest]
        return Pair(key, str(resolve(root, blur)), str(resolve(root, sharp)), width, height, manifest)

    def __reduce__(self):
        return (PairList, (self.table, self.roots))


@dataclass
class PairSet:
    """The pairs of one split of several manifests, with per-manifest counts.

    ``small``: pairs smaller than the crop (padded or skipped, as ``small_policy`` says).
    """

    pairs: PairList
    manifests: list[str]
    counts: list[int]  # pairs used per manifest
    small: int
    small_policy: str
    split: str

    def __len__(self) -> int:
        return len(self.pairs)


def load_pairs(
    manifests: Sequence[str | os.PathLike],
    split: str = "train",
    crop: int | None = None,
    small: str = "pad",
    check_files: int = 8,
    allow_empty: bool = False,
) -> PairSet:
    """The ``split`` rows of ``manifests`` as a :class:`PairSet`, sorted by key within each manifest.

    Raises :class:`DataError` (a ``ValueError``) naming the manifest for: a missing path, a file
    that is not a blurforge manifest (the ``ManifestError`` message is kept), no rows of
    ``split`` (unless ``allow_empty``), or missing image files among the first ``check_files``
    pairs of each manifest (the count found missing among those checked is reported).
    ``crop``: the crop size; pairs smaller than it are counted, and dropped if ``small="skip"``.
    """
    if small not in SMALL_POLICIES:
        raise ValueError(f"small={small!r} unknown — choose one of {', '.join(SMALL_POLICIES)}")
    if not manifests:
        raise DataError("no manifest given — pass --manifest PATH (a blurforge manifest)")
    tables: list[pa.Table] = []
    roots: list[str] = []
    names: list[str] = []
    counts: list[int] = []
    n_small = 0
    for i, path in enumerate(manifests):
        try:
            m = read_manifest(path)
        except ManifestError as exc:
            raise DataError(str(exc)) from exc  # its message already names the file and the fix
        rows = m.table.filter(pc.equal(m.table.column("split"), split))
        rows = rows.select(["key", "blur_path", "sharp_path", "width", "height"]).sort_by("key")
        if not rows.num_rows and not allow_empty:
            splits = sorted(set(m.table.column("split").to_pylist()))
            raise DataError(
                f"{m.location}: no '{split}' rows (it has {len(m)} rows in split(s) {splits or 'none'}) — "
                f"rebuild it with 'blurforge build-manifest' and fractions that leave {split} pairs"
            )
        if crop is not None:
            too_small = pc.or_(pc.less(rows.column("width"), crop), pc.less(rows.column("height"), crop))
            n_small += pc.sum(too_small).as_py() or 0
            if small == "skip":
                rows = rows.filter(pc.invert(too_small))
        rows = rows.append_column("manifest", pa.array(np.full(rows.num_rows, i, dtype=np.int32)))
        mine = PairList(rows, [*roots, str(m.root)])  # this manifest's pairs; its root is roots[i]
        _check_files(mine[:check_files], m.location, len(mine))
        tables.append(mine.table)
        roots.append(str(m.root))
        names.append(str(m.location))
        counts.append(rows.num_rows)
    pairs = PairList(pa.concat_tables(tables), roots) if tables else PairList.empty()
    if not len(pairs) and n_small:
        raise DataError(
            f"{', '.join(names)}: all {n_small} '{split}' pairs are smaller than the {crop}px crop and "
            "were skipped — lower --resolution or use --small-pairs pad"
        )
    return PairSet(pairs, names, counts, n_small, small, split)


def _check_files(sample: Sequence[Pair], location: Path, total: int) -> None:
    missing = [p for pair in sample for p in (pair.blur, pair.sharp) if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{location}: {len(missing)} of the {2 * len(sample)} image files checked (first {len(sample)} "
            f"of {total} pairs) are missing, e.g. {missing[0]} — were the images moved? Paths are "
            "relative to the manifest's directory; 'blurforge build-manifest --verify' checks them all"
        )


def count_missing(pairs: Sequence[Pair], manifest: int) -> tuple[int, int]:
    """(pairs with a missing file, pairs) in manifest number ``manifest``: for error messages."""
    mine = [p for p in pairs if p.manifest == manifest]
    return sum(not (os.path.isfile(p.blur) and os.path.isfile(p.sharp)) for p in mine), len(mine)


# ------------------------------------------------------------------------------------ the order


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Pair indices of one epoch (length ``n``): a permutation, or weighted draws with replacement.

    ``weights``: per-pair probabilities (sum 1) or None. Pure function of its arguments.
    """
    rng = np.random.default_rng([seed, 0, epoch])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights)


def pair_weights(counts: Sequence[int], manifest_weights: Sequence[float] | None) -> np.ndarray | None:
    """Per-pair draw probabilities giving manifest ``m`` the share ``w_m / sum(w)``; None = uniform."""
    if manifest_weights is None:
        return None
    if len(manifest_weights) != len(counts):
        raise DataError(f"{len(manifest_weights)} --manifest-weight value(s) for {len(counts)} --manifest(s) — give one per manifest")
    w = np.asarray(manifest_weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise DataError(f"--manifest-weight {list(manifest_weights)}: weights must be >= 0 with a positive sum")
    per_pair = np.concatenate([np.full(c, wm / c) if c else np.zeros(0) for c, wm in zip(counts, w)])
    return per_pair / per_pair.sum()


# ------------------------------------------------------------------------------ crop and flips


@dataclass(frozen=True)
class CropParams:
    """Where to crop a (padded) image and how to flip it; replayable."""

    top: int
    left: int
    pad_h: int  # rows added (reflect) before cropping, split top/bottom as pad_h//2, pad_h - pad_h//2
    pad_w: int
    hflip: bool
    vflip: bool


def crop_params(rng: np.random.Generator, height: int, width: int, size: int, flips: bool = True) -> CropParams:
    """A random ``size``×``size`` crop of an ``height``×``width`` image (padded first if smaller)."""
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    top = int(rng.integers(0, height + pad_h - size + 1))
    left = int(rng.integers(0, width + pad_w - size + 1))
    hflip = bool(rng.random() < 0.5) if flips else False
    vflip = bool(rng.random() < 0.5) if flips else False
    return CropParams(top, left, pad_h, pad_w, hflip, vflip)


def center_params(height: int, width: int, size: int) -> CropParams:
    """The centred ``size``×``size`` crop, no flips (validation)."""
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    return CropParams((height + pad_h - size) // 2, (width + pad_w - size) // 2, pad_h, pad_w, False, False)


def apply_crop(image: np.ndarray, p: CropParams, size: int) -> np.ndarray:
    """H×W×C -> size×size×C: reflect-pad by ``p.pad_*``, crop at (top, left), flip."""
    if p.pad_h or p.pad_w:
        image = np.pad(
            image, ((p.pad_h // 2, p.pad_h - p.pad_h // 2), (p.pad_w // 2, p.pad_w - p.pad_w // 2), (0, 0)),
            mode="reflect" if min(image.shape[:2]) > 1 else "edge",
        )
    out = image[p.top : p.top + size, p.left : p.left + size]
    if p.hflip:
        out = out[:, ::-1]
    if p.vflip:
        out = out[::-1]
    return np.ascontiguousarray(out)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 float32 in [0, 1], or uint8 / uint16 samples (scaled to [0, 1]) -> (3, H, W) float32 tensor."""
    chw = image.transpose(2, 0, 1)
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return torch.from_numpy(np.divide(chw, np.float32(np.iinfo(image.dtype).max), dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))


# ----------------------------------------------------------------------------------- datasets


def read_pair(pair: Pair, pairs: Sequence[Pair] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both images of ``pair`` as H×W×3 float32 sRGB in [0, 1]; a clear :class:`DataError` otherwise.

    With ``pairs`` given, a missing file's error also reports how many pairs of its manifest
    have missing files (a full stat pass, done only when the error happens).
    """
    blur, sharp = read_pair_pixels(pair, pairs)
    return to_tensor(blur).permute(1, 2, 0).numpy(), to_tensor(sharp).permute(1, 2, 0).numpy()


def read_pair_pixels(pair: Pair, pairs: Sequence[Pair] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_pair` without the conversion to float: both images' stored samples (H×W×3
    uint8 or uint16; the two may differ in bit depth), to be cropped before :func:`to_tensor`."""
    try:
        blur, _ = read_image_pixels(pair.blur)
        sharp, _ = read_image_pixels(pair.sharp)
    except ImageReadError as exc:
        extra = ""
        if pairs is not None and not os.path.isfile(exc.path):
            n, total = count_missing(pairs, pair.manifest)
            extra = f"; {n} of {total} pairs in this manifest have missing files"
        raise DataError(
            f"pair {pair.key!r}: {exc}{extra} — fix or rebuild the manifest "
            "('blurforge build-manifest --verify' lists every bad file)"
        ) from None
    if blur.shape != sharp.shape:
        raise DataError(
            f"pair {pair.key!r}: blurry {pair.blur} is {blur.shape[1]}x{blur.shape[0]} but sharp {pair.sharp} "
            f"is {sharp.shape[1]}x{sharp.shape[0]} — the pair is not aligned; rebuild it"
        )
    return blur, sharp


class PairCrops(torch.utils.data.Dataset):
    """Map-style dataset indexed by the global sample number ``g`` (see the module docstring).

    Images are read lazily in ``__getitem__``; only the epoch order (one int array) is kept.
    """

    def __init__(self, pairs: PairSet, size: int, seed: int, manifest_weights: Sequence[float] | None = None,
                 flips: bool = True):
        if len(pairs) == 0:
            raise DataError("no training pairs")
        self.pairs = pairs
        self.size = size
        self.seed = seed
        self.flips = flips
        self.weights = pair_weights(pairs.counts, manifest_weights)
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def epoch_length(self) -> int:
        return len(self.pairs)

    def position(self, g: int) -> tuple[int, int]:
        """Global sample number -> (epoch, position in epoch)."""
        return divmod(int(g), self.epoch_length)

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.epoch_length, self.seed, epoch, self.weights))
        return self._order[1]

    def params(self, g: int) -> tuple[Pair, CropParams]:
        """The pair and crop of sample ``g`` (reads no image)."""
        epoch, pos = self.position(g)
        pair = self.pairs.pairs[int(self.order(epoch)[pos])]
        rng = np.random.default_rng([self.seed, 1, epoch, pos])
        return pair, crop_params(rng, pair.height, pair.width, self.size, self.flips)

    def is_padded(self, g: int) -> bool:
        """Whether sample ``g`` is reflect-padded (by the manifest's width/height; reads no image)."""
        _, p = self.params(g)
        return bool(p.pad_h or p.pad_w)

    def __getitem__(self, g: int) -> dict:
        pair, p = self.params(g)
        blur, sharp = read_pair_pixels(pair, self.pairs.pairs)
        h, w = blur.shape[:2]
        if (h, w) != (pair.height, pair.width):  # the manifest's size disagrees with the file: redo
            epoch, pos = self.position(g)
            p = crop_params(np.random.default_rng([self.seed, 1, epoch, pos]), h, w, self.size, self.flips)
        return {
            "blurry": to_tensor(apply_crop(blur, p, self.size)),
            "sharp": to_tensor(apply_crop(sharp, p, self.size)),
            "key": pair.key,
            "sample": int(g),
            "padded": bool(p.pad_h or p.pad_w),
        }


class SampleStream(torch.utils.data.Sampler):
    """Endless global sample numbers for one rank: ``start + rank + world_size * k``, k = 0, 1, ..."""

    def __init__(self, start: int = 0, rank: int = 0, world_size: int = 1):
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        g = self.start + self.rank
        while True:
            yield g
            g += self.world_size


class FixedPairs(torch.utils.data.Dataset):
    """The first ``count`` pairs of a :class:`PairSet`, centre-cropped (padded) to ``size``: validation."""

    def __init__(self, pairs: PairSet, size: int, count: int):
        self.pairs = pairs
        self.items = pairs.pairs[:count]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        pair = self.items[i]
        blur, sharp = read_pair_pixels(pair, self.pairs.pairs)
        p = center_params(blur.shape[0], blur.shape[1], self.size)
        return {
            "blurry": to_tensor(apply_crop(blur, p, self.size)),
            "sharp": to_tensor(apply_crop(sharp, p, self.size)),
            "key": pair.key,
        }
