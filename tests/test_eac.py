"""Element-wise Adaptive Convolution: values, gradients, dtypes, layouts, memory, backends."""

import importlib
import itertools
import warnings

import numpy as np
import pytest
import torch

from deblurdiff.ops import _cuda, eac
from deblurdiff.ops.eac import eac_reference, kernel_size

# `deblurdiff.ops.eac` the attribute is the function; the module is reached through importlib.
eac_mod = importlib.import_module("deblurdiff.ops.eac")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(b, c, h, w, k, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    kern = torch.randn(b, c * k * k, h, w, generator=g, dtype=torch.float64)
    kern = kern.to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad), kern.requires_grad_(requires_grad)


def _naive(x: np.ndarray, kern: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel definition, straight from the formula."""
    b, c, h, w = x.shape
    k = int(round((kern.shape[1] // c) ** 0.5))
    p = k // 2
    out = np.zeros_like(x)
    for bi, ci, y, xx in itertools.product(range(b), range(c), range(h), range(w)):
        s = 0.0
        for kh, kw in itertools.product(range(k), range(k)):
            yy, xs = y + kh - p, xx + kw - p
            if 0 <= yy < h and 0 <= xs < w:
                s += x[bi, ci, yy, xs] * kern[bi, ci * k * k + kh * k + kw, y, xx]
        out[bi, ci, y, xx] = s
    return out


def _grads(fn, x, kern, seed=1):
    x = x.detach().clone().requires_grad_(True)
    kern = kern.detach().clone().requires_grad_(True)
    out = fn(x, kern)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(g.to(device=out.device, dtype=out.dtype))
    return out.detach(), x.grad, kern.grad


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("h,w", [(5, 6), (6, 5), (7, 7)])
def test_matches_naive_loop(k, h, w):
    x, kern = _inputs(2, 2, h, w, k)
    out = eac(x, kern, backend="torch")
    np.testing.assert_allclose(out.numpy(), _naive(x.numpy(), kern.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
def test_values_and_grads_match_unfold_formula(k):
    x, kern = _inputs(3, 4, 11, 14, k, seed=k)
    ref = _grads(eac_reference, x, kern)
    got = _grads(lambda a, b: eac(a, b, backend="torch"), x, kern)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [3, 5])
def test_gradcheck_both_inputs(k):
    x, kern = _inputs(2, 2, 4, 5, k, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: eac(a, b, backend="torch"), (x, kern))


def test_grad_of_one_input_only():
    x, kern = _inputs(1, 2, 6, 7, 3)
    x_ref, k_ref = x.clone().requires_grad_(True), kern.clone().requires_grad_(True)
    eac_reference(x_ref, k_ref).sum().backward()
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(eac(xr, kern, backend="torch").sum(), xr)
    kr = kern.clone().requires_grad_(True)
    (gk,) = torch.autograd.grad(eac(x, kr, backend="torch").sum(), kr)
    torch.testing.assert_close(gx, x_ref.grad)
    torch.testing.assert_close(gk, k_ref.grad)


def test_double_backward_is_refused():
    x, kern = _inputs(1, 1, 4, 4, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(eac(x, kern).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        gx.sum().backward()


def test_empty_batch():
    x, kern = _inputs(0, 2, 5, 5, 3)
    assert eac(x, kern).shape == (0, 2, 5, 5)


# --------------------------------------------------------------------------- layouts, dtypes


def test_non_contiguous_inputs():
    x, kern = _inputs(2, 3, 9, 10, 5, dtype=torch.float32)
    ref = _grads(eac_reference, x, kern)
    big_x = torch.zeros(2, 6, 10, 12)
    big_x[:, ::2, :, 1:10] = x.transpose(2, 3)  # stored transposed, channel-strided
    x_nc = big_x[:, ::2, :, 1:10].transpose(2, 3)
    kern_cl = kern.to(memory_format=torch.channels_last)
    assert not x_nc.is_contiguous() and not kern_cl.is_contiguous()
    assert torch.equal(x_nc, x)
    got = _grads(lambda a, b: eac(a, b, backend="torch"), x_nc, kern_cl)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(eac(x_cl, kern_cl), ref[0], rtol=1e-5, atol=1e-5)


def test_mixed_dtypes_promote_and_accumulate_in_fp32():
    x, kern = _inputs(2, 4, 16, 16, 5, dtype=torch.float32)
    kern_bf16 = kern.bfloat16()
    ref = eac_reference(x, kern_bf16.float())
    out = eac(x, kern_bf16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # bf16 input, fp32 math


def test_bf16_inputs_give_bf16_close_to_fp32():
    x, kern = _inputs(2, 4, 16, 16, 5, dtype=torch.bfloat16)
    out = eac(x, kern)
    assert out.dtype == torch.bfloat16
    ref = eac_reference(x.float(), kern.float())
    # fp32 accumulation then one rounding: within one bf16 ulp of the fp32 result
    torch.testing.assert_close(out.float(), ref, rtol=2**-8, atol=1e-6)


def test_autocast_bf16_cpu():
    x, kern = _inputs(2, 4, 12, 12, 5, dtype=torch.float32)
    x.requires_grad_(True)
    conv = torch.nn.Conv2d(4, 100, 1).float()  # stands in for the LKPN head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k_pred = conv(x)
        assert k_pred.dtype == torch.bfloat16
        out = eac(x, k_pred)
        same = eac(x, kern)  # fp32 in, fp32 out: not down-cast under autocast
    assert out.dtype == torch.float32 and same.dtype == torch.float32
    torch.testing.assert_close(out, eac_reference(x, k_pred.float()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same, eac_reference(x, kern), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad is not None
    assert torch.isfinite(conv.weight.grad).all()


# --------------------------------------------------------------------------- errors, backends


@pytest.mark.parametrize(
    "x_shape,k_shape,match",
    [
        ((2, 4, 8, 8), (2, 16, 8, 8), "odd k"),  # k = 2
        ((2, 4, 8, 8), (2, 101, 8, 8), "odd k"),
        ((2, 4, 8, 8), (3, 100, 8, 8), "batch/spatial"),
        ((2, 4, 8, 8), (2, 100, 8, 9), "batch/spatial"),
        ((4, 8, 8), (100, 8, 8), r"\(B, C, H, W\)"),
    ],
)
def test_shape_errors_are_explicit(x_shape, k_shape, match):
    with pytest.raises(ValueError, match=match):
        eac(torch.zeros(x_shape), torch.zeros(k_shape))


def test_device_and_dtype_errors():
    with pytest.raises(ValueError, match="meta"):
        eac(torch.zeros(1, 1, 4, 4), torch.zeros(1, 9, 4, 4, device="meta"))
    with pytest.raises(ValueError, match="floating point"):
        eac(torch.zeros(1, 1, 4, 4, dtype=torch.int64), torch.zeros(1, 9, 4, 4))


def test_kernel_size_inference():
    assert kernel_size(torch.zeros(1, 4, 3, 3), torch.zeros(1, 100, 3, 3)) == 5
    assert kernel_size(torch.zeros(1, 3, 3, 3), torch.zeros(1, 3, 3, 3)) == 1


def test_backend_selection(monkeypatch):
    x, kern = _inputs(1, 2, 5, 5, 3)
    monkeypatch.setenv(eac_mod.ENV_BACKEND, "torch")
    assert eac(x, kern).shape == (1, 2, 5, 5)
    monkeypatch.setenv(eac_mod.ENV_BACKEND, "cdua")
    with pytest.raises(ValueError, match="DEBLURDIFF_EAC_BACKEND"):
        eac(x, kern)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        eac(x, kern, backend="cuda")


def test_fallback_warns_once_and_forced_cuda_raises(monkeypatch):
    monkeypatch.setattr(_cuda, "load_extension", lambda: None)
    monkeypatch.setattr(_cuda, "load_error", lambda: "nvcc exploded")
    monkeypatch.setattr(eac_mod, "_warned_fallback", False)
    x, kern = _inputs(1, 1, 4, 4, 3, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="nvcc exploded"):
        assert eac_mod._cuda_extension("auto", x, kern, 3) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eac_mod._cuda_extension("auto", x, kern, 3) is None  # second time: silent
    with pytest.raises(RuntimeError, match="nvcc exploded"):
        eac_mod._cuda_extension("cuda", x, kern, 3)
    with pytest.raises(ValueError, match="float64"):
        eac_mod._cuda_extension("cuda", x.double(), kern.double(), 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA failure reason")
def test_loader_reports_why_without_cuda():
    _cuda._reset_for_tests()
    try:
        assert _cuda.load_extension() is None
        assert "cuda" in _cuda.load_error().lower()
    finally:
        _cuda._reset_for_tests()


# --------------------------------------------------------------------------- memory


def _saved_bytes(fn, *args):
    total = []

    def pack(t):
        total.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(total)


def test_saves_only_inputs_for_backward():
    x, kern = _inputs(2, 4, 32, 32, 5, dtype=torch.float32, requires_grad=True)
    x_bytes, k_bytes = x.untyped_storage().nbytes(), kern.untyped_storage().nbytes()
    assert _saved_bytes(lambda a, b: eac(a, b, backend="torch"), x, kern) <= x_bytes + k_bytes
    # the reference keeps the kernel-sized column tensor besides kernels
    assert _saved_bytes(eac_reference, x, kern) >= 2 * k_bytes


# --------------------------------------------------------------------------- CUDA extension

CUDA_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


@pytest.mark.cuda
@requires_cuda
def test_cuda_extension_builds_and_is_used():
    ext = _cuda.load_extension()
    assert ext is not None, f"EAC CUDA extension failed to build: {_cuda.load_error()}"
    x, kern = _inputs(1, 4, 8, 8, 5, dtype=torch.float32, device="cuda", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning under auto
        out = eac(x, kern, backend="auto")
    assert type(out.grad_fn).__name__.startswith("_EACCuda")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("x_dtype,k_dtype", [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.bfloat16),
    (torch.float16, torch.float32),
])
@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("contiguous", [True, False])
def test_cuda_matches_torch_path(x_dtype, k_dtype, k, contiguous):
    x, kern = _inputs(2, 4, 37, 45, k, dtype=torch.float32, device="cuda", seed=k)
    x, kern = x.to(x_dtype), kern.to(k_dtype)
    if not contiguous:
        x = x.to(memory_format=torch.channels_last)
        kern = kern.transpose(2, 3).contiguous().transpose(2, 3)
    ref = _grads(lambda a, b: eac(a, b, backend="torch"), x, kern)
    got = _grads(lambda a, b: eac(a, b, backend="cuda"), x, kern)
    names = ("out", "grad_x", "grad_kernels")
    for name, r, g in zip(names, ref, got):
        assert g.dtype == r.dtype, name
        torch.testing.assert_close(g, r, **CUDA_TOL[r.dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.cuda
@requires_cuda
def test_cuda_torch_path_matches_reference():
    x, kern = _inputs(2, 4, 33, 20, 5, dtype=torch.float32, device="cuda")
    ref = _grads(eac_reference, x, kern)
    got = _grads(lambda a, b: eac(a, b, backend="torch"), x, kern)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
