// AdamW with 8-bit states (--adam-state-bits 8): one warp per block of ADAM8_BLOCK values. The codes
// and the update are nvfp4_common.h's (the CPU kernel runs the same functions).
//
// Why: full-parameter QAT of the 4B holds its AdamW states in bf16, 4 bytes a value (16.4 GiB),
// the largest part of a train step's memory. Here a state is 1 byte a value plus 4 bytes per 256
// values: 8.1 GiB less on the 4B, so a step without layer checkpointing may fit where today only
// the slower checkpointed one does. Traffic per value: 10 bytes against fused bf16 AdamW's 14.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "nvfp4_common.h"
#include "nvfp4_kernels.h"

namespace nvfp4 {
namespace {

// One warp per block of ADAM8_BLOCK values, each lane 8 of them (value j*32 + lane of the block:
// every load and store of the warp is one coalesced row). The block's two scales are warp maxima
// (shuffles, no shared memory, no barrier), so a CTA of 8 warps runs 8 blocks independently.
// Why not a thread a value (the first version): two CTA-wide reductions per block, four barriers,
// and one value in flight per thread gave 0.43x fused AdamW's speed on the H200 (bench_adam8.py).
constexpr int kWarps = 8;
constexpr int kPerLane = ADAM8_BLOCK / 32;

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) adam8_kernel(
    T* __restrict__ p, const T* __restrict__ g, uint8_t* __restrict__ mq, float* __restrict__ ms,
    uint8_t* __restrict__ sq, float* __restrict__ ss, int64_t n, int64_t nb, float lr, float beta1,
    float beta2, float eps, float wd, float bc1, float sqrt_bc2) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= nb) return;  // the whole warp leaves together: the shuffles below see all 32 lanes
  const int64_t base = b * ADAM8_BLOCK + lane;
  const float m_scale_old = ms[b], s_scale_old = ss[b];
  float w[kPerLane], gr[kPerLane];
  uint8_t mc[kPerLane], sc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {  // all loads first: 32 of them in flight per lane
    const int64_t i = base + j * 32;
    if (i < n) {
      w[j] = to_float(p[i]);
      gr[j] = to_float(g[i]);
      mc[j] = mq[i];
      sc[j] = sq[i];
    }
  }
  float m[kPerLane], s[kPerLane], m_scale = 0.f, s_scale = 0.f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = base + j * 32;
    m[j] = 0.f;
    s[j] = 0.f;
    if (i < n) {
      float w_new;
      adam8_update(w[j], gr[j], adam8_decode_m(mc[j], m_scale_old), adam8_decode_s(sc[j], s_scale_old), lr,
                   beta1, beta2, eps, wd, bc1, sqrt_bc2, &w_new, &m[j], &s[j]);
      p[i] = from_float<T>(w_new);
      m_scale = fmaxf(m_scale, fabsf(m[j]));
      s_scale = fmaxf(s_scale, s[j]);
    }
  }
  m_scale = warp_max(m_scale);
  s_scale = warp_max(s_scale);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t i = base + j * 32;
    if (i < n) {
      mq[i] = adam8_encode_m(m[j], m_scale);
      sq[i] = adam8_encode_s(s[j], s_scale);
    }
  }
  if (lane == 0) {
    ms[b] = m_scale;
    ss[b] = s_scale;
  }
}

template <typename T>
void launch_typed(void* p, const void* g, uint8_t* mq, float* ms, uint8_t* sq, float* ss, int64_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float sqrt_bc2, cudaStream_t stream) {
  const int64_t nb = (n + ADAM8_BLOCK - 1) / ADAM8_BLOCK;
  const int64_t ctas = (nb + kWarps - 1) / kWarps;
  adam8_kernel<T><<<static_cast<unsigned>(ctas), kWarps * 32, 0, stream>>>(
      static_cast<T*>(p), static_cast<const T*>(g), mq, ms, sq, ss, n, nb, lr, beta1, beta2, eps, wd, bc1,
      sqrt_bc2);
}

}  // namespace

int launch_adam8(void* p, int p_dtype, const void* g, int g_dtype, uint8_t* mq, float* ms, uint8_t* sq,
                 float* ss, int64_t n, float lr, float beta1, float beta2, float eps, float wd, float bc1,
                 float bc2, void* stream) {
  if (n <= 0) return 0;
  if (g_dtype != p_dtype) return static_cast<int>(cudaErrorInvalidValue);  // the wrapper checks it first
  const auto st = static_cast<cudaStream_t>(stream);
  const float sqrt_bc2 = sqrtf(bc2);
  if (p_dtype == 0) launch_typed<float>(p, g, mq, ms, sq, ss, n, lr, beta1, beta2, eps, wd, bc1, sqrt_bc2, st);
  else if (p_dtype == 1) launch_typed<__half>(p, g, mq, ms, sq, ss, n, lr, beta1, beta2, eps, wd, bc1, sqrt_bc2, st);
  else launch_typed<__nv_bfloat16>(p, g, mq, ms, sq, ss, n, lr, beta1, beta2, eps, wd, bc1, sqrt_bc2, st);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace nvfp4
