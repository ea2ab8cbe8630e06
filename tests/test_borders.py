"""Valid borders: pairs cropped by the reach of their kernels equal "blur a larger photograph and
crop"; reflected borders do not; crops cover every kernel; rows re-render; tiny images error."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
import scipy.ndimage as ndi
from scipy.signal import fftconvolve

from blurforge.cli import main
from blurforge.kernels import KernelBank, border_reach, generate_bank, read_bank, write_bank
from conftest import photo, write_png

MARGIN = 24  # > the reach of any kernel of the 31 px bank below


def _rows(out: Path) -> dict:
    return {r["key"]: r for r in ds.dataset(out / "manifest", format="parquet").to_table().to_pylist()}


def _synth(sharp, bank, out, *extra) -> int:
    return main(["synthesize", "--sharp", str(sharp), "--kernels", str(bank), "--out", str(out), "--seed", "3",
                 "--quiet", *map(str, extra)])


@pytest.fixture(scope="module")
def wide_bank(tmp_path_factory) -> Path:
    """Kernels up to 31x31 from long trajectories, each reaching further on one side than on
    the other along both axes (so a crop with sides swapped would show)."""
    path = tmp_path_factory.mktemp("wide") / "kernels.parquet"
    table = generate_bank(count=40, seed=4, size=31, length_min=60, length_max=250, progress=False)
    bank = KernelBank(table)
    reach = [border_reach(bank.kernel_at(i)) for i in range(len(bank))]
    keep = [i for i, r in enumerate(reach) if r["top"] != r["bottom"] and r["left"] != r["right"]]
    assert len(keep) >= 4
    write_bank(table.take(keep), path)
    return path


@pytest.fixture(scope="module")
def larger_photo() -> np.ndarray:
    """A real photograph, 176x160 RGB uint8; the pairs see only its interior (the margin cut)."""
    return photo("astronaut", (176, 160))


def _write_png16(path: Path, rgb16: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb16[..., ::-1]))


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.int64)


def _srgb_to_linear(x):  # IEC 61966-2-1, written out in float64 (not blurforge's float32 code)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _reference(larger16: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """16-bit codes of the larger photograph blurred by ``kernel`` with no border at all: the
    full linear convolution (float64 FFT), indexed so that ``[y, x]`` is larger-image pixel
    ``(y, x)``."""
    k = kernel.astype(np.float64)
    lin = _srgb_to_linear(larger16.astype(np.float64) / 65535)
    full = np.stack([fftconvolve(lin[..., c], k, mode="full") for c in range(3)], axis=-1)
    cy, cx = k.shape[0] // 2, k.shape[1] // 2  # blur(y) = full[y + cy]
    h, w = larger16.shape[:2]
    return np.round(_linear_to_srgb(full[cy : cy + h, cx : cx + w]) * 65535).astype(np.int64)


def test_border_reach_is_where_a_zero_padded_convolution_loses_mass():
    """Independent reference: convolve an all-ones image with zero padding (scipy); the pixels
    that read only real content keep the kernel's whole mass."""
    rng = np.random.default_rng(0)
    for shape in [(7, 7), (9, 5), (6, 8), (15, 15)]:
        for _ in range(5):
            k = np.where(rng.random(shape) < 0.15, rng.random(shape), 0.0)
            k[rng.integers(shape[0]), rng.integers(shape[1])] = 1.0  # at least one tap, anywhere
            h, w = 40, 33
            ones = ndi.convolve(np.ones((h, w)), k, mode="constant", cval=0.0)
            valid = np.isclose(ones, k.sum(), rtol=0, atol=1e-12)
            r = border_reach(k)
            expected = np.zeros((h, w), bool)
            expected[r["top"] : h - r["bottom"], r["left"] : w - r["right"]] = True
            assert np.array_equal(valid, expected), (shape, r)
    assert border_reach(np.zeros((5, 5))) == {"top": 0, "left": 0, "bottom": 0, "right": 0}
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    assert border_reach(delta) == {"top": 0, "left": 0, "bottom": 0, "right": 0}


