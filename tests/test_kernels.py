"""Boracchi–Foi kernel bank: invariants as property grids, reproducibility, files."""

from __future__ import annotations

import cmath
import functools
import math

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blurforge.kernels import (
    BANK_SCHEMA,
    KernelBank,
    TrajectoryDoesNotFitError,
    bank_summary,
    generate_bank,
    kernel_contact_sheet,
    psf_from_trajectory,
    read_bank,
    render_kernel,
    sample_trajectory_params,
    sample_walk_draws,
    trajectories,
    write_bank,
)

# (size, length_min, length_max): short and long trajectories for each window size.
GRID = [(15, 1.0, 40.0), (15, 40.0, 120.0), (31, 1.0, 300.0), (63, 1.0, 1000.0), (63, 900.0, 1000.0)]
SEEDS = [0, 7]
COUNT = 24


@functools.lru_cache(maxsize=None)
def _bank(size, length_min, length_max, seed, count=COUNT, exposure=1.0):
    return generate_bank(
        count, seed, size=size, length_min=length_min, length_max=length_max, exposure=exposure, progress=False
    )


def _kernels(table: pa.Table) -> np.ndarray:
    return KernelBank(table).kernels


def _moments(kernels: np.ndarray):
    """Centroid (row, col) and 2x2 covariance of each kernel."""
    s = kernels.shape[-1]
    rows, cols = np.mgrid[:s, :s].astype(np.float64)
    k = kernels.astype(np.float64)
    cr = (k * rows).sum((1, 2))
    cc = (k * cols).sum((1, 2))
    dr, dc = rows - cr[:, None, None], cols - cc[:, None, None]
    cov = np.stack([np.stack([(k * dr * dr).sum((1, 2)), (k * dr * dc).sum((1, 2))], -1),
                    np.stack([(k * dr * dc).sum((1, 2)), (k * dc * dc).sum((1, 2))], -1)], -2)
    return cr, cc, cov


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size,length_min,length_max", GRID)
def test_kernels_are_odd_square_nonnegative_and_sum_to_one(size, length_min, length_max, seed):
    table = _bank(size, length_min, length_max, seed)
    kernels = _kernels(table)
    assert table.schema.equals(BANK_SCHEMA)
    assert kernels.shape == (COUNT, size, size) and size % 2 == 1
    assert kernels.dtype == np.float32
    assert kernels.min() >= 0
    np.testing.assert_allclose(kernels.sum((1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(table.column("raw_sum").to_numpy(), 1.0, rtol=1e-9)  # exposure 1
    lengths = table.column("length").to_numpy()
    assert np.all((lengths >= length_min) & (lengths <= length_max))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size,length_min,length_max", GRID)
def test_kernel_centroid_is_the_centre_pixel(size, length_min, length_max, seed):
    cr, cc, _ = _moments(_kernels(_bank(size, length_min, length_max, seed)))
    centre = (size - 1) / 2
    np.testing.assert_allclose(cr, centre, atol=1e-3)
    np.testing.assert_allclose(cc, centre, atol=1e-3)


@pytest.mark.parametrize("size,length_min,length_max", GRID[:3])
def test_same_seed_reproduces_and_other_seeds_differ(size, length_min, length_max):
    again = generate_bank(COUNT, SEEDS[0], size=size, length_min=length_min, length_max=length_max, progress=False)
    assert again.equals(_bank(size, length_min, length_max, SEEDS[0]))
    a = _kernels(_bank(size, length_min, length_max, SEEDS[0]))
    b = _kernels(_bank(size, length_min, length_max, SEEDS[1]))
    assert not any(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("shared_file", [True, False])
def test_workers_and_chunking_do_not_change_the_bank(monkeypatch, shared_file):
    import os

    import blurforge.kernels as kernels_module

    used, scratch = [], kernels_module._scratch_file

    def recorded_scratch_file(nbytes):  # None sends the kernels back through the pipes
        used.append(scratch(nbytes) if shared_file else None)
        return used[-1]

    monkeypatch.setattr(kernels_module, "_scratch_file", recorded_scratch_file)
    one = generate_bank(30, 3, size=31, length_min=1, length_max=300, workers=1, progress=False)
    two = generate_bank(30, 3, size=31, length_min=1, length_max=300, workers=2, chunk_size=7, progress=False)
    assert one.equals(two)
    assert len(used) == 1 and (used[0] is not None) == shared_file
    assert used[0] is None or not os.path.exists(used[0])  # the shared file is gone


def test_a_smaller_bank_is_a_prefix_of_a_larger_one():
    small = generate_bank(10, 5, size=31, length_min=1, length_max=300, progress=False)
    large = generate_bank(25, 5, size=31, length_min=1, length_max=300, chunk_size=4, progress=False)
    assert large.slice(0, 10).equals(small)
    assert large.column("kernel_id").to_pylist()[:3] == ["k00000000", "k00000001", "k00000002"]


@pytest.mark.parametrize("length", [12.0, 30.0])
def test_zero_anxiety_gives_a_straight_line_of_length_L_through_the_centre(length):
    table = generate_bank(
        12, 11, size=63, length_min=length, length_max=length, params_override={"anxiety": 0.0}, progress=False
    )
    assert table.column("n_shakes").to_numpy().sum() == 0
    assert table.column("resamples").to_numpy().sum() == 0
    bank = KernelBank(table)
    assert np.array_equal(render_kernel(bank.row(3)), bank.kernel_at(3))  # forced values re-render too
    cr, cc, cov = _moments(bank.kernels)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    # All mass on one line: the spread across it is only the bilinear splat (< 0.25 px^2).
    assert np.all(eigval[:, 0] < 0.25)
    # Along the line, a uniform segment of length L has variance L^2 / 12.
    np.testing.assert_allclose(eigval[:, 1], length**2 / 12, rtol=0.05)
    # The line points along the sampled initial direction (degrees, from +column towards +row).
    major = eigvec[:, :, 1]  # (row, col) components
    direction = np.degrees(np.arctan2(major[:, 0], major[:, 1])) % 180
    expected = table.column("angle").to_numpy() % 180
    error = np.abs((direction - expected + 90) % 180 - 90)
    assert np.all(error < 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_every_step_has_length_L_over_steps_so_the_total_is_L(seed):
    rng = np.random.default_rng(seed)
    params = sample_trajectory_params(rng, 1.0, 1000.0)
    normals, uniforms = sample_walk_draws(rng, 2000)
    positions, _ = trajectories(params, normals[None], uniforms[None])
    steps = np.abs(np.diff(positions[0]))
    np.testing.assert_allclose(steps, params["length"] / 1999, rtol=1e-9)
    assert steps.sum() == pytest.approx(params["length"], rel=1e-9)


def test_an_empty_bank_has_the_schema():
    table = generate_bank(0, 0, progress=False)
    assert len(table) == 0 and table.schema.equals(BANK_SCHEMA)
    assert bank_summary(table) == {"count": 0}


def test_zero_length_gives_a_delta_at_the_centre():
    kernels = _kernels(generate_bank(4, 0, size=15, length_min=0, length_max=0, progress=False))
    assert np.all(kernels[:, 7, 7] == 1.0) and np.all(kernels.sum((1, 2)) == 1.0)


def _reference_kernel(params, normals, uniforms, size, exposure=1.0):
    """A literal, one-sample-at-a-time transcription of createTrajectory.m / createPSFs.m
    (plus centring on the exposure-weighted centroid)."""
    n = normals.shape[1] + 1
    length, anxiety = params["length"], params["anxiety"]
    v = cmath.exp(1j * math.radians(params["angle"])) * (anxiety if anxiety > 0 else 1.0)
    x = [0j]
    for t in range(n - 1):
        shake = 0j
        if uniforms[0, t] < params["freq_big_shakes"] * anxiety:
            shake = 2 * v * cmath.exp(1j * (math.pi + (uniforms[1, t] - 0.5)))
        gaussian = params["gaussian_term"] * complex(normals[0, t], normals[1, t])
        dv = shake + anxiety * (gaussian - params["centripetal"] * x[-1]) * length / (n - 1)
        v = v + dv
        v = v / abs(v) * length / (n - 1)
        x.append(x[-1] + v)
    weights = [min(1.0, max(0.0, exposure * n - t)) for t in range(n)]
    centroid = sum(w * p for w, p in zip(weights, x)) / sum(weights)
    psf = np.zeros((size, size))
    for w, p in zip(weights, x):
        p = p - centroid + complex((size - 1) / 2, (size - 1) / 2)
        c0, r0 = math.floor(p.real), math.floor(p.imag)
        fc, fr = p.real - c0, p.imag - r0
        psf[r0, c0] += w * (1 - fc) * (1 - fr)
        psf[r0, c0 + 1] += w * fc * (1 - fr)
        psf[r0 + 1, c0] += w * (1 - fc) * fr
        psf[r0 + 1, c0 + 1] += w * fc * fr
    psf /= n
    return psf / psf.sum(), psf.sum()


@pytest.mark.parametrize("exposure", [1.0, 0.37])
def test_vectorised_walk_and_splat_match_a_scalar_transcription_of_the_matlab_code(exposure):
    rng = np.random.default_rng(123)
    batch = []
    for _ in range(4):
        params = sample_trajectory_params(rng, 5.0, 40.0)
        params["freq_big_shakes"], params["anxiety"] = 0.2, 0.1  # make abrupt shakes likely
        batch.append((params, *sample_walk_draws(rng, 300)))
    stacked = {k: np.array([p[k] for p, _, _ in batch]) for k in batch[0][0]}
    positions, n_shakes = trajectories(stacked, np.stack([b[1] for b in batch]), np.stack([b[2] for b in batch]))
    kernels, raw_sum, fits = psf_from_trajectory(positions, 63, exposure)
    assert fits.all() and n_shakes.sum() > 0
    for i, (params, normals, uniforms) in enumerate(batch):
        expected, expected_sum = _reference_kernel(params, normals, uniforms, 63, exposure)
        np.testing.assert_allclose(kernels[i], expected, atol=1e-9)
        assert raw_sum[i] == pytest.approx(expected_sum, rel=1e-12)
        assert raw_sum[i] == pytest.approx(exposure, rel=1e-12)


def test_long_trajectories_in_a_small_window_are_resampled_and_recorded():
    table = _bank(15, 40.0, 120.0, 0)
    resamples = table.column("resamples").to_numpy()
    assert resamples.sum() > 0
    summary = bank_summary(table)
    assert summary["total_resamples"] == resamples.sum()
    assert summary["rejection_rate"] == pytest.approx(resamples.sum() / (resamples.sum() + COUNT))
    assert 0 < summary["rejection_rate"] < 1
    # Rejection is by shape, never by length: lengths stay spread over the requested range.
    assert table.column("length").to_numpy().max() > 100


def test_a_trajectory_that_can_never_fit_raises_a_clear_error():
    with pytest.raises(TrajectoryDoesNotFitError, match=r"k00000000.*length 500\.0 px.*15x15.*3 attempts.*--size"):
        generate_bank(
            2, 0, size=15, length_min=500, length_max=500, params_override={"anxiety": 0.0}, max_attempts=3,
            progress=False,
        )


@pytest.mark.parametrize(
    "size,length_min,length_max,exposure", [(15, 40.0, 120.0, 1.0), (63, 1.0, 1000.0, 1.0), (31, 1.0, 300.0, 0.5)]
)
def test_render_kernel_reproduces_every_stored_kernel_exactly(size, length_min, length_max, exposure):
    table = _bank(size, length_min, length_max, 0, exposure=exposure)
    bank = KernelBank(table)
    assert table.column("exposure").to_numpy()[0] == exposure
    np.testing.assert_allclose(table.column("raw_sum").to_numpy(), exposure, rtol=1e-9)
    for i in range(len(bank)):
        assert np.array_equal(render_kernel(bank.row(i)), bank.kernel_at(i)), bank.ids[i]


@pytest.mark.parametrize("exposure", [0.25, 0.5])
def test_a_shorter_exposure_integrates_only_that_fraction_of_the_path(exposure):
    table = generate_bank(
        6, 2, size=63, length_min=40, length_max=40, exposure=exposure, params_override={"anxiety": 0.0}, progress=False
    )
    np.testing.assert_allclose(table.column("raw_sum").to_numpy(), exposure, rtol=1e-9)
    _, _, cov = _moments(_kernels(table))
    np.testing.assert_allclose(np.linalg.eigvalsh(cov)[:, 1], (exposure * 40) ** 2 / 12, rtol=0.05)


def test_invalid_arguments_are_refused_with_a_reason():
    cases = [
        (dict(size=16), "odd"),
        (dict(size=1), "odd"),
        (dict(length_min=10, length_max=5), "length_min <= length_max"),
        (dict(length_min=-1, length_max=5), "length_min <= length_max"),
        (dict(exposure=0.0), r"exposure must be in \(0, 1\]"),
        (dict(exposure=1.5), r"exposure must be in \(0, 1\]"),
        (dict(params_override={"anxeity": 0}), "unknown parameter"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate_bank(2, 0, progress=False, **kwargs)


def test_write_and_read_round_trip_with_metadata(tmp_path):
    table = _bank(31, 1.0, 300.0, 0)
    path = write_bank(table, tmp_path / "kernels.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["kernels.parquet"]  # no temp file left
    metadata = pq.read_schema(path).metadata
    assert metadata[b"blurforge.schema_version"] == b"1"
    assert metadata[b"blurforge.kind"] == b"kernels"
    bank = read_bank(path)
    assert len(bank) == COUNT and bank.ids == table.column("kernel_id").to_pylist()
    assert bank.kernels.shape == (COUNT, 31, 31) and bank.kernels.dtype == np.float32
    stored = _kernels(table)
    assert np.array_equal(bank.kernel("k00000005"), stored[5])
    assert np.array_equal(bank.kernel_at(7), stored[7])
    assert bank.table.equals(table.drop_columns(["kernel"]))  # the kernels live in bank.kernels
    with pytest.raises(KeyError, match="k99999999"):
        bank.kernel("k99999999")


def test_reading_a_file_without_the_kernel_column_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "kernels.parquet"
    pq.write_table(_bank(15, 1.0, 40.0, 0).drop_columns(["kernel"]), path)
    expected = r"kernels\.parquet: column 'kernel' missing — was it written by 'blurforge kernels'\?"
    with pytest.raises(ValueError, match=expected):
        read_bank(path)


def test_reading_a_missing_or_foreign_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet.*blurforge kernels"):
        read_bank(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable Parquet file"):
        read_bank(tmp_path / "junk.parquet")
    manifest = pa.table({"key": ["a"]}).replace_schema_metadata({"blurforge.kind": "manifest"})
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match=r"manifest\.parquet: this is a blurforge 'manifest' file"):
        read_bank(tmp_path / "manifest.parquet")


def test_contact_sheet_shows_each_kernel_white_on_black(tmp_path):
    kernels = _kernels(_bank(15, 1.0, 40.0, 0))[:10]
    path = kernel_contact_sheet(kernels, tmp_path / "grid.png", columns=4, tile=30)
    sheet = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    side = 15 * 2  # 15 px kernels enlarged 2x
    assert sheet.shape == (3 * (side + 1) + 1, 4 * (side + 1) + 1)
    for i in range(10):
        r, c = divmod(i, 4)
        tile = sheet[1 + r * (side + 1) : 1 + r * (side + 1) + side, 1 + c * (side + 1) : 1 + c * (side + 1) + side]
        assert tile.max() == 255  # each kernel scaled to its own peak
        assert np.median(tile) == 0  # on black
    with pytest.raises(ValueError, match=r"\(n, s, s\)"):
        kernel_contact_sheet(np.zeros((15, 15)), tmp_path / "bad.png")


# --------------------------------------------------------------------------- shape records


def test_shape_stats_match_scikit_image_on_off_centre_kernels():
    """Extent = bounding box of the non-zero taps; radius of gyration about the kernel's own
    centroid (trace of scikit-image's inertia tensor), on kernels whose mass is far from the
    centre pixel, so the wrong centre would show."""
    from skimage.measure import inertia_tensor, regionprops

    from blurforge.kernels import kernel_shape_stats

    rng = np.random.default_rng(0)
    kernels = np.zeros((12, 21, 21), np.float32)
    for k in kernels:
        r0, c0 = rng.integers(0, 12, 2)
        h, w = rng.integers(1, 9, 2)
        k[r0 : r0 + h, c0 : c0 + w] = rng.random((h, w)) * (rng.random((h, w)) < 0.6)
        k[r0, c0] = k[r0 + h - 1, c0 + w - 1] = 0.5  # the box's corners are taps
        k /= k.sum()
    width, height, rg = kernel_shape_stats(kernels)
    for i, k in enumerate(kernels):
        (props,) = regionprops((k > 0).astype(np.uint8))
        r0, c0, r1, c1 = props.bbox
        assert (width[i], height[i]) == (c1 - c0, r1 - r0)
        assert rg[i] == pytest.approx(math.sqrt(np.trace(inertia_tensor(k.astype(np.float64)))), rel=1e-9)
    assert np.isnan(kernel_shape_stats(np.zeros((1, 5, 5)))[2][0])


@pytest.mark.parametrize("size,length_min,length_max", [GRID[2], GRID[3]])
def test_bank_records_each_kernels_extent_and_radius_of_gyration(size, length_min, length_max):
    from skimage.measure import inertia_tensor

    table = _bank(size, length_min, length_max, 0)
    kernels = _kernels(table)
    for i, k in enumerate(kernels):
        rows, cols = np.flatnonzero(k.any(axis=1)), np.flatnonzero(k.any(axis=0))
        assert table.column("extent_width")[i].as_py() == cols[-1] - cols[0] + 1
        assert table.column("extent_height")[i].as_py() == rows[-1] - rows[0] + 1
        expected = math.sqrt(np.trace(inertia_tensor(k.astype(np.float64))))
        assert table.column("radius_of_gyration")[i].as_py() == pytest.approx(expected, rel=1e-9)
    assert table.column("working_size").to_pylist() == [size] * COUNT


@pytest.mark.parametrize("length", [12.0, 30.0])
def test_a_straight_line_has_the_extent_and_radius_of_gyration_of_a_segment(length):
    """2000 equally spaced samples over a segment of length L have variance
    ``L^2 (n + 1) / (12 (n - 1))``; the bilinear splat adds ``f (1 - f) <= 1/4`` per axis. The
    bounding box of a segment projected to ``L |cos a|`` spans that many pixels plus 1 to 3."""
    table = generate_bank(
        8, 11, size=63, length_min=length, length_max=length, params_override={"anxiety": 0.0}, progress=False
    )
    _check_segment_shapes(table)


def _check_segment_shapes(table: pa.Table) -> None:
    n = table.column("num_steps")[0].as_py()
    length = table.column("length").to_numpy()
    rg2 = table.column("radius_of_gyration").to_numpy() ** 2
    segment = length**2 * (n + 1) / (12 * (n - 1))
    assert np.all((rg2 >= segment - 1e-9) & (rg2 <= segment + 0.5))
    angle = np.radians(table.column("angle").to_numpy())
    for name, projection in (("extent_width", np.abs(np.cos(angle))), ("extent_height", np.abs(np.sin(angle)))):
        extent, span = table.column(name).to_numpy(), length * projection
        assert np.all((extent >= span) & (extent <= span + 3)), name


def test_a_bank_written_before_the_shape_columns_still_reads(tmp_path):
    """Older banks lack working_size and the shape columns: read_bank computes them."""
    table = _bank(31, 1.0, 300.0, 0)
    old = table.drop_columns(["working_size", "extent_width", "extent_height", "radius_of_gyration"])
    path = tmp_path / "old.parquet"
    pq.write_table(old.replace_schema_metadata({"blurforge.kind": "kernels", "blurforge.schema_version": "1"}), path)
    bank = read_bank(path)
    assert bank.table.equals(table.drop_columns(["kernel"]))
    assert np.array_equal(render_kernel(bank.row(5)), bank.kernel_at(5))
    assert bank_summary(old) == bank_summary(table)


def test_bank_summary_and_rejection_by_length_add_up():
    from blurforge.kernels import rejection_by_length

    table = _bank(63, 1.0, 1000.0, 0)
    summary = bank_summary(table)
    extent = np.maximum(table.column("extent_width").to_numpy(), table.column("extent_height").to_numpy())
    assert summary["extent_q"][2] == np.median(extent)
    assert summary["size"] == summary["size_max"] == 63 and summary["larger_than_size"] == 0
    bands = rejection_by_length(table, bins=4)
    assert sum(b["count"] for b in bands) == COUNT
    rejected = sum(b["rejection_rate"] * b["count"] / (1 - b["rejection_rate"]) for b in bands)
    assert rejected == pytest.approx(summary["total_resamples"])
    assert bands[0]["length_lo"] == table.column("length").to_numpy().min()


# --------------------------------------------------------------------------- working size


def test_a_working_window_keeps_long_straight_blurs_at_their_own_size():
    """Without it they can never fit (see the test above); with it, no attempt is rejected and
    each kernel is the whole line, stored in the smallest odd window that holds it."""
    table = generate_bank(6, 0, size=15, working_size=201, length_min=60, length_max=90,
                          params_override={"anxiety": 0.0}, progress=False)
    assert table.column("resamples").to_numpy().sum() == 0
    bank = KernelBank(table)
    assert bank.size > 15 and np.all(bank.sizes % 2 == 1)
    with pytest.raises(ValueError, match="several sizes"):
        bank.kernels
    for i in range(len(bank)):
        k = bank.kernel_at(i).astype(np.float64)
        s = k.shape[0]
        assert k.sum() == pytest.approx(1, abs=1e-5) and k.min() >= 0
        rows, cols = np.flatnonzero(k.any(axis=1)), np.flatnonzero(k.any(axis=0))
        # the smallest odd window: the support touches (or is one pixel from) an edge
        assert min(rows[0], cols[0], s - 1 - rows[-1], s - 1 - cols[-1]) <= 1
        r, c = np.mgrid[:s, :s]
        assert (k * r).sum() == pytest.approx((s - 1) / 2, abs=1e-3)  # centroid on the centre pixel
        assert (k * c).sum() == pytest.approx((s - 1) / 2, abs=1e-3)
        assert np.array_equal(render_kernel(bank.row(i)), bank.kernel_at(i))
    _check_segment_shapes(table)
    padded = bank.padded([0, 1])
    assert padded.shape[1] == max(bank.sizes[:2]) and padded.sum() == pytest.approx(2, abs=1e-5)


def test_a_working_window_splat_matches_the_scalar_transcription():
    """Kernels larger and smaller than ``size`` equal the MATLAB transcription splatted in the
    whole working window, cropped about its centre."""
    from blurforge.kernels import splat_psfs

    rng = np.random.default_rng(5)
    batch = []
    for length in (8.0, 30.0, 70.0, 120.0):
        params = sample_trajectory_params(rng, length, length)
        batch.append((params, *sample_walk_draws(rng, 300)))
    stacked = {k: np.array([p[k] for p, _, _ in batch]) for k in batch[0][0]}
    positions, _ = trajectories(stacked, np.stack([b[1] for b in batch]), np.stack([b[2] for b in batch]))
    kernels, raw_sum, fits = splat_psfs(positions, 15, 151, exposure=0.8)
    assert fits.all() and {k.shape[0] for k in kernels} > {15}
    for (params, normals, uniforms), k in zip(batch, kernels):
        expected, expected_sum = _reference_kernel(params, normals, uniforms, 151, exposure=0.8)
        o = (151 - k.shape[0]) // 2
        np.testing.assert_allclose(k, expected[o : o + k.shape[0], o : o + k.shape[0]], atol=1e-9)
        assert expected[o : o + k.shape[0], o : o + k.shape[0]].sum() == pytest.approx(1, rel=1e-12)  # all of it


def test_a_working_window_lowers_rejection_and_keeps_the_bank_deterministic():
    fixed = _bank(15, 40.0, 120.0, 0)
    wide = generate_bank(COUNT, 0, size=15, working_size=63, length_min=40, length_max=120, progress=False)
    assert bank_summary(wide)["rejection_rate"] < bank_summary(fixed)["rejection_rate"]
    assert bank_summary(wide)["larger_than_size"] > 0
    again = generate_bank(COUNT, 0, size=15, working_size=63, length_min=40, length_max=120, workers=2,
                          chunk_size=5, batch_size=3, progress=False)
    assert again.equals(wide)
    bank = KernelBank(wide)
    for i in range(len(bank)):
        assert np.array_equal(render_kernel(bank.row(i)), bank.kernel_at(i)), bank.ids[i]
    # the working window is the whole PSF's limit: it must hold the kernel size
    with pytest.raises(ValueError, match="working_size"):
        generate_bank(2, 0, size=15, working_size=13, progress=False)


def test_kernels_cli_with_a_working_size_reports_shapes_and_previews(tmp_path, capsys):
    from blurforge.cli import main

    out = tmp_path / "k.parquet"
    assert main(["kernels", "--count", "20", "--size", "15", "--working-size", "101", "--length-min", "40",
                 "--length-max", "120", "--out", str(out), "--preview", str(tmp_path / "k.png"), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "larger, up to" in line and "median extent" in line and "radius of gyration" in line
    assert cv2.imread(str(tmp_path / "k.png")) is not None
    assert read_bank(out).table.column("working_size").to_pylist() == [101] * 20
