// Element-wise Adaptive Convolution (EAC): host launchers with a plain C interface.
//
// Torch-free, so it compiles standalone:  nvcc -std=c++17 -arch=sm_90 -c eac_kernel.cu
// eac.cpp (the torch binding) passes raw pointers, a dtype code per tensor and the stream.
// Dtype codes: 0 = float32, 1 = float16, 2 = bfloat16. The output / grad_out dtype is the
// x dtype when x and kernels share a dtype, float32 otherwise (torch.promote_types).
// Return value: a cudaError_t (0 = success); eac_cuda_error_string() describes it.

#include <cuda_runtime.h>

#include <climits>
#include <type_traits>

#include "eac_kernel.cuh"

namespace {

constexpr int kMaxKernelSize = 31;  // keeps the two shared-memory tiles far below 48 KiB

template <typename T> struct Tag { using type = T; };

template <typename F> int with_type(int code, F&& f) {
  switch (code) {
    case 0: return f(Tag<float>{});
    case 1: return f(Tag<__half>{});
    case 2: return f(Tag<__nv_bfloat16>{});
    default: return (int)cudaErrorInvalidValue;
  }
}

struct Launch {
  dim3 grid, block;
  int tiles_w, tiles_per_plane;
};

// Returns false if the problem does not fit the launch scheme (caller reports invalid value).
bool plan(int B, int C, int H, int W, Launch* l) {
  l->tiles_w = (W + eac::TILE_W - 1) / eac::TILE_W;
  const long long tiles_h = (H + eac::TILE_H - 1) / eac::TILE_H;
  const long long per_plane = tiles_h * l->tiles_w;
  const long long blocks = per_plane * B * C;
  if (blocks <= 0 || blocks > INT_MAX) return false;
  l->tiles_per_plane = (int)per_plane;
  l->grid = dim3((unsigned)blocks);
  l->block = dim3(eac::TILE_W, eac::TILE_H);
  return true;
}

template <typename TX, typename TK, int KS>
void launch_forward(const Launch& l, size_t smem, cudaStream_t s, const void* x, const void* kern,
                    void* out, int H, int W, int k) {
  using TO = typename eac::OutType<TX, TK>::type;
  eac::forward_kernel<TX, TK, KS><<<l.grid, l.block, smem, s>>>(
      static_cast<const TX*>(x), static_cast<const TK*>(kern), static_cast<TO*>(out), H, W, k,
      l.tiles_w, l.tiles_per_plane);
}

template <typename TX, typename TK, int KS>
void launch_backward(const Launch& l, size_t smem, cudaStream_t s, const void* gout,
                     const void* x, const void* kern, void* gx, void* gk, int H, int W, int k) {
  using TO = typename eac::OutType<TX, TK>::type;
  eac::backward_kernel<TX, TK, KS><<<l.grid, l.block, smem, s>>>(
      static_cast<const TO*>(gout), static_cast<const TX*>(x), static_cast<const TK*>(kern),
      static_cast<TX*>(gx), static_cast<TK*>(gk), H, W, k, l.tiles_w, l.tiles_per_plane);
}

// Calls f.template operator()<KS>() with KS = k for the common sizes, 0 (runtime k) otherwise.
template <typename F> void with_kernel_size(int k, F&& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

bool valid_sizes(int B, int C, int H, int W, int k) {
  return B > 0 && C > 0 && H > 0 && W > 0 && k >= 1 && k % 2 == 1 && k <= kMaxKernelSize;
}

}  // namespace

extern "C" int eac_cuda_forward(const void* x, int x_dtype, const void* kernels, int k_dtype,
                                void* out, int B, int C, int H, int W, int k, void* stream) {
  if (!valid_sizes(B, C, H, W, k)) return (int)cudaErrorInvalidValue;
  Launch l;
  if (!plan(B, C, H, W, &l)) return (int)cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * eac::tile_floats(k);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int rc = with_type(x_dtype, [&](auto tx) {
    return with_type(k_dtype, [&](auto tk) {
      using TX = typename decltype(tx)::type;
      using TK = typename decltype(tk)::type;
      with_kernel_size(k, [&](auto ks) {
        launch_forward<TX, TK, decltype(ks)::value>(l, smem, s, x, kernels, out, H, W, k);
      });
      return 0;
    });
  });
  if (rc != 0) return rc;
  return (int)cudaGetLastError();
}

extern "C" int eac_cuda_backward(const void* grad_out, const void* x, int x_dtype,
                                 const void* kernels, int k_dtype, void* grad_x,
                                 void* grad_kernels, int B, int C, int H, int W, int k,
                                 void* stream) {
  if (!valid_sizes(B, C, H, W, k)) return (int)cudaErrorInvalidValue;
  if (grad_x == nullptr && grad_kernels == nullptr) return 0;
  Launch l;
  if (!plan(B, C, H, W, &l)) return (int)cudaErrorInvalidValue;
  const int tiles = (grad_x != nullptr) + (grad_kernels != nullptr);
  const size_t smem = sizeof(float) * eac::tile_floats(k) * tiles;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int rc = with_type(x_dtype, [&](auto tx) {
    return with_type(k_dtype, [&](auto tk) {
      using TX = typename decltype(tx)::type;
      using TK = typename decltype(tk)::type;
      with_kernel_size(k, [&](auto ks) {
        launch_backward<TX, TK, decltype(ks)::value>(l, smem, s, grad_out, x, kernels, grad_x,
                                                     grad_kernels, H, W, k);
      });
      return 0;
    });
  });
  if (rc != 0) return rc;
  return (int)cudaGetLastError();
}

extern "C" const char* eac_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
