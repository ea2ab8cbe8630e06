"""deblurdiff.data: aligned crops, a reproducible and resumable sample stream, clear manifest errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from blurforge.cli import main as blurforge
from conftest import photo, write_png
from deblurdiff.data import (
    DataError,
    PairCrops,
    SampleStream,
    apply_crop,
    crop_params,
    epoch_order,
    load_pairs,
    pair_weights,
    read_pair,
)


@pytest.fixture(scope="module")
def big_dir(small_bank, tmp_path_factory):
    """2 pairs of 128×112 photographs (larger than an 100px crop)."""
    root = tmp_path_factory.mktemp("big")
    for name in ("camera", "coins"):
        write_png(root / "photos" / f"{name}.png", photo(name, (128, 112)))
    assert blurforge(["synthesize", "--sharp", str(root / "photos"), "--kernels", str(small_bank),
                      "--out", str(root / "pairs"), "--seed", "2", "--key-prefix", "big", "--quiet"]) == 0
    return root / "pairs"


def test_crop_params_property_grid():
    rng = np.random.default_rng(0)
    for h, w, size in [(64, 96, 32), (64, 96, 64), (40, 30, 48), (7, 100, 8), (1, 1, 4)]:
        for _ in range(20):
            p = crop_params(rng, h, w, size)
            assert p.pad_h == max(0, size - h) and p.pad_w == max(0, size - w)
            assert 0 <= p.top <= h + p.pad_h - size and 0 <= p.left <= w + p.pad_w - size
            img = rng.random((h, w, 3), dtype=np.float32)
            assert apply_crop(img, p, size).shape == (size, size, 3)


def test_crops_of_blurry_and_sharp_are_aligned():
    """The same params applied to two images cut the same pixels: coordinates survive the trip."""
    h, w, size = 40, 30, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([yy, xx, yy * 0], axis=-1)
    rng = np.random.default_rng(5)
    for _ in range(10):
        p = crop_params(rng, h, w, size)
        a, b = apply_crop(coords, p, size), apply_crop(coords.copy(), p, size)
        assert np.array_equal(a, b)
        # reflect padding mirrors without repeating the edge: neighbours differ by exactly 1
        assert np.all(np.abs(np.diff(a[..., 0], axis=0)) == 1)
        assert np.all(np.abs(np.diff(a[..., 1], axis=1)) == 1)


def test_epoch_order_is_a_permutation_and_a_pure_function():
    a, b = epoch_order(10, 3, 0), epoch_order(10, 3, 0)
    assert np.array_equal(a, b) and sorted(a) == list(range(10))
    assert not np.array_equal(epoch_order(10, 3, 1), a)
    assert not np.array_equal(epoch_order(10, 4, 0), a)


def test_manifest_weights_set_the_share_of_draws():
    w = pair_weights([10, 1000], [3, 1])
    draws = np.concatenate([epoch_order(1010, 0, e, w) for e in range(20)])
    share = np.mean(draws < 10)
    assert abs(share - 0.75) < 0.02
    with pytest.raises(DataError, match="one per manifest"):
        pair_weights([10, 10], [1])


def test_stream_is_reproducible_and_rank_sharded(pairs_dir):
    pairs = load_pairs([pairs_dir], crop=32)
    ds = PairCrops(pairs, 32, seed=7)
    again = PairCrops(load_pairs([pairs_dir], crop=32), 32, seed=7)
    for g in (0, 5, 8, 23):  # across epochs
        x, y = ds[g], again[g]
        assert x["key"] == y["key"] and torch.equal(x["blurry"], y["blurry"]) and torch.equal(x["sharp"], y["sharp"])
        assert x["blurry"].shape == (3, 32, 32) and x["blurry"].dtype == torch.float32
        assert 0 <= x["blurry"].min() and x["blurry"].max() <= 1
    # one epoch visits every pair exactly once
    assert sorted(ds[g]["key"] for g in range(8)) == sorted(p.key for p in pairs.pairs)
    assert ds.position(19) == (2, 3)
    # two ranks interleave the global stream; a resumed stream starts where it stopped
    take = lambda s, n: [g for g, _ in zip(iter(s), range(n))]  # noqa: E731
    r0, r1 = take(SampleStream(4, 0, 2), 3), take(SampleStream(4, 1, 2), 3)
    assert sorted(r0 + r1) == list(range(4, 10))
    assert take(SampleStream(6), 2) == [6, 7]
    # a different seed gives a different stream
    other = PairCrops(pairs, 32, seed=8)
    assert [ds[g]["key"] for g in range(8)] != [other[g]["key"] for g in range(8)]


def test_small_pairs_padded_or_skipped_and_counted(pairs_dir, big_dir):
    padded = load_pairs([pairs_dir, big_dir], crop=100, small="pad")
    assert len(padded) == 10 and padded.small == 8
    ds = PairCrops(padded, 100, seed=0)
    flags = [ds.is_padded(g) for g in range(10)]
    assert sum(flags) == 8
    g = flags.index(True)
    item = ds[g]
    assert item["padded"] and item["blurry"].shape == (3, 100, 100)
    skipped = load_pairs([pairs_dir, big_dir], crop=100, small="skip")
    assert len(skipped) == 2 and skipped.small == 8 and skipped.counts == [0, 2]
    with pytest.raises(DataError, match="smaller than the 100px crop"):
        load_pairs([pairs_dir], crop=100, small="skip")


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="no such manifest"):
        load_pairs([tmp_path / "nope.parquet"])


def test_wrong_schema(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    with pytest.raises(DataError, match="schema_version"):
        load_pairs([path])


def test_no_train_rows(pairs_dir, tmp_path):
    out = tmp_path / "all_test.parquet"
    assert blurforge(["build-manifest", str(pairs_dir), "--out", str(out), "--test-fraction", "1", "--quiet"]) == 0
    with pytest.raises(DataError, match="no 'train' rows"):
        load_pairs([out])
    assert len(load_pairs([out], split="test")) == 8


def test_missing_images_up_front_and_when_read(pairs_dir, tmp_path):
    copy = tmp_path / "pairs"
    shutil.copytree(pairs_dir, copy)
    pairs = load_pairs([copy])
    first, last = pairs.pairs[0], pairs.pairs[-1]
    (copy / first.blur[len(str(copy)) + 1:]).unlink()
    with pytest.raises(DataError, match="1 of the 16 image files checked .* missing"):
        load_pairs([copy])
    # not among the checked ones: found when read, with a count
    (copy / last.sharp[len(str(copy)) + 1:]).unlink()
    pairs = load_pairs([copy], check_files=0)
    with pytest.raises(DataError, match="2 of 8 pairs in this manifest have missing files"):
        read_pair(pairs.pairs[-1], pairs.pairs)


def test_pairs_are_stored_column_wise_and_pickle_small(pairs_dir):
    import pickle

    pairs = load_pairs([pairs_dir, pairs_dir], crop=32).pairs
    assert len(pairs) == 16 and pairs[0].key == pairs[8].key and pairs[-1] == pairs[15]
    assert pairs[0].manifest == 0 and pairs[8].manifest == 1 and Path(pairs[3].blur).is_file()
    assert [p.key for p in pairs[2:5]] == [pairs[i].key for i in range(2, 5)]
    again = pickle.loads(pickle.dumps(pairs))
    assert [p for p in again] == [p for p in pairs]
    # no Python object per pair: the pickle is Arrow buffers, a few hundred bytes per pair at most
    assert len(pickle.dumps(pairs)) < 16 * 300 + 4096


def test_crop_first_equals_decoding_to_float_then_cropping(tmp_path):
    """Items come from crops of the stored 8/16-bit samples; they equal cropping the float image that
    read_image returns, bit for bit, with padding and flips, for 8-bit and 16-bit files."""
    import cv2
    import pyarrow as pa

    from blurforge.imageio import read_image
    from deblurdiff.data import PairList, PairSet, center_params, to_tensor, FixedPairs

    rng = np.random.default_rng(0)
    rows = []
    for key, dtype, (w, h) in (("eight", np.uint8, (70, 50)), ("sixteen", np.uint16, (45, 80))):
        top = np.iinfo(dtype).max
        for kind in ("blur", "sharp"):
            img = rng.integers(0, top + 1, (h, w, 3), dtype=np.int64).astype(dtype)
            assert cv2.imwrite(str(tmp_path / f"{key}_{kind}.png"), img)
        rows.append({"key": key, "blur_path": f"{key}_blur.png", "sharp_path": f"{key}_sharp.png",
                     "width": w, "height": h, "manifest": 0})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("key", pa.string()), ("blur_path", pa.string()), ("sharp_path", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("manifest", pa.int32())]))
    pairs = PairSet(PairList(table, [str(tmp_path)]), [str(tmp_path)], [2], 2, "pad", "train")
    ds = PairCrops(pairs, 64, seed=3)
    for g in range(8):
        item = ds[g]
        pair, p = ds.params(g)
        for kind, path in (("blurry", pair.blur), ("sharp", pair.sharp)):
            want = to_tensor(apply_crop(read_image(path)[0], p, 64))
            assert item[kind].dtype == torch.float32 and torch.equal(item[kind], want), (g, kind)
    val = FixedPairs(pairs, 64, 2)[1]
    full = read_image(pairs.pairs[1].sharp)[0]
    assert torch.equal(val["sharp"], to_tensor(apply_crop(full, center_params(*full.shape[:2], 64), 64)))
