"""Lazy loader of the EAC CUDA extension (``csrc/eac.cpp`` + ``csrc/eac_kernel.cu``).

The extension is JIT-built with :func:`torch.utils.cpp_extension.load` the first time
:func:`load_extension` is called (in practice: the first ``eac`` call on a CUDA tensor) and
cached for the process; torch also caches the build on disk (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``), so later processes only re-link when a source changed.
A failed build is remembered too, so it is attempted once per process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = (_CSRC / "eac.cpp", _CSRC / "eac_kernel.cu")
_EXTENSION_NAME = "deblurdiff_eac"

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None


def load_extension() -> ModuleType | None:
    """Return the compiled extension module, or ``None`` if it cannot be built/loaded.

    On ``None``, :func:`load_error` says why (no CUDA, no nvcc, compiler error, ...).
    """
    global _module, _error
    if _module is not None or _error is not None:
        return _module
    with _lock:
        if _module is not None or _error is not None:
            return _module
        try:
            _module = _build()
        except Exception as exc:  # noqa: BLE001 - any build/import failure means "fall back"
            _error = f"{type(exc).__name__}: {exc}".strip()
            if len(_error) > 2000:  # compiler logs can be huge; keep the tail, where errors are
                _error = "..." + _error[-2000:]
    return _module


def load_error() -> str | None:
    """Why :func:`load_extension` returned ``None`` (``None`` if not attempted or it worked)."""
    return _error


def _build() -> ModuleType:
    import torch
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} was built without CUDA")
    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("CUDA toolkit (nvcc) not found; set CUDA_HOME")
    missing = [str(p) for p in _SOURCES if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"EAC sources missing (package data not installed?): {missing}")
    return cpp_extension.load(
        name=_EXTENSION_NAME,
        sources=[str(p) for p in _SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],  # language standard and -gencode flags come from torch
        verbose=False,
    )


def _reset_for_tests() -> None:
    """Forget the cached module/error (tests only)."""
    global _module, _error
    with _lock:
        _module = None
        _error = None
