// Element-wise Adaptive Convolution (EAC): torch binding of the CUDA kernels in eac_kernel.cu.
//
// Exposes forward(x, kernels) -> out and backward(grad_out, x, kernels, need_x, need_kernels)
// -> [grad_x, grad_kernels] (undefined tensors for grads not requested). Shapes, dtypes and
// devices are validated again here, but the friendly errors live in deblurdiff/ops/eac.py.
// Non-contiguous inputs are made contiguous; the kernels assume dense NCHW.

#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

extern "C" int eac_cuda_forward(const void* x, int x_dtype, const void* kernels, int k_dtype,
                                void* out, int B, int C, int H, int W, int k, void* stream);
extern "C" int eac_cuda_backward(const void* grad_out, const void* x, int x_dtype,
                                 const void* kernels, int k_dtype, void* grad_x,
                                 void* grad_kernels, int B, int C, int H, int W, int k,
                                 void* stream);
extern "C" const char* eac_cuda_error_string(int code);

namespace {

int dtype_code(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default:
      TORCH_CHECK(false, "eac CUDA: ", name, " must be float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
  return -1;
}

struct Sizes {
  int B, C, H, W, k;
};

Sizes check_inputs(const at::Tensor& x, const at::Tensor& kernels) {
  TORCH_CHECK(x.is_cuda() && kernels.is_cuda(), "eac CUDA: x and kernels must be CUDA tensors");
  TORCH_CHECK(x.device() == kernels.device(), "eac CUDA: x and kernels on different devices");
  TORCH_CHECK(x.dim() == 4 && kernels.dim() == 4, "eac CUDA: x and kernels must be 4-D");
  const int64_t C = x.size(1);
  TORCH_CHECK(C > 0 && kernels.size(1) % C == 0, "eac CUDA: kernels.size(1) not a multiple of C");
  const int64_t kk = kernels.size(1) / C;
  int64_t k = 1;
  while (k * k < kk) k += 2;
  TORCH_CHECK(k * k == kk, "eac CUDA: kernels.size(1) / C = ", kk, " is not an odd square");
  TORCH_CHECK(kernels.size(0) == x.size(0) && kernels.size(2) == x.size(2) &&
                  kernels.size(3) == x.size(3),
              "eac CUDA: batch / spatial sizes of x and kernels differ");
  TORCH_CHECK(x.size(0) <= INT_MAX && C <= INT_MAX && x.size(2) <= INT_MAX &&
                  x.size(3) <= INT_MAX,
              "eac CUDA: sizes too large");
  return {(int)x.size(0), (int)C, (int)x.size(2), (int)x.size(3), (int)k};
}

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, "eac CUDA ", what, " failed: ", eac_cuda_error_string(rc));
}

}  // namespace

at::Tensor eac_forward(const at::Tensor& x_in, const at::Tensor& kernels_in) {
  const Sizes s = check_inputs(x_in, kernels_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  const auto out_type = at::promote_types(x.scalar_type(), kernels.scalar_type());
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, x.options().dtype(out_type));
  if (out.numel() == 0) return out;
  const int rc = eac_cuda_forward(x.data_ptr(), dtype_code(x, "x"), kernels.data_ptr(),
                                  dtype_code(kernels, "kernels"), out.data_ptr(), s.B, s.C, s.H,
                                  s.W, s.k, c10::cuda::getCurrentCUDAStream().stream());
  check_rc(rc, "forward");
  return out;
}

std::vector<at::Tensor> eac_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                     const at::Tensor& kernels_in, bool need_x,
                                     bool need_kernels) {
  const Sizes s = check_inputs(x_in, kernels_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto out_type = at::promote_types(x_in.scalar_type(), kernels_in.scalar_type());
  TORCH_CHECK(grad_out_in.sizes() == x_in.sizes(), "eac CUDA: grad_out shape ",
              grad_out_in.sizes(), " != x shape ", x_in.sizes());
  TORCH_CHECK(grad_out_in.device() == x_in.device(), "eac CUDA: grad_out on another device");
  const at::Tensor grad_out = grad_out_in.to(out_type).contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor grad_x, grad_kernels;
  if (need_x) grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (need_kernels) grad_kernels = at::empty_like(kernels, at::MemoryFormat::Contiguous);
  if ((need_x || need_kernels) && x.numel() > 0) {
    const int rc = eac_cuda_backward(
        grad_out.data_ptr(), x.data_ptr(), dtype_code(x, "x"), kernels.data_ptr(),
        dtype_code(kernels, "kernels"), need_x ? grad_x.data_ptr() : nullptr,
        need_kernels ? grad_kernels.data_ptr() : nullptr, s.B, s.C, s.H, s.W, s.k,
        c10::cuda::getCurrentCUDAStream().stream());
    check_rc(rc, "backward");
  }
  return {grad_x, grad_kernels};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Element-wise Adaptive Convolution (EAC) CUDA kernels";
  m.def("forward", &eac_forward, "EAC forward (CUDA)", pybind11::arg("x"),
        pybind11::arg("kernels"));
  m.def("backward", &eac_backward, "EAC backward (CUDA)", pybind11::arg("grad_out"),
        pybind11::arg("x"), pybind11::arg("kernels"), pybind11::arg("need_x"),
        pybind11::arg("need_kernels"));
}
