"""Uniform blur in linear light and the RSBlur realism stage (blurforge.blur)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi

from blurforge.blur import (
    apply_realism,
    convolve,
    linear_to_codes,
    linear_to_srgb,
    render_uniform,
    sample_realism,
    srgb_to_linear,
)
from blurforge.camera import BAYER_PATTERNS, CAMERAS, NOISE_PRESETS
from conftest import photo


def _reference_srgb_to_linear(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _reference_linear_to_srgb(x):
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _random_kernel(rng, shape):
    k = rng.random(shape) ** 3  # lopsided on purpose: a flip (correlation) would show
    return (k / k.sum()).astype(np.float32)


def _scipy_convolve(img, k):
    img = img.astype(np.float64)
    return np.stack(
        [ndi.convolve(img[..., c], k.astype(np.float64), mode="reflect") for c in range(img.shape[2])], axis=-1
    )


# --- sRGB ----------------------------------------------------------------------------------


def test_srgb_transfer_functions_match_the_standard():
    x = np.linspace(-0.05, 1.05, 20001, dtype=np.float32)
    lin = srgb_to_linear(x)
    assert lin.dtype == np.float32
    inside = (x >= 0) & (x <= 1)
    np.testing.assert_allclose(lin[inside], _reference_srgb_to_linear(x[inside]), atol=5e-7)
    np.testing.assert_allclose(linear_to_srgb(x), _reference_linear_to_srgb(x), atol=5e-7)
    assert not np.isnan(lin).any()
    # the knee values of IEC 61966-2-1
    assert abs(float(srgb_to_linear(np.float32(0.04045))) - 0.04045 / 12.92) < 1e-8
    assert abs(float(linear_to_srgb(np.float32(0.5))) - 0.735356983) < 1e-6


def test_srgb_round_trip_is_exact_for_8_and_16_bit_values():
    for top in (255, 65535):
        x = (np.arange(top + 1) / top).astype(np.float32)
        back = linear_to_srgb(srgb_to_linear(x))
        assert np.abs(back - x).max() < 1e-6
        assert np.array_equal(np.rint(back * top), np.arange(top + 1))


def test_srgb_functions_do_not_modify_their_input_and_keep_shape():
    rng = np.random.default_rng(0)
    x = rng.random((300, 7, 3), dtype=np.float32)  # tall enough for the threaded path
    before = x.copy()
    assert srgb_to_linear(x).shape == x.shape and linear_to_srgb(x).shape == x.shape
    assert np.array_equal(x, before)
    np.testing.assert_allclose(srgb_to_linear(x), _reference_srgb_to_linear(x), atol=5e-7)


def _reference_codes(x, curve):
    """round(255 · curve(clip(x))) by the float64 formulas (round half up)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    encoded = {"srgb": _reference_linear_to_srgb, "gamma2.2": lambda v: v ** (1 / 2.2), "linear": lambda v: v}[curve](x)
    return np.floor(255 * encoded + 0.5).astype(np.int64)


@pytest.mark.parametrize("curve", ["srgb", "gamma2.2", "linear"])
def test_linear_to_codes_is_the_exact_rounding_of_the_formula(curve):
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.random(200_000, dtype=np.float32) ** 3, rng.uniform(-0.2, 1.2, 20_000).astype(np.float32),
                        np.float32([0, -0.0, 1, 2, -1, np.inf, -np.inf, 1e-30, 1 - 2**-24])])
    # every code boundary: the smallest float32 reaching each code by the float64 formula (bisection
    # over the bit patterns of [0, 1], which order like the values), and 40 floats either side of it
    lo = np.zeros(255, np.int64)
    hi = np.full(255, np.float32(1).view(np.int32), np.int64)
    k = np.arange(1, 256)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        reached = _reference_codes(mid.astype(np.int32).view(np.float32), curve) >= k
        hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid)
    edges = hi.astype(np.int32).view(np.float32)
    assert np.all(_reference_codes(edges, curve) == k) and np.all(_reference_codes(np.nextafter(edges, np.float32(-1)), curve) == k - 1)
    near = [(hi + d).astype(np.int32).view(np.float32) for d in range(-40, 41)]
    x = np.concatenate([x, *near])
    got = linear_to_codes(x, curve)
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.array_equal(got, _reference_codes(x, curve))
    # any shape and memory layout
    img = rng.random((40, 30, 3), dtype=np.float32)
    assert np.array_equal(linear_to_codes(img[:, ::2], curve), _reference_codes(img[:, ::2], curve))