def test_valid_pairs_equal_the_interior_of_a_larger_photograph_blurred(wide_bank, larger_photo, tmp_path):
    """16-bit PNGs, so that float round-off (~1 code in 65535) and a border effect (tens to
    thousands of codes) are far apart."""
    sharp_dir = tmp_path / "sharp"
    larger = larger_photo.astype(np.uint16) * 257
    window = larger[MARGIN:-MARGIN, MARGIN:-MARGIN]
    _write_png16(sharp_dir / "window.png", window)
    out, reflect = tmp_path / "valid", tmp_path / "reflect"
    assert _synth(sharp_dir, wide_bank, out, "--pairs-per-image", 6) == 0
    assert _synth(sharp_dir, wide_bank, reflect, "--pairs-per-image", 6, "--borders", "reflect") == 0
    bank = read_bank(wide_bank)
    h, w = window.shape[:2]
    band_errors = []
    for key, row in _rows(out).items():
        p = json.loads(row["params"])
        c = p["crop"]
        assert p["borders"] == "valid" and c == border_reach(bank.kernel(p["kernel_id"]))
        assert (row["width"], row["height"]) == (w - c["left"] - c["right"], h - c["top"] - c["bottom"])
        reference = _reference(larger, bank.kernel(p["kernel_id"]))
        top, left = MARGIN + c["top"], MARGIN + c["left"]
        expected = reference[top : top + row["height"], left : left + row["width"]]
        blurry = _read_rgb(out / row["blur_path"])
        assert blurry.shape == expected.shape
        assert np.abs(blurry - expected).max() <= 2, key  # float32 round-off, nothing more
        sharp = _read_rgb(out / row["sharp_path"])
        assert np.array_equal(sharp, window[c["top"] : h - c["bottom"], c["left"] : w - c["right"]])

        # The same sample with reflected borders: full size, equal inside, wrong in the band.
        old = _rows(reflect)[key]
        assert json.loads(old["params"])["crop"] == {"top": 0, "left": 0, "bottom": 0, "right": 0}
        assert (old["width"], old["height"]) == (w, h)
        full = _read_rgb(reflect / old["blur_path"])
        inside = full[c["top"] : h - c["bottom"], c["left"] : w - c["right"]]
        assert np.array_equal(inside, blurry)
        band = np.ones((h, w), bool)
        band[c["top"] : h - c["bottom"], c["left"] : w - c["right"]] = False
        band_errors.append(np.abs(full - reference[MARGIN : MARGIN + h, MARGIN : MARGIN + w])[band])
    band = np.concatenate(band_errors)
    assert band.mean() > 257 and band.max() >= 20 * 257  # reflected content: wrong by whole 8-bit codes


