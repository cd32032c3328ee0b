// Router tail for both views of all users in one launch:
//   z = x / temperature,  p = exp(z - max z)
//   dense:  g = p / sum(p)
//   top-k:  K = the top_k largest x (ties: lowest index),  g = p * [e in K] / sum_K p
// computed in fp32 and stored in the logits' dtype (the torch path's semantics, see
// l2rec_kernels/ops/route.py). The kept set is chosen on the fp32 logits x themselves,
// as the torch and triton paths do, so no rounding of x / temperature can change it.
//
// Design: one thread per row. A row is E (a handful of) experts and S = 2 * users rows,
// so the launch latency dominates and a thread per row needs no cross-lane
// communication at all; each pass re-reads the row, which sits in L1 after the first.
// Top-k needs no per-row scratch: round r finds the largest (x, -index) pair strictly
// below round r-1's pick, so after top_k rounds the last pick is the threshold of K.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "l2rec_kernels.h"

namespace l2rec {
namespace {

constexpr int kRouteThreads = 128;

// Explicit conversions: torch builds extensions with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so the implicit ones are not available.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// (a, ia) comes before (b, ib) in the top-k order: larger value first, then lower index.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

template <typename T>
__global__ void __launch_bounds__(kRouteThreads)
    route_kernel(const T* __restrict__ logits, T* __restrict__ gates, int64_t rows,
                       int experts, int top_k, float temperature) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const T* x = logits + row * experts;  // int64: rows * experts may pass 2^31
  T* g = gates + row * experts;

  float zmax = -INFINITY;
  for (int e = 0; e < experts; ++e) zmax = fmaxf(zmax, to_float(x[e]) / temperature);

  const bool dense = top_k <= 0 || top_k >= experts;
  // Top-k threshold: e is kept iff (kv, ki) does not rank before (x[e], e), i.e. e is the
  // last pick or ranks before it. Unused when dense.
  float kv = -INFINITY;
  int ki = experts;
  if (!dense) {
    float prev_v = INFINITY;  // round 0 may pick anything: nothing ranks before this
    int prev_i = -1;
    for (int r = 0; r < top_k; ++r) {
      float best_v = -INFINITY;
      int best_i = experts;  // "none yet": any -inf logit still ranks before it
      for (int e = 0; e < experts; ++e) {
        const float v = to_float(x[e]);
        if (ranks_before(prev_v, prev_i, v, e) && ranks_before(v, e, best_v, best_i)) {
          best_v = v;
          best_i = e;
        }
      }
      prev_v = best_v;
      prev_i = best_i;
    }
    kv = prev_v;
    ki = prev_i;
  }

  // The row's largest logit is always kept (top_k >= 1), so its exp(0) = 1 is in the sum
  // and the division below is safe for finite rows.
  float sum = 0.f;
  for (int e = 0; e < experts; ++e) {
    const float v = to_float(x[e]);
    if (dense || !ranks_before(kv, ki, v, e)) sum += expf(v / temperature - zmax);
  }
  const float inv_sum = 1.f / sum;
  for (int e = 0; e < experts; ++e) {
    const float v = to_float(x[e]);
    const bool keep = dense || !ranks_before(kv, ki, v, e);
    g[e] = from_float<T>(keep ? expf(v / temperature - zmax) * inv_sum : 0.f);
  }
}

template <typename T>
cudaError_t launch_typed(const void* logits, void* gates, int64_t rows, int experts, int top_k,
                         float temperature, cudaStream_t stream) {
  const int64_t blocks = (rows + kRouteThreads - 1) / kRouteThreads;
  route_kernel<T><<<static_cast<unsigned>(blocks), kRouteThreads, 0, stream>>>(
      static_cast<const T*>(logits), static_cast<T*>(gates), rows, experts, top_k,
      temperature);
  return cudaGetLastError();
}

}  // namespace

const char* launch_route(const void* logits, void* gates, int64_t rows, int64_t experts,
                               int64_t top_k, float temperature, FloatKind kind, void* stream) {
  if (rows == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const int e = static_cast<int>(experts);  // the caller checked experts <= INT32_MAX
  const int k = static_cast<int>(top_k < 0 || top_k > experts ? 0 : top_k);
  cudaError_t err = cudaSuccess;
  switch (kind) {
    case FloatKind::kFloat32:
      err = launch_typed<float>(logits, gates, rows, e, k, temperature, s);
      break;
    case FloatKind::kFloat16:
      err = launch_typed<__half>(logits, gates, rows, e, k, temperature, s);
      break;
    case FloatKind::kBFloat16:
      err = launch_typed<__nv_bfloat16>(logits, gates, rows, e, k, temperature, s);
      break;
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace l2rec
