"""Image quality metrics for ``deblurdiff evaluate``.

Always available (NumPy / scikit-image), on ``H×W×3`` float sRGB images in [0, 1]:

- **PSNR** ``10 log10(1 / MSE)`` with data range 1, over all pixels and channels (``inf`` for
  identical images).
- **SSIM** (Wang et al. 2004, as MATLAB's ``ssim``): Gaussian window sigma 1.5, population
  covariance, data range 1, via ``skimage.metrics.structural_similarity``; on RGB the mean over
  the three channels.

Colour space and border: RGB by default (``y_channel=False``); with ``y_channel=True`` both
metrics are computed on the BT.601 luma of MATLAB's ``rgb2ycbcr``
(``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``, still data range 1), as many deblurring
papers report. ``crop`` pixels are removed from every border first (default 0).

Optional metrics (LPIPS and the paper's no-reference NIQE, MUSIQ, MANIQA, CLIP-IQA) need a
backend package *and* its weights as local files under ``--metric-weights DIR``; nothing is ever
downloaded. :func:`load_optional_metric` returns an :class:`Unavailable` with the reason when the
package or the files are missing, and ``evaluate`` reports the metric as unavailable (empty
column) instead of faking it.

- ``lpips``: package ``lpips`` (AlexNet variant). Needs ``DIR/alexnet-owt-7be5be79.pth``
  (torchvision's AlexNet weights); the LPIPS linear layers ship inside the package.
- ``niqe``, ``musiq``, ``maniqa``, ``clipiqa``: package ``pyiqa``. Its weight files must already
  be in its cache under ``DIR`` (``TORCH_HOME`` and the Hugging Face cache are pointed at ``DIR``
  while the metric is built, with networking blocked: a missing file makes the metric unavailable).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

OPTIONAL_METRICS = ("lpips", "niqe", "musiq", "maniqa", "clipiqa")
NO_REFERENCE = ("niqe", "musiq", "maniqa", "clipiqa")
LOWER_IS_BETTER = ("lpips", "niqe")
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def to_y(image: np.ndarray) -> np.ndarray:
    """``H×W×3`` RGB in [0, 1] -> ``H×W`` BT.601 luma in [16/255, 235/255] (MATLAB ``rgb2ycbcr``)."""
    img = np.asarray(image, dtype=np.float64)
    return (16.0 + img @ np.array([65.481, 128.553, 24.966])) / 255.0


def prepare(image: np.ndarray, crop: int = 0, y_channel: bool = False) -> np.ndarray:
    """The array the metrics see: border-cropped, optionally luma, float64."""
    img = np.asarray(image, dtype=np.float64)
    if crop:
        if 2 * crop >= min(img.shape[:2]):
            raise ValueError(f"--crop {crop} removes the whole {img.shape[1]}x{img.shape[0]} image")
        img = img[crop:-crop, crop:-crop]
    return to_y(img) if y_channel else img


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape arrays; ``inf`` if identical."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ {pred.shape} vs {target.shape}")
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM with a Gaussian window (sigma 1.5, population covariance) of ``H×W`` or ``H×W×C`` arrays."""
    from skimage.metrics import structural_similarity

    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ {pred.shape} vs {target.shape}")
    kwargs = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if pred.ndim == 3:
        kwargs["channel_axis"] = -1
    return float(structural_similarity(pred, target, **kwargs))


def full_reference(pred: np.ndarray, target: np.ndarray, crop: int = 0, y_channel: bool = False) -> dict:
    """``{"psnr": dB, "ssim": value}`` of ``pred`` against ``target`` (``H×W×3`` in [0, 1])."""
    p, t = prepare(pred, crop, y_channel), prepare(target, crop, y_channel)
    return {"psnr": psnr(p, t), "ssim": ssim(p, t)}


# ----------------------------------------------------------------------------- optional metrics


@dataclass
class Unavailable:
    """A metric that cannot be computed here, and why (printed and written to report.json)."""

    name: str
    reason: str


@dataclass
class OptionalMetric:
    """``metric(pred, target)`` -> float; ``target`` is ignored by no-reference metrics."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray | None], float]
    lower_is_better: bool

    def __call__(self, pred: np.ndarray, target: np.ndarray | None = None) -> float:
        return float(self.fn(pred, target))


@contextlib.contextmanager
def _offline(weights_dir: Path):
    """Caches pointed at ``weights_dir`` and outgoing connections refused, for building a metric."""
    keys = ("TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(TORCH_HOME=str(weights_dir), HF_HOME=str(weights_dir / "huggingface"),
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    connect = socket.socket.connect

    def refuse(self, address):
        raise OSError(f"network access blocked: {address} — metric weights must be local files")

    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = connect
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _to_tensor(image: np.ndarray, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


def _lpips(weights_dir: Path, device) -> OptionalMetric:
    import lpips
    import torch

    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)  # backbone: from our file
    state = torch.load(weights_dir / ALEXNET_FILE, map_location="cpu", weights_only=True)
    # torchvision "features.<i>.<param>" -> lpips "slice<k>.<i>.<param>" (slices keep the indices)
    targets = {}
    for name in net.net.state_dict():
        _, idx, param = name.split(".")
        targets[f"features.{idx}.{param}"] = name
    net.net.load_state_dict({targets[k]: v for k, v in state.items() if k in targets}, strict=True)
    net = net.eval().to(device)

    def fn(pred, target):
        with torch.no_grad():  # lpips takes [-1, 1]
            return net(_to_tensor(pred, device) * 2 - 1, _to_tensor(target, device) * 2 - 1).item()

    return OptionalMetric("lpips", fn, lower_is_better=True)


def _pyiqa(name: str, device) -> OptionalMetric:
    import pyiqa
    import torch

    metric = pyiqa.create_metric(name, device=device, as_loss=False)

    def fn(pred, target):
        with torch.no_grad():
            return metric(_to_tensor(pred, device)).item()

    return OptionalMetric(name, fn, lower_is_better=bool(getattr(metric, "lower_better", name in LOWER_IS_BETTER)))


def load_optional_metric(name: str, weights_dir: str | os.PathLike | None, device: str = "cpu"
                         ) -> OptionalMetric | Unavailable:
    """Build an optional metric from local weights, or say why it is unavailable. Never downloads."""
    if name not in OPTIONAL_METRICS:
        raise ValueError(f"metric {name!r} unknown — optional metrics: {', '.join(OPTIONAL_METRICS)}")
    package = "lpips" if name == "lpips" else "pyiqa"
    if importlib.util.find_spec(package) is None:
        return Unavailable(name, f"python package '{package}' is not installed")
    if weights_dir is None:
        return Unavailable(name, "no --metric-weights DIR given (weights are never downloaded)")
    wdir = Path(weights_dir).expanduser()
    if not wdir.is_dir():
        return Unavailable(name, f"--metric-weights {wdir}: no such directory")
    if name == "lpips" and not (wdir / ALEXNET_FILE).is_file():
        return Unavailable(name, f"{wdir / ALEXNET_FILE} missing (torchvision AlexNet weights)")
    try:
        with _offline(wdir):
            return _lpips(wdir, device) if name == "lpips" else _pyiqa(name, device)
    except Exception as exc:  # a backend failing to build must not kill the PSNR/SSIM report
        return Unavailable(name, f"{package} could not build it from {wdir}: {type(exc).__name__}: {exc}")