def test_nonuniform_crop_covers_every_kernel_of_the_row(small_bank, tmp_path):
    """The crop is the per-side maximum over the background's and every object's kernel (each
    checked against where a zero-padded convolution of ones keeps its mass)."""
    d = tmp_path / "photos"
    write_png(d / "coffee.png", photo("coffee", (120, 90)))
    out = tmp_path / "out"
    assert main(["synthesize", "--sharp", str(d), "--kernels", str(small_bank), "--out", str(out), "--seed", "1",
                 "--mode", "nonuniform", "--max-objects", "4", "--pairs-per-image", "3", "--quiet"]) == 0
    bank = read_bank(small_bank)
    seen_objects = 0
    for row in _rows(out).values():
        p = json.loads(row["params"])
        ids = [p["kernel_id"]] + [o["kernel_id"] for o in p["objects"]]
        seen_objects += len(p["objects"])
        valid = np.ones((90, 120), bool)
        for kid in ids:
            k = bank.kernel(kid).astype(np.float64)
            valid &= np.isclose(ndi.convolve(np.ones((90, 120)), k, mode="constant"), k.sum(), atol=1e-9)
        rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
        c = p["crop"]
        assert (c["top"], 89 - c["bottom"], c["left"], 119 - c["right"]) == (rows[0], rows[-1], cols[0], cols[-1])
        assert (row["width"], row["height"]) == (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    assert seen_objects > 0


def test_rows_rerender_exactly_from_their_source(wide_bank, larger_photo, tmp_path):
    from blurforge.imageio import encode_image, sha256_bytes
    from blurforge.synthesize import rerender

    sharp_dir = tmp_path / "sharp"
    write_png(sharp_dir / "a.png", larger_photo[:100, :120])
    bank = read_bank(wide_bank)
    for borders in ("valid", "reflect"):
        out = tmp_path / borders
        assert _synth(sharp_dir, wide_bank, out, "--pairs-per-image", 2, "--noise", "rsblur", "--borders",
                      borders) == 0
        for row in _rows(out).values():
            blurry = rerender(row, bank, out)  # the source is found through out/run.json
            assert sha256_bytes(encode_image(blurry, fmt="png")) == row["blur_sha256"]
            assert blurry.shape[:2] == (row["height"], row["width"])
    # A manifest moved away from its run.json needs the source directory for cropped rows ...
    row = next(iter(_rows(tmp_path / "valid").values()))
    moved = tmp_path / "moved"
    (moved / Path(row["sharp_path"]).parent).mkdir(parents=True)
    (moved / row["sharp_path"]).write_bytes((tmp_path / "valid" / row["sharp_path"]).read_bytes())
    with pytest.raises(FileNotFoundError, match="sharp_root"):
        rerender(row, bank, moved)
    blurry = rerender(row, bank, moved, sharp_root=sharp_dir)
    assert sha256_bytes(encode_image(blurry, fmt="png")) == row["blur_sha256"]
    # ... and refuses a source that does not crop to the stored sharp image.
    other = tmp_path / "other"
    write_png(other / "a.png", larger_photo[1:101, :120])
    with pytest.raises(ValueError, match="not the stored sharp image"):
        rerender(row, bank, moved, sharp_root=other)
    # Rows written before borders were recorded (no crop) re-render from the stored image alone.
    old = next(iter(_rows(tmp_path / "reflect").values()))
    params = json.loads(old["params"])
    del params["crop"], params["borders"]
    old["params"] = json.dumps(params)
    blurry = rerender(old, bank, tmp_path / "reflect")
    assert sha256_bytes(encode_image(blurry, fmt="png")) == old["blur_sha256"]


def test_an_image_too_small_for_its_crop_is_an_error_row_naming_it_and_the_fix(tmp_path, capsys):
    """A bank with long trajectories kept at their own size (--working-size): a 40x40 image is
    larger than the bank's smallest kernels, but nothing of it survives the reach of its largest."""
    path = tmp_path / "kernels.parquet"
    table = generate_bank(count=8, seed=1, size=15, working_size=151, length_min=1, length_max=100,
                          params_override={"anxiety": 0.0}, progress=False)
    write_bank(table, path)
    bank = KernelBank(table)
    assert bank.size < 40 < bank.sizes.max()
    d = tmp_path / "photos"
    write_png(d / "small.png", photo("chelsea", (40, 40)))
    assert _synth(d, path, tmp_path / "reflect", "--pairs-per-image", 8, "--borders", "reflect") == 0
    reflected = _rows(tmp_path / "reflect")
    assert len(reflected) == 8 and {(r["width"], r["height"]) for r in reflected.values()} == {(40, 40)}
    assert _synth(d, path, tmp_path / "valid", "--pairs-per-image", 8) == 0
    rows = _rows(tmp_path / "valid")
    errors = ds.dataset(tmp_path / "valid" / "errors", format="parquet").to_table().to_pylist()
    assert rows and errors and len(rows) + len(errors) == 8
    for e in errors:
        assert e["stage"] == "crop" and "small.png" in e["error"] and "--borders reflect" in e["error"]
        r = border_reach(bank.kernel(json.loads(reflected[e["key"]]["params"])["kernel_id"]))
        assert r["top"] + r["bottom"] >= 40 or r["left"] + r["right"] >= 40
    capsys.readouterr()


def test_borders_are_part_of_the_run_settings(small_bank, photos_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _synth(photos_dir, small_bank, out) == 0
    assert _synth(photos_dir, small_bank, out, "--borders", "reflect") == 2
    assert "other settings (borders)" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["borders"] == "valid"
