"""RSBlur's camera pipeline: sensor noise added to a raw Bayer mosaic between an inverse and a
forward ISP (Rim et al., "Realistic Blur Synthesis for Learning Image Deblurring", ECCV 2022).

For a linear-light sRGB image ``x`` (``H×W×3`` float in [0, 1])::

    x ─to_cam→ camera RGB ─clip [0,1]→ Bayer mosaic, ÷ white-balance gains (inverse WB)
      → poisson(m / k) · k + σ · N(0, 1)            (shot noise: Var = k·m; read noise: std σ)
      → × white-balance gains → demosaic (Malvar et al. 2004) ─clip [0,1]→ ─from_cam→ x'

Facts taken from the released code (github.com/rimchang/RSBlur, read at commit ae33a6c):

- ``SRN-Deblur-RSBlur/ISP/ISP_implement_tf_malvar.py`` — the paper's TensorFlow pipeline:
  ``poisson_gamma`` (RealBlur camera: XYZ→camera by the Sony A7R3 matrix) and
  ``poisson_RSBlur`` (RSBlur cameras: the per-setting colour-correction matrix, estimated in XYZ
  D50, wrapped in D65↔D50 adaptation); both clip the camera image to [0, 1] before mosaicking and
  the demosaicked image to [0, 1] before going back. ``add_Poisson_noise_random``:
  ``k ~ U(0.5·β1, 1.5·β1)``, ``poisson(m/k)·k``, plus ``N(0, 1)·σ`` with ``σ ~ U(0.5·β2,
  1.5·β2)`` — β2 is the **standard deviation** of the read noise (commented so in
  ``models/model.py``), not a variance.
- ``SRN-Deblur-RSBlur/models/model.py``: ``--target_dataset RealBlur`` sets β1 = 8.8915e-5,
  β2 = 2.9430e-5; ``RSBlur`` sets β1 = 1e-4, β2 = 9.1504e-4. With ``--cam_params_RSBlur`` the
  colour matrix and WB gains of the sample's RSBlur capture setting (``ISP/ccm_collections``)
  are used; with ``--cam_params_RealBlur`` the A7R3 matrix.
- ``Uformer-RSBlur/dataset/dataset_RealisticDeblur.py`` (the PyTorch module the project offers
  "for adopting our pipeline" on other data): Bayer pattern uniform over RGGB/BGGR/GRBG/GBRG,
  red gain U(1.9, 2.4), blue gain U(1.5, 1.9), RealBlur's β, the A7R3 matrix.
- ``masks.py`` / ``Demosaicing_malvar2004_tf.py``: Malvar–He–Cutler 5×5 demosaicking kernels.

Presets (``NOISE_PRESETS``): ``realblur`` — A7R3 colour matrix, gains U(1.9, 2.4) / U(1.5, 1.9),
RealBlur's β (RSBlur's recipe for training data made from other footage, e.g. GoPro);
``rsblur`` — one of the 19 RSBlur capture settings (its matrix and its measured WB gains), drawn
uniformly, with RSBlur's β.

Differences from the released code, all at image borders or in plumbing: demosaicking reflects
the mosaic at the border (parity-preserving, so the Bayer phase is kept) instead of zero padding
— the reference crops 4 px of the dark-bordered result away, this keeps every pixel valid; odd
image sizes are handled by reflecting one row/column and cropping it off again.

Everything here is NumPy/OpenCV and vectorised over the image; the only randomness is the
``rng`` passed in (``sample_camera_noise`` draws the parameters, ``camera_noise`` the noise).
"""

from __future__ import annotations

import cv2
import numpy as np

_F32 = np.float32

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")  # colour at (0,0), (0,1), (1,0), (1,1)

# ------------------------------------------------------------------------------------ matrices
# Row-vector convention throughout: ``xyz = rgb @ M``. The released code keeps these as .mat files.

