"""Element-wise Adaptive Convolution (EAC): a per-pixel, per-channel k×k filter.

DeblurDiff's LKPN predicts one k×k kernel per latent pixel and channel; EAC applies them::

    out[b, c, h, w] = Σ_{kh, kw} x[b, c, h + kh - k//2, w + kw - k//2] · kernels[b, c·k·k + kh·k + kw, h, w]

with zero padding, i.e. exactly the unfold formula of :func:`eac_reference`, which
materialises a (B, C·k·k, H, W) column tensor and keeps it alive for backward. :func:`eac`
computes the same thing with two memory-lean backends behind one autograd function each:

- ``torch``: loops over the k·k offsets, accumulating ``shifted(x) * kernels[:, c·k·k + i]``
  from views of a zero-padded copy of x. Works on any device; saves only x and kernels.
- ``cuda``: the extension in ``csrc/`` (JIT-built on first use, see ``_cuda.py``): one fused
  forward kernel and one fused backward kernel, fp32/fp16/bf16 with fp32 accumulation.

The backend comes from the ``backend`` argument, else the ``DEBLURDIFF_EAC_BACKEND``
environment variable (``auto`` | ``torch`` | ``cuda``), else ``auto``: the extension for CUDA
tensors it supports, the PyTorch loop otherwise; if the extension cannot be built, ``auto``
warns once with the reason and falls back, while ``cuda`` raises.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

ENV_BACKEND = "DEBLURDIFF_EAC_BACKEND"
BACKENDS = ("auto", "torch", "cuda")
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA_MAX_KERNEL_SIZE = 31  # must match kMaxKernelSize in csrc/eac_kernel.cu

_warned_fallback = False


def eac(x: torch.Tensor, kernels: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Apply per-pixel, per-channel k×k kernels to ``x`` (cross-correlation, zero padding k//2).

    Args:
        x: (B, C, H, W) floating tensor; any strides (channels_last, slices, ...).
        kernels: (B, C·k·k, H, W) on the same device, odd k inferred from the shapes; kernel
            channel index ``c·k·k + kh·k + kw``. Its dtype may differ from x's (under autocast
            the LKPN output is often bf16 while x is fp32).
        backend: ``"auto"``, ``"torch"`` or ``"cuda"``; ``None`` reads ``DEBLURDIFF_EAC_BACKEND``.

    Returns:
        (B, C, H, W) in ``torch.promote_types(x.dtype, kernels.dtype)``. Products are summed in
        fp32 (fp64 for fp64 inputs). Autocast does not change the dtype: EAC is a memory-bound
        residual update, so it behaves like torch's "promote" ops instead of being down-cast.

    Gradients flow to both inputs; only x and kernels are saved for backward (no unfolded
    tensor). Double backward (``create_graph=True`` through EAC) is not supported.
    """
    k = _check_inputs(x, kernels)
    name = _resolve_backend(backend)
    if name != "torch" and x.device.type == "cuda":
        ext = _cuda_extension(name, x, kernels, k)
        if ext is not None:
            return _EACCuda.apply(x, kernels, ext)
    elif name == "cuda":
        raise ValueError(f"eac: backend 'cuda' needs CUDA tensors, got x on {x.device}")
    return _EACTorch.apply(x, kernels, k)


def eac_reference(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """The defining unfold formula (memory-hungry: keeps a (B, C·k·k, H·W) tensor for backward)."""
    k = _check_inputs(x, kernels)
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(b, c, k * k, h, w)
    return (cols * kernels.reshape(b, c, k * k, h, w)).sum(2)


def kernel_size(x: torch.Tensor, kernels: torch.Tensor) -> int:
    """The odd k with ``kernels.shape[1] == x.shape[1] * k * k`` (ValueError if there is none)."""
    return _check_inputs(x, kernels)


# --------------------------------------------------------------------------- validation


def _check_inputs(x: torch.Tensor, kernels: torch.Tensor) -> int:
    if not isinstance(x, torch.Tensor) or not isinstance(kernels, torch.Tensor):
        raise TypeError(
            f"eac: x and kernels must be tensors, got {type(x).__name__} and {type(kernels).__name__}"
        )
    if x.dim() != 4 or kernels.dim() != 4:
        raise ValueError(
            f"eac: expected x (B, C, H, W) and kernels (B, C*k*k, H, W), got x {tuple(x.shape)} "
            f"and kernels {tuple(kernels.shape)}"
        )
    if x.device != kernels.device:
        raise ValueError(f"eac: x is on {x.device} but kernels on {kernels.device}; move one")
    if not (x.dtype.is_floating_point and kernels.dtype.is_floating_point):
        raise ValueError(
            f"eac: x and kernels must be floating point, got {x.dtype} and {kernels.dtype}"
        )
    b, c, h, w = x.shape
    if kernels.shape[0] != b or kernels.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"eac: batch/spatial sizes differ: x {tuple(x.shape)} vs kernels {tuple(kernels.shape)}"
            " (kernels must be (B, C*k*k, H, W) at x's resolution)"
        )
    n = kernels.shape[1]
    k = _odd_root(n // c) if c > 0 and n % c == 0 else None
    if k is None:
        raise ValueError(
            f"eac: kernels has {n} channels but x has C={c}; expected C*k*k for an odd k "
            f"(e.g. {c * 9} for k=3, {c * 25} for k=5)"
        )
    return k


def _odd_root(kk: int) -> int | None:
    k = int(round(kk**0.5))
    return k if k * k == kk and k % 2 == 1 else None


def _resolve_backend(backend: str | None) -> str:
    source = "backend argument"
    if backend is None:
        backend, source = os.environ.get(ENV_BACKEND, "auto"), f"${ENV_BACKEND}"
    name = backend.strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"eac: unknown backend {backend!r} ({source}); use one of {BACKENDS}")
    return name