def test_linear_to_codes_changes_few_codes_of_the_float32_formula():
    # The float32 power of linear_to_srgb rounds to a neighbouring code now and then; the table does
    # not. Measured on a noisy photo: 1e-5 of the values, never by more than one code.
    from blurforge.imageio import quantise

    rng = np.random.default_rng(2)
    lin = srgb_to_linear(photo("astronaut").astype(np.float32) / 255)
    lin = np.clip(lin + rng.normal(0, 0.002, lin.shape).astype(np.float32), 0, 1)
    formula = quantise(linear_to_srgb(lin), 8).astype(int)
    table = linear_to_codes(lin).astype(int)
    assert np.abs(table - formula).max() <= 1
    assert 0 < np.mean(table != formula) < 1e-4
    with pytest.raises(ValueError, match="curve"):
        linear_to_codes(lin, "gamma2.4")


# --- convolution -----------------------------------------------------------------------------


@pytest.mark.parametrize("image_hw", [(17, 23), (16, 20), (6, 5)])
@pytest.mark.parametrize("kernel_hw", [(1, 1), (3, 5), (4, 6), (7, 7), (8, 8), (15, 9), (20, 31), (31, 31)])
def test_convolve_matches_scipy_reflect(image_hw, kernel_hw):
    """Both backends (direct < 50 taps, DFT otherwise), odd/even sizes, kernels larger than
    the image (repeated reflection), asymmetric kernels."""
    rng = np.random.default_rng(hash((image_hw, kernel_hw)) % 2**32)
    img = rng.random((*image_hw, 3), dtype=np.float32)
    k = _random_kernel(rng, kernel_hw)
    out = convolve(img, k)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, _scipy_convolve(img, k), atol=1e-5)


@pytest.mark.parametrize(
    "support",
    [(slice(0, 3), slice(0, 3)), (slice(12, 15), slice(2, 9)), (slice(6, 9), slice(7, 8)), (slice(0, 15), slice(14, 15))],
)
def test_convolve_with_sparse_kernels_matches_scipy(support):
    """Kernels whose taps fill only part of the window (cropped to their support internally),
    including supports that do not contain the centre."""
    rng = np.random.default_rng(20)
    img = rng.random((40, 33, 3), dtype=np.float32)
    k = np.zeros((15, 15), np.float32)
    k[support] = rng.random(k[support].shape)
    k /= k.sum()
    np.testing.assert_allclose(convolve(img, k), _scipy_convolve(img, k), atol=1e-5)


def test_convolve_is_a_convolution_not_a_correlation():
    """An impulse image reproduces the kernel itself (unflipped) around the impulse."""
    rng = np.random.default_rng(1)
    for shape in [(5, 7), (31, 25)]:  # direct and DFT backends
        k = _random_kernel(rng, shape)
        img = np.zeros((80, 90, 1), np.float32)
        img[40, 45] = 1.0
        out = convolve(img, k)[..., 0]
        cy, cx = shape[0] // 2, shape[1] // 2
        patch = out[40 - cy : 40 - cy + shape[0], 45 - cx : 45 - cx + shape[1]]
        np.testing.assert_allclose(patch, k, atol=1e-6)


def test_convolve_accepts_a_single_plane():
    rng = np.random.default_rng(2)
    img = rng.random((30, 40), dtype=np.float32)
    k = _random_kernel(rng, (11, 11))
    np.testing.assert_allclose(convolve(img, k), ndi.convolve(img.astype(np.float64), k, mode="reflect"), atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 63])
