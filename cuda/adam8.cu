// AdamW with 8-bit states (--adam-state-bits 8): one CTA per block of ADAM8_BLOCK values, one thread
// a value. The codes and the update are nvfp4_common.h's (the CPU kernel runs the same functions).
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

constexpr int kThreads = ADAM8_BLOCK;

__device__ __forceinline__ float load_as_float(const void* p, int dtype, int64_t i) {
  if (dtype == 0) return static_cast<const float*>(p)[i];
  if (dtype == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ void store_from_float(void* p, int dtype, int64_t i, float x) {
  if (dtype == 0) static_cast<float*>(p)[i] = x;
  else if (dtype == 1) static_cast<__half*>(p)[i] = __float2half_rn(x);
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x);
}

// The largest x over the CTA (every thread gets it).
__device__ __forceinline__ float block_max(float x, float* shared) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float r = lane < (kThreads / 32) ? shared[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) r = fmaxf(r, __shfl_xor_sync(0xffffffffu, r, o));
  __syncthreads();  // shared is reused by the next call
  return r;
}

__global__ void __launch_bounds__(kThreads) adam8_kernel(
    void* p, int p_dtype, const void* g, int g_dtype, uint8_t* mq, float* ms, uint8_t* sq, float* ss,
    int64_t n, float lr, float beta1, float beta2, float eps, float wd, float bc1, float sqrt_bc2) {
  __shared__ float shared[kThreads / 32];
  const int64_t b = blockIdx.x;
  const int64_t i = b * kThreads + threadIdx.x;
  const bool on = i < n;
  float m = 0.f, s = 0.f;
  if (on) {
    float w;
    adam8_update(load_as_float(p, p_dtype, i), load_as_float(g, g_dtype, i), adam8_decode_m(mq[i], ms[b]),
                 adam8_decode_s(sq[i], ss[b]), lr, beta1, beta2, eps, wd, bc1, sqrt_bc2, &w, &m, &s);
    store_from_float(p, p_dtype, i, w);
  }
  const float m_scale = block_max(fabsf(m), shared);
  const float s_scale = block_max(s, shared);
  if (on) {
    mq[i] = adam8_encode_m(m, m_scale);
    sq[i] = adam8_encode_s(s, s_scale);
  }
  if (threadIdx.x == 0) {
    ms[b] = m_scale;
    ss[b] = s_scale;
  }
}

}  // namespace

int launch_adam8(void* p, int p_dtype, const void* g, int g_dtype, uint8_t* mq, float* ms, uint8_t* sq,
                 float* ss, int64_t n, float lr, float beta1, float beta2, float eps, float wd, float bc1,
                 float bc2, void* stream) {
  if (n <= 0) return 0;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  adam8_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, p_dtype, g, g_dtype, mq, ms, sq, ss, n, lr, beta1, beta2, eps, wd, bc1, sqrtf(bc2));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace nvfp4