def _cuda_extension(name: str, x: torch.Tensor, kernels: torch.Tensor, k: int):
    """The extension module if it should and can serve this call, else None (or raise if forced)."""
    if x.dtype not in CUDA_DTYPES or kernels.dtype not in CUDA_DTYPES or k > CUDA_MAX_KERNEL_SIZE:
        if name == "cuda":
            raise ValueError(
                f"eac: the CUDA extension supports {[str(d) for d in CUDA_DTYPES]} and "
                f"k <= {CUDA_MAX_KERNEL_SIZE}; got {x.dtype}/{kernels.dtype}, k={k}. "
                "Use backend='torch' or 'auto'."
            )
        return None
    from deblurdiff.ops import _cuda

    ext = _cuda.load_extension()
    if ext is None:
        reason = _cuda.load_error()
        if name == "cuda":
            raise RuntimeError(f"eac: CUDA extension unavailable: {reason}")
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"deblurdiff.ops.eac: CUDA extension unavailable ({reason}); using the slower "
                f"PyTorch implementation. Set {ENV_BACKEND}=torch to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
    return ext


# --------------------------------------------------------------------------- backends


class _EACCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernels, ext):
        ctx.save_for_backward(x, kernels)
        ctx.ext = ext
        return ext.forward(x, kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, kernels = ctx.saved_tensors
        need_x, need_k = ctx.needs_input_grad[:2]
        grad_x, grad_k = ctx.ext.backward(grad_out, x, kernels, need_x, need_k)
        return grad_x, grad_k, None


class _EACTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernels, k):
        ctx.save_for_backward(x, kernels)
        ctx.k = k
        return _torch_forward(x, kernels, k)  # only ops autocast leaves alone (add/mul/copy)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, kernels = ctx.saved_tensors
        need_x, need_k = ctx.needs_input_grad[:2]
        grad_x, grad_k = _torch_backward(grad_out, x, kernels, ctx.k, need_x, need_k)
        return grad_x, grad_k, None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _padded(t: torch.Tensor, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """Zero-padded copy of t (B, C, H, W) -> (B, C, H + 2·pad, W + 2·pad) in ``dtype``."""
    b, c, h, w = t.shape
    out = t.new_zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=dtype)
    out[:, :, pad : pad + h, pad : pad + w] = t
    return out


def _torch_forward(x: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    b, c, h, w = x.shape
    out_dtype = torch.promote_types(x.dtype, kernels.dtype)
    acc_dtype = _acc_dtype(out_dtype)
    x_pad = _padded(x, k // 2, acc_dtype)
    taps = kernels.unflatten(1, (c, k * k))  # (B, C, k*k, H, W), a view for any strides
    acc = torch.zeros((b, c, h, w), dtype=acc_dtype, device=x.device)
    for i in range(k * k):
        kh, kw = divmod(i, k)
        acc.addcmul_(x_pad[:, :, kh : kh + h, kw : kw + w], taps[:, :, i])
    return acc.to(out_dtype)


def _torch_backward(grad_out, x, kernels, k, need_x, need_k):
    b, c, h, w = x.shape
    pad = k // 2
    acc_dtype = _acc_dtype(torch.promote_types(x.dtype, kernels.dtype))
    grad = grad_out.to(acc_dtype)
    grad_x = grad_k = None
    if need_k:  # grad_kernels[:, c*kk + i] = grad_out * shifted(x)
        x_pad = _padded(x, pad, acc_dtype)
        grad_k = torch.empty((b, c, k * k, h, w), dtype=kernels.dtype, device=x.device)
        for i in range(k * k):
            kh, kw = divmod(i, k)
            torch.mul(x_pad[:, :, kh : kh + h, kw : kw + w], grad, out=grad_k[:, :, i])
        grad_k = grad_k.view(b, c * k * k, h, w)
    if need_x:  # grad_x = Σ_i unshift(grad_out * kernels[:, c*kk + i])
        taps = kernels.unflatten(1, (c, k * k))
        grad_pad = torch.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=acc_dtype, device=x.device)
        for i in range(k * k):
            kh, kw = divmod(i, k)
            grad_pad[:, :, kh : kh + h, kw : kw + w].addcmul_(grad, taps[:, :, i])
        grad_x = grad_pad[:, :, pad : pad + h, pad : pad + w].to(x.dtype).contiguous()
    return grad_x, grad_k
