// Element-wise Adaptive Convolution (EAC): raw CUDA kernels.
//
// Torch-free on purpose: this header needs only the CUDA fp16/bf16 headers, so
// `eac_kernel.cu` compiles standalone with `nvcc -c`; the torch binding is eac.cpp.
//
// Layout (all tensors contiguous, NCHW):
//   x       (B, C, H, W)           type TX
//   kernels (B, C*k*k, H, W)       type TK, channel index c*k*k + kh*k + kw
//   out     (B, C, H, W)           type TO (= TX if TX == TK, else float)
//   out[b,c,h,w] = sum_{kh,kw} x[b,c,h+kh-p,w+kw-p] * kernels[b,c*k*k+kh*k+kw,h,w],  p = k/2,
//   zero padding. Because the kernel channels of plane (b,c) are the k*k channels starting at
//   (b*C + c)*k*k, a "plane" index b*C + c addresses both tensors.
//
// Work decomposition: one block per TILE_H x TILE_W output tile of one (b,c) plane, one
// thread per output pixel. The x (forward) / grad_out (backward) tile plus a k/2 halo is
// staged in shared memory as float; per-pixel kernel values are read straight from global
// memory, coalesced along w (each one is read exactly once). All arithmetic is in float.
//
// Backward is a single fused kernel and a gather (no atomics):
//   grad_kernels[b, c*kk+i, h, w] = grad_out[b,c,h,w] * x[b,c,h+kh-p,w+kw-p]
//   grad_x[b,c,y,x] = sum_{kh,kw} grad_out[b,c,y-kh+p,x-kw+p] * kernels[b,c*kk+i,y-kh+p,x-kw+p]
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace eac {

constexpr int TILE_W = 32;  // = blockDim.x, one warp along w
constexpr int TILE_H = 8;   // = blockDim.y

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Output dtype of a (TX, TK) pair, matching torch.promote_types for {float, half, bfloat16}.
template <typename TX, typename TK> struct OutType { using type = float; };
template <typename T> struct OutType<T, T> { using type = T; };

// Shared-memory floats one tile with halo needs.
__host__ __device__ inline int tile_floats(int k) { return (TILE_H + k - 1) * (TILE_W + k - 1); }

// Stage plane[h0-pad : h0+TILE_H+pad, w0-pad : w0+TILE_W+pad] into `tile` (zero outside).
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* __restrict__ plane, int H, int W,
                                          int h0, int w0, int pad) {
  const int tw = TILE_W + 2 * pad;
  const int n = (TILE_H + 2 * pad) * tw;
  for (int i = threadIdx.y * TILE_W + threadIdx.x; i < n; i += TILE_W * TILE_H) {
    const int ty = i / tw;
    const int y = h0 - pad + ty;
    const int xx = w0 - pad + (i - ty * tw);
    tile[i] = (y >= 0 && y < H && xx >= 0 && xx < W) ? to_float(plane[(int64_t)y * W + xx]) : 0.f;
  }
}

// KS > 0: kernel size known at compile time (loops fully unrolled); KS == 0: use k_rt.
template <typename TX, typename TK, int KS>
__global__ void __launch_bounds__(TILE_W * TILE_H)
forward_kernel(const TX* __restrict__ x, const TK* __restrict__ kernels,
               typename OutType<TX, TK>::type* __restrict__ out, int H, int W, int k_rt,
               int tiles_w, int tiles_per_plane) {
  using TO = typename OutType<TX, TK>::type;
  extern __shared__ float smem[];
  const int k = KS > 0 ? KS : k_rt;
  const int pad = k / 2;
  const int tw = TILE_W + 2 * pad;
  const int64_t HW = (int64_t)H * W;
  const int64_t plane = blockIdx.x / tiles_per_plane;
  const int tile = blockIdx.x - (int)(plane * tiles_per_plane);
  const int h0 = (tile / tiles_w) * TILE_H;
  const int w0 = (tile % tiles_w) * TILE_W;

  load_tile(smem, x + plane * HW, H, W, h0, w0, pad);
  __syncthreads();

  const int h = h0 + threadIdx.y;
  const int w = w0 + threadIdx.x;
  if (h >= H || w >= W) return;
  const int64_t pix = (int64_t)h * W + w;
  const TK* kp = kernels + plane * k * k * HW + pix;
  const float* xt = smem + threadIdx.y * tw + threadIdx.x;
  float acc = 0.f;
#pragma unroll
  for (int kh = 0; kh < k; ++kh) {
#pragma unroll
    for (int kw = 0; kw < k; ++kw) {
      acc += xt[kh * tw + kw] * to_float(kp[(kh * k + kw) * HW]);
    }
  }
  out[plane * HW + pix] = from_float<TO>(acc);
}

