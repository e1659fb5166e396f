// One-query attention over a static KV cache (a decode step): out[b, h] = softmax(q k^T * scale +
// mask) v for each batch row b and query head h, reading the grouped KV heads where they are.
// Why its own kernel: for q_len 1 with a mask, transformers' SDPA path repeats each KV head for its
// query heads (two full cache copies a layer) and runs the general memory-efficient kernel over
// every cache column, written or not; a 4B decode step spent ~27% of its GPU time there. Here
// masked columns (-inf, the cache's unwritten tail) are never read, and nothing is copied.
// Pure CUDA (no torch headers), like nvfp4_kernels.cu.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <math.h>

#include "nvfp4_kernels.h"

namespace nvfp4 {
namespace {

constexpr int ATT_THREADS = 256;
constexpr int ATT_MAX_DIM = 256;   // head_dim <= 256 and divides 256 (checked by the caller)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction through `red` (one float per warp); every thread gets the result.
template <bool MAX>
__device__ float block_reduce(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < nwarps; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();  // red is reused by the next reduction
  return r;
}

// One block per (b, h). Shared memory: L scores, then ATT_THREADS partial outputs.
// Phase 1: warp w scores keys w, w + 8, ...: each lane holds D/32 query dims in registers.
// Phase 2: softmax over the scores (fp32). Phase 3: thread t sums p_j v[j, t % D] over keys
// j = t / D (mod 256 / D); the groups' partial sums are added at the end.
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS) decode_attention_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ mask,
    T* __restrict__ out, int Hq, int group, int L, int D, int64_t qb, int64_t qh, int64_t kb, int64_t kh,
    int64_t kl, int64_t vb, int64_t vh, int64_t vl, int64_t mb, float scale) {
  extern __shared__ float smem[];
  float* p = smem;                 // [L]
  float* part = smem + L;          // [ATT_THREADS]
  __shared__ float red[ATT_THREADS / 32];
  const int b = blockIdx.x / Hq, h = blockIdx.x % Hq, hk = h / group;
  const T* qp = q + b * qb + h * qh;
  const T* kp = k + b * kb + hk * kh;
  const T* vp = v + b * vb + hk * vh;
  const T* mp = mask ? mask + b * mb : nullptr;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  float qr[ATT_MAX_DIM / 32];
#pragma unroll
  for (int i = 0; i < ATT_MAX_DIM / 32; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < D ? to_f(qp[d]) * scale : 0.f;
  }
  for (int j = warp; j < L; j += nwarps) {
    const float m = mp ? to_f(mp[j]) : 0.f;
    float s = -INFINITY;
    if (m != -INFINITY) {          // a masked column is never read (the cache's unwritten tail)
      const T* kj = kp + j * kl;
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < ATT_MAX_DIM / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < D) acc += qr[i] * to_f(kj[d]);
      }
      s = warp_sum(acc) + m;
    }
    if (lane == 0) p[j] = s;
  }
  __syncthreads();

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < L; j += blockDim.x) mx = fmaxf(mx, p[j]);
  mx = block_reduce<true>(mx, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < L; j += blockDim.x) {
    const float e = p[j] == -INFINITY ? 0.f : __expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, red);   // its trailing barrier also publishes p

  const int groups = blockDim.x / D, d = threadIdx.x % D, g = threadIdx.x / D;
  float acc = 0.f;
  for (int j = g; j < L; j += groups) {
    const float pj = p[j];
    if (pj != 0.f) acc += pj * to_f(vp[j * vl + d]);
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < D) {
    float o = 0.f;
    for (int gg = 0; gg < groups; ++gg) o += part[gg * D + threadIdx.x];
    out[(int64_t)(b * Hq + h) * D + threadIdx.x] = from_f<T>(sum > 0.f ? o / sum : 0.f);
  }
}

template <typename T>
int launch_t(const void* q, const void* k, const void* v, const void* mask, void* out, int B, int Hq, int Hkv,
             int L, int D, const int64_t* st, float scale, cudaStream_t s) {
  const size_t shared = (size_t)(L + ATT_THREADS) * sizeof(float);
  decode_attention_kernel<T><<<B * Hq, ATT_THREADS, shared, s>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(mask),
      static_cast<T*>(out), Hq, Hq / Hkv, L, D, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8],
      scale);
  return (int)cudaGetLastError();
}

}  // namespace

// the scores and partial sums live in the default 48 KiB of dynamic shared memory (less `red`)
int decode_attention_max_keys() { return (48 * 1024 - 256) / (int)sizeof(float) - ATT_THREADS; }

int launch_decode_attention(const void* q, const void* k, const void* v, const void* mask, void* out, int dtype,
                            int B, int Hq, int Hkv, int L, int D, const int64_t* strides, float scale,
                            void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == 0) return launch_t<float>(q, k, v, mask, out, B, Hq, Hkv, L, D, strides, scale, s);
  if (dtype == 1) return launch_t<__half>(q, k, v, mask, out, B, Hq, Hkv, L, D, strides, scale, s);
  return launch_t<__nv_bfloat16>(q, k, v, mask, out, B, Hq, Hkv, L, D, strides, scale, s);
}

}  // namespace nvfp4