# linear sRGB (D65) → XYZ, and back: ISP/mat_collections/M_lin2xyz.mat, M_xyz2lin.mat ('M').
M_LIN2XYZ = np.array([
    [0.41245643908969226, 0.21267285140562256, 0.019333895582329303],
    [0.3575760776439089, 0.7151521552878178, 0.11919202588130294],
    [0.1804374832663989, 0.07217499330655956, 0.9503040785363677],
])
M_XYZ2LIN = np.array([
    [3.2404541621141045, -0.9692660305051868, 0.055643430959114726],
    [-1.537138512797716, 1.8760108454466942, -0.20402591351675384],
    [-0.4985314095560159, 0.04155601753034981, 1.0572251882231791],
])
# Chromatic adaptation (column-vector matrices; the code multiplies by their transposes):
# ISP/mat_collections/M_d652d50.mat, M_d502d65.mat ('M').
M_D65_TO_D50 = np.array([
    [1.0477827237215072, 0.022869851951838428, -0.0501353148871517],
    [0.02951563641572715, 0.9905096959663051, -0.01705024649104856],
    [-0.009238372726848588, 0.015051532210123824, 0.7520477048739399],
])
M_D50_TO_D65 = np.array([
    [0.9556020114310646, -0.023023986379138318, 0.06318328318665103],
    [-0.028263636190824296, 1.0099145129789562, 0.02101234400222577],
    [0.012304563301843917, -0.02049532880628404, 1.33005850063101],
])
# RealBlur's camera (Sony A7R3), XYZ → camera RGB as a column-vector matrix (the code applies it
# as ``sum(xyz[..., None, :] * M, -1)``): ISP/mat_collections/a7r3_xyz2cam.mat ('final_xyz2cam').
A7R3_XYZ2CAM = np.array([
    [1.6954175654007513, -0.4716018438697571, -0.12843298725852076],
    [-0.4883823389175844, 1.213030589789571, 0.23067161253953877],
    [-0.126723194569989, 0.21350242146585263, 0.8329529616901491],
])
# RSBlur's 19 capture settings: ISP/ccm_collections/NNNN/ccm.mat 'colorCorrectionMatrix'[0, 1]
# (camera → XYZ D50, row-vector convention) and wb_params.mat 'wb_param'[0, 3] / [0, 5] (the red
# and blue white-balance gains; green is 1). Key NNNN = 0001 … 0019.
RSBLUR_CCM = {
    "0001": [[0.488399063, -1.8004268368, 0.1418238626], [0.9396315756, 3.2320169122, -0.6363842287], [-0.5228133849, -0.5712737083, 1.5762233952]],
    "0002": [[1.0051048971, -1.0854857803, 0.3185667556], [0.2334057578, 2.3156505697, -0.7729452132], [-0.3108626068, -0.3311733406, 1.53282332]],
    "0003": [[1.0098005665, -1.0935130491, 0.2979518172], [0.2258498408, 2.3274731569, -0.755303609], [-0.3075363015, -0.3381434122, 1.5346221458]],
    "0004": [[1.0394226256, -1.038998727, 0.3779867483], [0.1711379144, 2.2358569557, -0.8457829396], [-0.2896866346, -0.2987247259, 1.5509393204]],
    "0005": [[0.9781977823, -1.1383563541, 0.3412484531], [0.2666345559, 2.3704226795, -0.8324523358], [-0.3448053636, -0.3833643797, 1.5327402386]],
    "0006": [[0.9815179188, -1.1054426424, 0.3050377352], [0.2386735503, 2.3212188584, -0.7683192243], [-0.2928356442, -0.3171712441, 1.5435492766]],
    "0007": [[0.9712467213, -1.2013901452, 0.2846248322], [0.2779148006, 2.4427668602, -0.7642272854], [-0.3422706989, -0.3590824564, 1.5535471116]],
    "0008": [[1.016441888, -1.0545684148, 0.3179495221], [0.1984365453, 2.268577821, -0.7809822432], [-0.2839503841, -0.3146867343, 1.5476671685]],
    "0009": [[1.0784695261, -0.9328173584, 0.3877820913], [0.0815006001, 2.1001311544, -0.870480537], [-0.2340669417, -0.2753855762, 1.5812690227]],
    "0010": [[0.6934070187, -1.3505413555, 0.2243523332], [0.4313846531, 2.5080764121, -0.7458941258], [-0.1900561853, -0.2493388926, 1.6162735292]],
    "0011": [[1.7122864851, -0.5205697999, 0.8372020775], [-0.3753547387, 1.8509370387, -1.3075245771], [-0.420908687, -0.422902381, 1.5363234923]],
    "0012": [[1.533411409, -0.5136184514, 0.7479310673], [-0.3001756074, 1.7591813044, -1.1992625426], [-0.3039437013, -0.3474417715, 1.5394048536]],
    "0013": [[1.1079723678, -0.8966750133, 0.3541128267], [0.1385687322, 2.1606154054, -0.7675889192], [-0.3237002069, -0.3757410036, 1.474931756]],
    "0014": [[0.9860820801, -1.1176252736, 0.3155874307], [0.2394824161, 2.3345110894, -0.78587744], [-0.3062049837, -0.3229608877, 1.5540179834]],
    "0015": [[0.9276132129, -1.1623670766, 0.3050064616], [0.2993452493, 2.3864189598, -0.7743959015], [-0.2982018584, -0.3262094876, 1.5531115308]],
    "0016": [[0.9993781838, -1.0532522483, 0.2965846814], [0.1675053013, 2.1908772353, -0.7807040973], [-0.2667562144, -0.2450447549, 1.5649970514]],
    "0017": [[1.0311542712, -1.0839355615, 0.3669292531], [0.1431954785, 2.2387055813, -0.9177857171], [-0.2917516595, -0.2886600149, 1.6239080703]],
    "0018": [[0.6997427595, -1.304732936, 0.2328050697], [0.4995825478, 2.5122181294, -0.7333729461], [-0.2631568555, -0.3065889191, 1.5939234251]],
    "0019": [[1.3382167608, -0.7211442773, 0.5080450903], [-0.1576498194, 1.8989133992, -1.0163232203], [-0.2972031526, -0.3154520219, 1.5934029967]],
}
RSBLUR_WB = {  # (red gain, blue gain)
    "0001": (1.5868829204, 2.1639093222), "0002": (1.6273974578, 2.1324687813),
    "0003": (1.6437296862, 2.0672342854), "0004": (1.5847279086, 2.1675055618),
    "0005": (1.5829303261, 2.1747896879), "0006": (1.6068307252, 2.111013626),
    "0007": (1.6257683872, 2.138173159), "0008": (1.651162736, 2.080428616),
    "0009": (1.6593242806, 2.0879244279), "0010": (1.5238144509, 2.2786287699),
    "0011": (1.5401455185, 2.2931560356), "0012": (1.5437074982, 2.2624712441),
    "0013": (1.7912612643, 1.9135899422), "0014": (1.6035405939, 2.1643369224),
    "0015": (1.607728284, 2.1471044044), "0016": (1.576024756, 2.1607955497),
    "0017": (1.5157318299, 2.3151861165), "0018": (1.5405327681, 2.2646018975),
    "0019": (1.5385251494, 2.2888765617),
}
# RealBlur's camera response (linear → A7R3 output), a degree-7 polynomial, lowest order first:
# ISP/mat_collections/a7r3_polynomial_alpha.mat ('alpha'); used by ``lin2rgb_realblur``.
A7R3_RESPONSE_ALPHA = (
    -9.52280067e-03, 8.69851598e00, -4.51578205e01, 1.50711809e02,
    -3.08197829e02, 3.68308117e02, -2.35163398e02, 6.18322241e01,
)