// Fused backward. grad_x / grad_kernels may be null (not needed); shared memory holds the x
// tile (for grad_kernels) followed by the grad_out tile (for grad_x), each only if needed.
template <typename TX, typename TK, int KS>
__global__ void __launch_bounds__(TILE_W * TILE_H)
backward_kernel(const typename OutType<TX, TK>::type* __restrict__ grad_out,
                const TX* __restrict__ x, const TK* __restrict__ kernels,
                TX* __restrict__ grad_x, TK* __restrict__ grad_kernels, int H, int W, int k_rt,
                int tiles_w, int tiles_per_plane) {
  extern __shared__ float smem[];
  const int k = KS > 0 ? KS : k_rt;
  const int kk = k * k;
  const int pad = k / 2;
  const int tw = TILE_W + 2 * pad;
  const int64_t HW = (int64_t)H * W;
  const int64_t plane = blockIdx.x / tiles_per_plane;
  const int tile = blockIdx.x - (int)(plane * tiles_per_plane);
  const int h0 = (tile / tiles_w) * TILE_H;
  const int w0 = (tile % tiles_w) * TILE_W;

  float* x_tile = smem;
  float* g_tile = smem + (grad_kernels != nullptr ? tile_floats(k) : 0);
  if (grad_kernels != nullptr) load_tile(x_tile, x + plane * HW, H, W, h0, w0, pad);
  if (grad_x != nullptr) load_tile(g_tile, grad_out + plane * HW, H, W, h0, w0, pad);
  __syncthreads();

  const int h = h0 + threadIdx.y;
  const int w = w0 + threadIdx.x;
  if (h >= H || w >= W) return;
  const int64_t pix = (int64_t)h * W + w;

  if (grad_kernels != nullptr) {
    const float g = to_float(grad_out[plane * HW + pix]);
    const float* xt = x_tile + threadIdx.y * tw + threadIdx.x;
    TK* gk = grad_kernels + plane * kk * HW + pix;
#pragma unroll
    for (int kh = 0; kh < k; ++kh) {
#pragma unroll
      for (int kw = 0; kw < k; ++kw) {
        gk[(kh * k + kw) * HW] = from_float<TK>(g * xt[kh * tw + kw]);
      }
    }
  }

  if (grad_x != nullptr) {
    // Output pixel (h - kh + pad, w - kw + pad) read x[h, w] through kernel tap (kh, kw).
    const TK* kb = kernels + plane * kk * HW;
    const float* gt = g_tile + (threadIdx.y + 2 * pad) * tw + threadIdx.x + 2 * pad;
    float acc = 0.f;
#pragma unroll
    for (int kh = 0; kh < k; ++kh) {
      const int hh = h - kh + pad;
#pragma unroll
      for (int kw = 0; kw < k; ++kw) {
        const int ww = w - kw + pad;
        if (hh >= 0 && hh < H && ww >= 0 && ww < W) {
          acc += gt[-kh * tw - kw] * to_float(kb[(kh * k + kw) * HW + (int64_t)hh * W + ww]);
        }
      }
    }
    grad_x[plane * HW + pix] = from_float<TX>(acc);
  }
}

}  // namespace eac