def test_delta_kernel_reproduces_the_image(size):
    img = srgb_to_linear(photo("astronaut", (160, 120)).astype(np.float32) / 255)
    k = np.zeros((size, size), np.float32)
    k[size // 2, size // 2] = 1
    np.testing.assert_allclose(convolve(img, k), img, atol=1e-6)


def test_render_uniform_with_delta_kernel_returns_the_sharp_image():
    sharp_srgb = photo("coffee", (150, 100)).astype(np.float32) / 255
    k = np.zeros((63, 63), np.float32)
    k[31, 31] = 1
    blurry_srgb = render_uniform(sharp_srgb, k, None, np.random.default_rng(0))
    assert blurry_srgb.dtype == np.float32 and blurry_srgb.shape == sharp_srgb.shape
    np.testing.assert_allclose(blurry_srgb, sharp_srgb, atol=1e-6)


def test_8_bit_codes_out_match_the_float_path_for_codes_and_float_input():
    """render_uniform(codes=True): the exact codes of the linear blur, whether the photo comes as
    uint8 codes (plane by plane) or as float k/255 (whole image), with or without realism."""
    codes_in = photo("astronaut", (97, 131))
    float_in = np.divide(codes_in, np.float32(255), dtype=np.float32)
    rng = np.random.default_rng(5)
    k = _random_kernel(rng, (21, 17))
    reference = linear_to_codes(convolve(srgb_to_linear(float_in), k))
    for image in (codes_in, float_in):
        out = render_uniform(image, k, None, np.random.default_rng(0), codes=True)
        assert out.dtype == np.uint8 and np.array_equal(out, reference)
    params = sample_realism(np.random.default_rng(1), noise="rsblur", saturation=True)
    a = render_uniform(codes_in, k, params, np.random.default_rng(2), codes=True)
    b = render_uniform(float_in, k, params, np.random.default_rng(2), codes=True)
    assert np.array_equal(a, b) and not np.array_equal(a, reference)
    # the float output rounds to the same codes but for rare ties of the float32 curve
    assert np.mean(np.rint(render_uniform(codes_in, k, None, rng) * 255) != reference) < 1e-3


def test_constant_image_stays_constant():
    rng = np.random.default_rng(3)
    img = np.full((50, 70, 3), 0.3, np.float32)
    for shape in [(5, 5), (63, 63), (20, 41)]:
        np.testing.assert_allclose(convolve(img, _random_kernel(rng, shape)), 0.3, atol=1e-6)


def test_blur_preserves_mean_linear_brightness():
    rng = np.random.default_rng(4)
    sharp_lin = srgb_to_linear(photo("chelsea", (200, 150)).astype(np.float32) / 255)
    blurry_lin = convolve(sharp_lin, _random_kernel(rng, (31, 31)))
    np.testing.assert_allclose(blurry_lin.mean(axis=(0, 1)), sharp_lin.mean(axis=(0, 1)), rtol=0.01)
    assert blurry_lin.min() >= -1e-6 and blurry_lin.max() <= 1 + 1e-6


def test_blur_happens_in_linear_light():
    """A black/white edge averaged by a 2-tap kernel is 50 % light: sRGB 0.735, not 0.5."""
    sharp = np.zeros((8, 8, 3), np.float32)
    sharp[:, 4:] = 1.0
    k = np.array([[0.5, 0.5]], np.float32)
    blurry = render_uniform(sharp, k, None, np.random.default_rng(0))
    # centre kw//2 = 1: out[x] = 0.5·img[x + 1] + 0.5·img[x], so column 3 straddles the edge
    np.testing.assert_allclose(blurry[:, 3], 0.7353569, atol=1e-5)
    np.testing.assert_allclose(blurry[:, :3], 0.0, atol=1e-7)
    np.testing.assert_allclose(blurry[:, 4:], 1.0, atol=1e-6)


def test_render_uniform_checks_the_kernel():
    sharp = np.zeros((20, 20, 3), np.float32)
    with pytest.raises(ValueError, match="sum to 1"):
        render_uniform(sharp, np.ones((3, 3)), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        render_uniform(sharp, np.ones(3) / 3, None, np.random.default_rng(0))


# --- realism --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(NOISE_PRESETS))
def test_sample_realism_ranges_and_json(preset):
    rng = np.random.default_rng(5)
    none = sample_realism(rng)
    assert none == {"saturation_a": None, "noise": "none", "jpeg_quality": None}
    beta1, beta2 = NOISE_PRESETS[preset]["beta1"], NOISE_PRESETS[preset]["beta2"]
    for _ in range(200):
        p = sample_realism(rng, noise="rsblur", saturation=True, jpeg_quality=(60, 95), noise_preset=preset)
        assert json.loads(json.dumps(p)) == p
        assert 0.25 <= p["saturation_a"] <= 1.75
        assert p["noise_preset"] == preset and p["camera"] in CAMERAS and p["bayer"] in BAYER_PATTERNS
        assert 0.5 * beta1 <= p["noise_k"] <= 1.5 * beta1
        assert 0.5 * beta2 <= p["noise_sigma"] <= 1.5 * beta2  # a standard deviation
        assert 60 <= p["jpeg_quality"] <= 95 and isinstance(p["jpeg_quality"], int)
    assert sample_realism(rng, jpeg_quality=80)["jpeg_quality"] == 80
    with pytest.raises(ValueError, match="noise"):
        sample_realism(rng, noise="gaussian")
    with pytest.raises(ValueError, match="--noise-preset"):
        sample_realism(rng, noise="rsblur", noise_preset="gopro")


def test_default_preset_is_realblur():
    p = sample_realism(np.random.default_rng(0), noise="rsblur")
    assert p["noise_preset"] == "realblur" and p["camera"] == "a7r3"


def _scene():
    sharp_srgb = photo("rocket", (120, 90)).astype(np.float32) / 255
    sharp_srgb[30:40, 50:60] = 1.0  # a clipped highlight
    return sharp_srgb


def test_realism_is_reproducible_from_the_seed():
    sharp_srgb = _scene()
    k = _random_kernel(np.random.default_rng(6), (9, 9))
    params = sample_realism(np.random.default_rng(7), noise="rsblur", saturation=True)
    a = render_uniform(sharp_srgb, k, params, np.random.default_rng(11))
    b = render_uniform(sharp_srgb, k, params, np.random.default_rng(11))
    c = render_uniform(sharp_srgb, k, params, np.random.default_rng(12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_apply_realism_is_pure():
    sharp_lin = srgb_to_linear(_scene())
    k = _random_kernel(np.random.default_rng(8), (9, 9))
    blurry_lin = convolve(sharp_lin, k)
    before = blurry_lin.copy(), sharp_lin.copy()
    params = sample_realism(np.random.default_rng(1), noise="rsblur", saturation=True)
    apply_realism(blurry_lin, sharp_lin, k, params, np.random.default_rng(0))
    assert np.array_equal(blurry_lin, before[0]) and np.array_equal(sharp_lin, before[1])


def test_no_noise_leaves_the_rng_untouched():
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    render_uniform(_scene(), _random_kernel(rng, (5, 5)), sample_realism(rng, saturation=True), rng)
    rng2 = np.random.default_rng(9)
    _random_kernel(rng2, (5, 5)), sample_realism(rng2, saturation=True)
    assert rng.bit_generator.state == rng2.bit_generator.state != state


def test_saturation_brightens_only_around_saturated_pixels():
    sharp_lin = np.full((60, 60, 3), 0.2, np.float32)
    sharp_lin[28:32, 28:32, 0] = 1.0  # saturated in red only
    k = _random_kernel(np.random.default_rng(10), (7, 7))
    blurry_lin = convolve(sharp_lin, k)
    out = apply_realism(blurry_lin, sharp_lin, k, {"saturation_a": 1.5, "noise": "none"}, np.random.default_rng(0))
    gain = out - blurry_lin
    near = np.zeros((60, 60), bool)
    near[28 - 3 : 32 + 3, 28 - 3 : 32 + 3] = True
    assert gain[..., 0][near].max() > 0.1  # the highlight's trail got brighter …
    assert np.all(gain >= -1e-7)  # … nothing got darker …
    assert np.abs(gain[..., 0][~near]).max() < 1e-6  # … and nothing outside the kernel's reach
    assert np.abs(gain[..., 1:]).max() < 1e-6  # green and blue were not saturated
    assert out.max() <= 1.0


def test_legacy_rows_keep_their_per_pixel_noise():
    """Rows written before the camera pipeline carry ``noise_s_var`` and re-render with their own
    model: Poisson–Gaussian per pixel in linear RGB with the Gaussian part a variance."""
    x = 0.25
    blurry_lin = np.full((256, 256, 3), x, np.float32)
    k_shot, s_var = 2e-4, 4e-5
    params = {"saturation_a": None, "noise": "rsblur", "noise_k": k_shot, "noise_s_var": s_var, "jpeg_quality": None}
    out = apply_realism(blurry_lin, blurry_lin, np.ones((1, 1)), params, np.random.default_rng(13))
    expected_var = k_shot * x + s_var
    assert abs(out.mean() - x) < 5 * np.sqrt(expected_var / out.size)
    assert out.var() == pytest.approx(expected_var, rel=0.03)
    # independent of position: no mosaic, no demosaic correlation between neighbours
    assert abs(np.corrcoef(out[:, :-1, 1].ravel(), out[:, 1:, 1].ravel())[0, 1]) < 0.02


def test_camera_noise_is_what_apply_realism_adds():
    """New rows go through the camera pipeline: demosaicking correlates neighbours (the legacy
    model does not), and the read noise is a standard deviation (dark patches stay moderate)."""
    x = srgb_to_linear(np.float32(0.05))
    blurry_lin = np.full((200, 200, 3), x, np.float32)
    params = sample_realism(np.random.default_rng(4), noise="rsblur")
    out = apply_realism(blurry_lin, blurry_lin, np.ones((1, 1)), params, np.random.default_rng(5))
    g = out[4:-4, 4:-4, 1]
    assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.1
    codes = linear_to_srgb(out)[4:-4, 4:-4] * 255
    assert codes.std() < 4.0 and abs(codes.mean() - 0.05 * 255) < 1.5


def test_noise_spares_saturated_pixels():
    blurry_lin = np.full((40, 40, 3), 0.5, np.float32)
    blurry_lin[:10] = 1.0
    params = sample_realism(np.random.default_rng(2), noise="rsblur")
    out = apply_realism(blurry_lin, blurry_lin, np.ones((1, 1)), params, np.random.default_rng(14))
    assert np.all(out[:10] == 1.0)
    assert out[10:].std() > 1e-3
    assert out.min() >= 0 and out.max() <= 1


def test_8_bit_images_go_through_a_table_bit_identical_to_the_formula():
    from blurforge.blur import _srgb_to_linear_block

    codes = np.random.default_rng(3).integers(0, 256, (90, 70, 3)).astype(np.uint8)
    x = codes / np.float32(255)  # what read_image gives for an 8-bit file
    formula = np.empty_like(x)
    _srgb_to_linear_block(x, formula)
    assert np.array_equal(srgb_to_linear(x), formula)
    assert np.array_equal(srgb_to_linear(x[..., 0]), formula[..., 0])
    # one value that is not an 8-bit code anywhere sends the whole image through the formula
    for odd in (0.5, -1 / 255, 256 / 255):
        y = x.copy()
        y[89, 69, 2] = odd
        expected = np.empty_like(y)
        _srgb_to_linear_block(y, expected)
        assert np.array_equal(srgb_to_linear(y), expected)
    y = x.copy()
    y[3, 4, 1] = np.nan
    assert np.isnan(srgb_to_linear(y)[3, 4, 1])