def _camera_matrices() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Camera name → ``(to_cam, from_cam)``, 3×3 float32, row-vector convention
    (``cam = lin @ to_cam``), composed in float64 exactly as the reference chains them."""
    cams = {}
    # poisson_gamma: lin → XYZ → camera; back: inv(xyz2cam), then XYZ → lin
    cams["a7r3"] = (M_LIN2XYZ @ A7R3_XYZ2CAM.T, np.linalg.inv(A7R3_XYZ2CAM).T @ M_XYZ2LIN)
    # poisson_RSBlur: lin → XYZ → D50 → inv(CCM) → D65 → "lin"; back: the same with CCM
    into_d50 = M_LIN2XYZ @ M_D65_TO_D50.T
    out_of_d50 = M_D50_TO_D65.T @ M_XYZ2LIN
    for key, ccm in RSBLUR_CCM.items():
        c = np.asarray(ccm)
        cams[f"rsblur-{key}"] = (into_d50 @ np.linalg.inv(c) @ out_of_d50, into_d50 @ c @ out_of_d50)
    return {k: (a.astype(_F32), b.astype(_F32)) for k, (a, b) in cams.items()}


CAMERAS = _camera_matrices()

# ------------------------------------------------------------------------------------- presets

NOISE_PRESETS = {
    # β1: shot-noise scale (k ~ U(0.5·β1, 1.5·β1), Var = k·m); β2: read-noise std (σ ~ U(0.5·β2, 1.5·β2))
    "realblur": {"beta1": 8.8915e-05, "beta2": 2.9430e-05, "cameras": ("a7r3",),
                 "red_gain": (1.9, 2.4), "blue_gain": (1.5, 1.9)},
    "rsblur": {"beta1": 1.0e-04, "beta2": 9.1504e-04, "cameras": tuple(f"rsblur-{k}" for k in RSBLUR_CCM),
               "red_gain": None, "blue_gain": None},  # gains: the capture setting's own
}
DEFAULT_NOISE_PRESET = "realblur"


def sample_camera_noise(rng: np.random.Generator, preset: str = DEFAULT_NOISE_PRESET) -> dict:
    """Draw the camera-noise parameters of one sample; a JSON-able dict.

    Draw order (as ``dataset_RealisticDeblur.py``): camera setting (``rsblur`` preset only: one
    of 19), Bayer pattern, red gain, blue gain (``realblur`` only: U(1.9, 2.4), U(1.5, 1.9)),
    ``k ~ U(0.5·β1, 1.5·β1)``, ``σ ~ U(0.5·β2, 1.5·β2)``.

    Returns ``{"noise_preset", "camera", "bayer", "wb_red_gain", "wb_blue_gain", "noise_k",
    "noise_sigma"}``.
    """
    if preset not in NOISE_PRESETS:
        raise ValueError(f"noise preset {preset!r}: choose one of {', '.join(NOISE_PRESETS)}")
    p = NOISE_PRESETS[preset]
    cameras = p["cameras"]
    camera = cameras[int(rng.integers(len(cameras)))] if len(cameras) > 1 else cameras[0]
    bayer = BAYER_PATTERNS[int(rng.integers(len(BAYER_PATTERNS)))]
    if p["red_gain"] is None:
        red, blue = RSBLUR_WB[camera.split("-", 1)[1]]
    else:
        red = float(rng.uniform(*p["red_gain"]))
        blue = float(rng.uniform(*p["blue_gain"]))
    return {
        "noise_preset": preset,
        "camera": camera,
        "bayer": bayer,
        "wb_red_gain": float(red),
        "wb_blue_gain": float(blue),
        "noise_k": float(rng.uniform(0.5 * p["beta1"], 1.5 * p["beta1"])),
        "noise_sigma": float(rng.uniform(0.5 * p["beta2"], 1.5 * p["beta2"])),
    }


# ----------------------------------------------------------------------------------- the steps


def _sites(pattern: str) -> list[tuple[int, int, int]]:
    """``(dy, dx, channel)`` of the four sites of a 2×2 Bayer cell."""
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"Bayer pattern {pattern!r}: choose one of {', '.join(BAYER_PATTERNS)}")
    return [(i // 2, i % 2, "RGB".index(pattern[i])) for i in range(4)]


def mosaic(cam: np.ndarray, pattern: str, gains: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``H×W×3`` (H, W even) → the ``H×W`` Bayer mosaic, each site scaled by its colour's gain."""
    raw = np.empty(cam.shape[:2], dtype=_F32)
    for dy, dx, c in _sites(pattern):
        np.multiply(cam[dy::2, dx::2, c], _F32(gains[c]), out=raw[dy::2, dx::2])
    return raw


