"""Shared fixtures: real photographs from scikit-image, small kernel banks, CUDA marker."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A bundled scikit-image photograph as RGB uint8, optionally resized to (w, h)."""
    import cv2
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3])
    if size is not None:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root except run-specific ones (timings)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "stats" not in p.parts
    }


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory) -> Path:
    """A 16-kernel bank of 15×15 kernels (small so tests stay fast)."""
    from blurforge.kernels import generate_bank, write_bank

    path = tmp_path_factory.mktemp("bank") / "kernels.parquet"
    write_bank(generate_bank(count=16, seed=3, size=15, length_min=2, length_max=30, progress=False), path)
    return path


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """Four small real photographs as PNG."""
    d = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        write_png(d / f"{name}.png", photo(name, (96, 64)))
    return d


def perturb(module, seed: int = 1, scale: float = 0.02) -> None:
    """Add seeded noise to every parameter of a torch module (so a zero-initialised model is not
    trivially the identity and save/load tests can fail)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def pairs_dir(photos_dir, small_bank, tmp_path_factory) -> Path:
    """8 pairs (96×64) from 4 photographs, all in the train split."""
    from blurforge.cli import main

    out = tmp_path_factory.mktemp("pairs") / "pairs"
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out", str(out),
                 "--seed", "1", "--pairs-per-image", "2", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core machine
    OpenMP's spinning threads can slow a step down many times over."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fresh_accelerate_state():
    """Each training run in this process builds its own Accelerator (mixed precision differs between tests)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def option_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help text as --help prints it (``%(default)s`` expanded), by option name."""
    formatter = parser._get_formatter()
    return {"/".join(a.option_strings) or a.dest: formatter._expand_help(a) for a in parser._actions if a.help}


def package_imports(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that the file ``path`` imports anywhere (top level or inside
    functions), by their names inside the package, itself excluded."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            found |= {node.module} if node.module != package else {f"{package}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package + ".")}
    return {m.split(".")[1] for m in found if m.count(".") >= 1} - {path.stem}
