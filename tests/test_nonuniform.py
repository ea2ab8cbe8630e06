"""Object-wise blur: no halos, exact uniform limit, alignment, odd masks, RLE, and synthesize
--mode nonuniform end to end (re-rendering, determinism across workers)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from blurforge.blur import convolve, render_uniform, sample_realism, srgb_to_linear
from blurforge.kernels import generate_bank, read_bank
from blurforge.nonuniform import (
    composite_layers,
    layer_alpha,
    render_nonuniform,
    rle_decode,
    rle_encode,
)
from conftest import photo

H, W = 72, 96


@pytest.fixture(scope="module")
def kernels():
    """Five 15×15 Boracchi–Foi kernels (non-negative, sum 1, centred)."""
    bank = generate_bank(count=5, seed=11, size=15, length_min=5, length_max=30, progress=False)
    return [np.asarray(k, np.float32).reshape(15, 15) for k in bank.column("kernel").to_pylist()]


def delta(size=15):
    k = np.zeros((size, size), np.float32)
    k[size // 2, size // 2] = 1
    return k


def disc(cy, cx, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


MASK_SETS = {
    "none": [],
    "one": [disc(36, 48, 15)],
    "overlapping": [disc(36, 40, 22), disc(30, 50, 12), disc(40, 45, 8)],
    "empty": [np.zeros((H, W), bool), disc(20, 20, 10)],
    "everything": [np.ones((H, W), bool), disc(36, 48, 10)],
    "at the border": [disc(0, 0, 25), disc(H, W, 20)],
}


def sharp_lin():
    return srgb_to_linear(photo("astronaut", (W, H)).astype(np.float32) / 255)


# ------------------------------------------------------------------------------- compositing


@pytest.mark.parametrize("masks", MASK_SETS.values(), ids=MASK_SETS.keys())
@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_constant_image_stays_constant(masks, value, kernels):
    """No halo and no dark border: every kernel blurs the whole image, never a masked one."""
    img = np.full((H, W, 3), value, np.float32)
    out = composite_layers(img, kernels[0], masks, kernels[1 : 1 + len(masks)] or [], dilate=2, feather=1.5)
    assert np.abs(out - value).max() < 1e-5


@pytest.mark.parametrize("masks", MASK_SETS.values(), ids=MASK_SETS.keys())
def test_equal_kernels_give_exactly_the_uniform_blur(masks, kernels):
    img = sharp_lin()
    k = kernels[2]
    out = composite_layers(img, k, masks, [k] * len(masks))
    assert np.abs(out - convolve(img, k)).max() <= 1e-6


@pytest.mark.parametrize("realism", [dict(noise="rsblur", saturation=True), dict(noise="none", saturation=False)])
def test_equal_kernels_match_render_uniform_with_realism(realism, kernels):
    """Saturation and noise as in uniform synthesis (same rng, same result)."""
    srgb = photo("coffee", (W, H)).astype(np.float32) / 255
    srgb[10:20, 10:30] = 1.0  # clipped highlights for the saturation term
    params = sample_realism(np.random.default_rng(0), **realism)
    k = kernels[1]
    uni = render_uniform(srgb, k, params, np.random.default_rng(5))
    non = render_nonuniform(srgb, k, MASK_SETS["overlapping"], [k] * 3, params, np.random.default_rng(5))
    assert np.abs(uni - non).max() <= 1e-6


@pytest.mark.parametrize("masks", MASK_SETS.values(), ids=MASK_SETS.keys())
def test_centred_delta_in_every_layer_reproduces_the_image(masks):
    """Kernels are centred and the compositor shifts nothing: the sharp target stays aligned."""
    img = sharp_lin()
    out = composite_layers(img, delta(), masks, [delta()] * len(masks))
    assert np.array_equal(out, img)


def test_objects_get_their_own_blur(kernels):
    """Deep inside an object: its kernel's blur; far outside every object: the background's."""
    h, w = 160, 200
    img = srgb_to_linear(photo("astronaut", (w, h)).astype(np.float32) / 255)
    big, small = disc(80, 100, 60, h, w), disc(80, 100, 25, h, w)  # small lies on top of big
    out = composite_layers(img, kernels[0], [big, small], [kernels[1], kernels[2]], dilate=2, feather=1.0)
    reach = 7 + 2 + 4  # kernel radius + dilation + feather tail
    inner = disc(80, 100, 25 - reach, h, w)
    ring = disc(80, 100, 60 - reach, h, w) & ~disc(80, 100, 25 + reach, h, w)
    outside = ~disc(80, 100, 60 + reach, h, w)
    for region, k in ((inner, kernels[2]), (ring, kernels[1]), (outside, kernels[0])):
        assert region.sum() > 20
        assert np.abs(out[region] - convolve(img, k)[region]).max() < 1e-5


def test_empty_mask_changes_nothing_and_full_mask_replaces_everything(kernels):
    img = sharp_lin()
    bg = convolve(img, kernels[0])
    assert np.array_equal(composite_layers(img, kernels[0], [np.zeros((H, W), bool)], [kernels[1]]), bg)
    full = composite_layers(img, kernels[0], [np.ones((H, W), bool)], [kernels[1]])
    assert np.abs(full - convolve(img, kernels[1])).max() < 1e-5


def test_alpha_is_the_motion_smeared_silhouette(kernels):
    """alpha = smooth(K ⊛ dilate(mask)): soft, in [0, 1], reaching beyond the mask by the kernel."""
    m = disc(36, 48, 10)
    a = layer_alpha(m, kernels[3], dilate=2, feather=1.0)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.all(a[disc(36, 48, 3)] > 0.99)
    assert np.all(a[~disc(36, 48, 10 + 7 + 2 + 5)] < 1e-4)
    soft = (a > 0.05) & (a < 0.95)
    assert soft.sum() > 50  # no hard edge
    sharp_edge = layer_alpha(m, delta(), dilate=0, feather=0)
    assert np.array_equal(sharp_edge, m.astype(np.float32))


def test_bad_inputs_are_named():
    img = np.zeros((H, W, 3), np.float32)
    with pytest.raises(ValueError, match="one kernel per mask"):
        composite_layers(img, delta(), [disc(1, 1, 1)], [])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        composite_layers(img, delta(), [np.zeros((5, 5), bool)], [delta()])
    with pytest.raises(ValueError, match="sum to 1"):
        render_nonuniform(img, delta() * 2, [], [], None, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ RLE


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((H, W), bool),
        np.ones((H, W), bool),
        disc(36, 48, 20),
        disc(0, 0, 30),  # starts with ones
        np.eye(40, 60, dtype=bool),
        np.random.default_rng(0).random((33, 47)) < 0.5,  # worst case, many runs
        np.zeros((1, 1), bool) | True,
    ],
)
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)
    back = rle_decode(rle)
    assert back.dtype == bool and np.array_equal(back, mask)


def test_rle_is_compact_and_column_major():
    m = disc(240, 320, 100, 480, 640)
    rle = rle_encode(m)
    assert len(rle["counts"]) < 1000  # vs 307200 pixels
    # COCO order: column-major runs starting with zeros — a single pixel at row 1, col 0
    one = np.zeros((3, 2), bool)
    one[1, 0] = True
    assert rle_encode(one)["counts"] == "114"  # runs 1, 1, 4: one char each (5-bit groups + 48)
    other = np.zeros((3, 2), bool)
    other[0, 1] = True
    assert rle_encode(other)["counts"] == "312"  # column-major: the pixel is the 4th


def test_rle_rejects_garbage():
    with pytest.raises(ValueError, match="COCO RLE"):
        rle_decode({"counts": "12"})
    with pytest.raises(ValueError, match="expected H\\*W"):
        rle_decode({"size": [4, 4], "counts": "13"})


# --------------------------------------------------------------------------- synthesize, end to end


def run(photos, bank, out, **kw):
    from blurforge.synthesize import run_synthesize

    args = dict(seed=7, mode="nonuniform", segmenter="classical", max_objects=4, progress=False)
    args.update(kw)
    return run_synthesize(photos, bank, out, **args)


def rows_of(out):
    return {r["key"]: r for r in ds.dataset(out / "manifest", format="parquet").to_table().to_pylist()}


def test_nonuniform_rows_record_objects_and_rerender_exactly(photos_dir, small_bank, tmp_path):
    from blurforge.imageio import encode_image, read_image, sha256_bytes
    from blurforge.synthesize import rerender

    out = tmp_path / "out"
    s = run(photos_dir, small_bank, out, noise="rsblur", saturation=True, pairs_per_image=2)
    assert s.pairs == 8 and s.errors == 0 and not s.failed
    bank = read_bank(small_bank)
    n_objects = []
    for row in rows_of(out).values():
        assert row["source"] == "nonuniform" and row["key"].startswith("nonuniform/")
        p = json.loads(row["params"])
        assert p["segmenter"]["name"] == "classical" and p["segmenter"]["resolution"] == [96, 64]
        assert p["kernel_id"] in bank.ids
        objects = p["objects"]
        n_objects.append(len(objects))
        assert len(objects) <= 4
        assert [o["order"] for o in objects] == list(range(len(objects)))
        assert [o["area"] for o in objects] == sorted((o["area"] for o in objects), reverse=True)
        for o in objects:
            assert o["kernel_id"] in bank.ids and o["kernel_length"] > 0
            mask = rle_decode(o["mask"])
            assert mask.shape == (row["height"], row["width"]) and int(mask.sum()) == o["area"]
        blurry = rerender(row, bank, out)
        assert sha256_bytes(encode_image(blurry, bit_depth=p["bit_depth"], fmt="png")) == row["blur_sha256"]
        sharp, _ = read_image(out / row["sharp_path"])
        assert sharp.shape == blurry.shape
    assert max(n_objects) >= 2  # photographs do get several objects
    a, b = rows_of(out)["nonuniform/seed7/astronaut.png/0"], rows_of(out)["nonuniform/seed7/astronaut.png/1"]
    pa_, pb = json.loads(a["params"]), json.loads(b["params"])
    assert [o["mask"] for o in pa_["objects"]] == [o["mask"] for o in pb["objects"]]  # segmented once
    assert [o["kernel_id"] for o in pa_["objects"]] != [o["kernel_id"] for o in pb["objects"]]  # own kernels


def test_nonuniform_same_output_for_any_worker_count(photos_dir, small_bank, tmp_path):
    for workers in (1, 2):
        run(photos_dir, small_bank, tmp_path / f"w{workers}", workers=workers, shard_size=1, noise="rsblur")
    r1, r2 = rows_of(tmp_path / "w1"), rows_of(tmp_path / "w2")
    assert r1.keys() == r2.keys() and len(r1) == 4
    for k in r1:
        assert r1[k]["blur_sha256"] == r2[k]["blur_sha256"]
        assert r1[k]["params"] == r2[k]["params"]


def test_zero_objects_is_the_uniform_blur(photos_dir, small_bank, tmp_path):
    """--max-objects 0: the background kernel alone, i.e. exactly a uniform pair."""
    from blurforge.imageio import read_image

    out = tmp_path / "out"
    run(photos_dir, small_bank, out, max_objects=0)
    bank = read_bank(small_bank)
    for row in rows_of(out).values():
        p = json.loads(row["params"])
        assert p["objects"] == []
        sharp, _ = read_image(out / row["sharp_path"])
        uni = render_uniform(sharp, bank.kernel(p["kernel_id"]), p["realism"], np.random.default_rng([row["seed"], 1]))
        blurry, _ = read_image(out / row["blur_path"])
        assert np.abs(blurry - np.rint(uni * 255) / 255).max() < 1e-6


def test_resume_refuses_other_segmenter_settings(photos_dir, small_bank, tmp_path):
    out = tmp_path / "out"
    run(photos_dir, small_bank, out)
    with pytest.raises(ValueError, match="other settings \\(segmenter\\)"):
        run(photos_dir, small_bank, out, max_objects=2)


def test_sam2_without_checkpoint_fails_before_any_work(photos_dir, small_bank, tmp_path):
    with pytest.raises(FileNotFoundError, match="--sam2-checkpoint"):
        run(photos_dir, small_bank, tmp_path / "out", segmenter="sam2")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--segmenter must be one of"):
        run(photos_dir, small_bank, tmp_path / "out", segmenter="felzenszwalb")


def _cli_has_segmenter_flag() -> bool:
    from blurforge.cli import build_parser

    return "--segmenter" in build_parser()._subparsers._group_actions[0].choices["synthesize"].format_help()


def test_cli_nonuniform_end_to_end(photos_dir, small_bank, tmp_path, capsys):
    if not _cli_has_segmenter_flag():
        pytest.skip("blurforge synthesize has no --segmenter flag yet")
    from blurforge.cli import main

    out = tmp_path / "out"
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out", str(out),
                 "--seed", "7", "--quiet", "--mode", "nonuniform", "--segmenter", "classical",
                 "--max-objects", "3"]) == 0
    assert "4 pairs, 0 errors" in capsys.readouterr().out
    rows = rows_of(out)
    assert all(r["source"] == "nonuniform" for r in rows.values())
    assert all(len(json.loads(r["params"])["objects"]) <= 3 for r in rows.values())
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out",
                 str(tmp_path / "o2"), "--mode", "nonuniform", "--segmenter", "sam2", "--sam2-checkpoint",
                 str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