def scale_sites(raw: np.ndarray, pattern: str, gains: tuple[float, float, float]) -> np.ndarray:
    """Multiply each site of an ``H×W`` mosaic by its colour's gain, in place; returns ``raw``."""
    for dy, dx, c in _sites(pattern):
        raw[dy::2, dx::2] *= _F32(gains[c])
    return raw


def poisson_gaussian(raw: np.ndarray, k: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``poisson(raw / k) · k + σ · N(0, 1)`` (shot noise of variance ``k·raw``, read noise of
    std ``σ``); float32, same shape. ``raw`` must be ≥ 0. Draws the Poisson counts, then the normals."""
    if not (k > 0 and sigma >= 0):
        raise ValueError(f"noise_k must be > 0 and noise_sigma >= 0, got {k}, {sigma}")
    out = rng.poisson(raw.astype(np.float64) / k).astype(_F32)
    out *= _F32(k)
    out += rng.standard_normal(raw.shape, dtype=_F32) * _F32(sigma)
    return out


# Malvar, He & Cutler (ICASSP 2004) kernels, as in Demosaicing_malvar2004_tf.py (all are
# symmetric under 180° rotation, so correlation = convolution).
_G_AT_RB = np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]]) / 8
_RB_AT_G_ROW = np.array([[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]]) / 8
_RB_AT_G_COL = _RB_AT_G_ROW.T
_RB_AT_BR = np.array([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]]) / 8


def demosaic_malvar(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Malvar–He–Cutler demosaicking of an ``H×W`` mosaic (H, W even) → ``H×W×3`` float32.

    Borders are reflected without repeating the edge (``BORDER_REFLECT_101``), which keeps
    every mirrored site on its own colour. Values are not clipped.
    """
    raw = np.ascontiguousarray(raw, dtype=_F32)

    def filt(kernel: np.ndarray) -> np.ndarray:
        return cv2.filter2D(raw, cv2.CV_32F, kernel.astype(_F32), borderType=cv2.BORDER_REFLECT_101)

    g_at_rb, at_g_row, at_g_col, at_br = filt(_G_AT_RB), filt(_RB_AT_G_ROW), filt(_RB_AT_G_COL), filt(_RB_AT_BR)
    out = np.empty(raw.shape + (3,), dtype=_F32)
    sites = _sites(pattern)
    colour_at = {(dy, dx): c for dy, dx, c in sites}
    for dy, dx, c in sites:
        cell = (slice(dy, None, 2), slice(dx, None, 2))
        out[cell + (c,)] = raw[cell]
        if c == 1:  # green site: the row neighbour's colour comes from the row kernel
            row_colour = colour_at[(dy, 1 - dx)]
            out[cell + (row_colour,)] = at_g_row[cell]
            out[cell + (2 - row_colour,)] = at_g_col[cell]
        else:  # red or blue site
            out[cell + (1,)] = g_at_rb[cell]
            out[cell + (2 - c,)] = at_br[cell]
    return out


def _apply_matrix(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` for an ``H×W×3`` float32 image (``cv2.transform`` takes the column-vector form)."""
    return cv2.transform(np.ascontiguousarray(x, dtype=_F32), np.ascontiguousarray(m.T, dtype=_F32))


def camera_noise(lin: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Run ``lin`` (``H×W×3`` float linear sRGB in [0, 1]) through the inverse ISP, add the noise
    on the raw mosaic, and run the forward ISP back; returns ``H×W×3 float32`` clipped to [0, 1].

    ``params``: from ``sample_camera_noise`` (``camera``, ``bayer``, ``wb_red_gain``,
    ``wb_blue_gain``, ``noise_k``, ``noise_sigma``). ``rng`` supplies only the noise realisation.
    """
    try:
        to_cam, from_cam = CAMERAS[params["camera"]]
        pattern, k, sigma = params["bayer"], float(params["noise_k"]), float(params["noise_sigma"])
        red, blue = float(params["wb_red_gain"]), float(params["wb_blue_gain"])
    except KeyError as exc:
        raise ValueError(f"camera-noise params lack or misname {exc} — were they made by sample_camera_noise? "
                         f"(cameras: {', '.join(CAMERAS)})") from exc
    x = np.asarray(lin, dtype=_F32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"camera_noise needs an H×W×3 image, got shape {x.shape}")
    h, w = x.shape[:2]
    if h % 2 or w % 2:  # a mosaic has whole 2×2 cells: reflect one row/column, crop it off at the end
        x = cv2.copyMakeBorder(x, 0, h % 2, 0, w % 2, cv2.BORDER_REFLECT_101)
    cam = np.clip(_apply_matrix(x, to_cam), 0.0, 1.0)
    gains = (red, 1.0, blue)
    raw = mosaic(cam, pattern, tuple(1.0 / g for g in gains))  # inverse white balance
    raw = poisson_gaussian(raw, k, sigma, rng)
    scale_sites(raw, pattern, gains)  # white balance
    rgb = np.clip(demosaic_malvar(raw, pattern), 0.0, 1.0)
    out = _apply_matrix(rgb[:h, :w], from_cam)
    return np.clip(out, 0.0, 1.0, out=out)


# ------------------------------------------------------------------------------ camera response

CAMERA_RESPONSES = ("a7r3",)


def apply_camera_response(image_srgb: np.ndarray, response: str = "a7r3") -> np.ndarray:
    """Re-tone an sRGB image with a camera's response: ``clip(poly(srgb_to_linear(x)), 0, 1)``.

    ``a7r3``: RealBlur's camera (RSBlur's ``lin2rgb_a7r3_polynomial``). RSBlur applies it in its
    training loader to both the blurry and the sharp image of a pair (``--adopt_crf_realblur``);
    it is a training-time transform here too: blurforge stores the sharp image that was blurred,
    so pairs re-render, and a loader can apply this to both images. ``H×W×C`` float in [0, 1] →
    float32, same shape.
    """
    from blurforge.blur import srgb_to_linear

    if response not in CAMERA_RESPONSES:
        raise ValueError(f"camera response {response!r}: choose one of {', '.join(CAMERA_RESPONSES)}")
    lin = srgb_to_linear(np.asarray(image_srgb, dtype=_F32)).astype(np.float64)
    out = np.polynomial.polynomial.polyval(lin, A7R3_RESPONSE_ALPHA)
    return np.clip(out, 0.0, 1.0).astype(_F32)
