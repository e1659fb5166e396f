// One-query attention over a static KV cache (a decode step): out[b, h] = softmax(q k^T * scale +
// mask) v for each batch row b and query head h, reading the grouped KV heads where they are.
// Why its own kernel: for q_len 1 with a mask, transformers' SDPA path repeats each KV head for its
// query heads (two full cache copies a layer) and runs the general memory-efficient kernel over
// every cache column, written or not; a 4B decode step spent ~27% of its GPU time there.
//
// Split over the keys (flash-decoding): block (b, KV head, chunk of CHUNK keys) scores its keys
// for all `group` query heads that share the KV head (each K and V row is read once for them),
// keeps the chunk's max and sum, and writes its unnormalised partial output; a second kernel
// combines the chunks of each (b, query head). Masked columns (-inf: the cache's unwritten tail)
// are never read. The first version (one block a query head over all keys) replayed the 4B step
// slower than SDPA on an H200: 32 blocks, one key at a time, every head re-reading the cache.
// Pure CUDA (no torch headers), like nvfp4_kernels.cu.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <math.h>

#include "nvfp4_kernels.h"

namespace nvfp4 {
namespace {

constexpr int CHUNK = 16;       // keys a block
constexpr int MAX_GROUP = 8;    // query heads a KV head
constexpr int MAX_E = 8;        // dims a lane (head_dim <= 256)

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

struct Shape {
  int Hq, Hkv, group, L, D, S;      // S = chunks = ceil(L / CHUNK)
  int64_t qb, qh, kb, kh, kl, vb, vh, vl, mb;
  float scale;
};

// grid (B * Hkv, S), blockDim = 32 * ceil(D / 32). Writes, per (b, query head h, chunk s):
// ml[(b*Hq + h)*S + s] = {max score, sum of exp(score - max)} and o[((b*Hq + h)*S + s)*D + d] =
// sum_j exp(score_j - max) v[j, d]. A chunk with every key masked has max -inf and sum 0.
template <typename T>
__global__ void split_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ mask, float* __restrict__ o, float2* __restrict__ ml,
                             Shape sh) {
  __shared__ float p[MAX_GROUP][CHUNK];
  const int b = blockIdx.x / sh.Hkv, hk = blockIdx.x % sh.Hkv, s = blockIdx.y;
  const int j0 = s * CHUNK, n = min(CHUNK, sh.L - j0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int h0 = hk * sh.group;
  const T* kp = k + b * sh.kb + hk * sh.kh;
  const T* vp = v + b * sh.vb + hk * sh.vh;
  const T* mp = mask ? mask + b * sh.mb : nullptr;

  // this lane's dims d = lane + 32 e of each query head, pre-scaled
  float qr[MAX_GROUP][MAX_E];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) {
    const T* qp = q + b * sh.qb + (h0 + g) * sh.qh;
#pragma unroll
    for (int e = 0; e < MAX_E; ++e) {
      const int d = lane + 32 * e;
      qr[g][e] = (g < sh.group && d < sh.D) ? to_f(qp[d]) * sh.scale : 0.f;
    }
  }
  // scores: warp w takes keys j0 + w, j0 + w + nwarps, ...
  for (int jj = warp; jj < n; jj += nwarps) {
    const int j = j0 + jj;
    const float m = mp ? to_f(mp[j]) : 0.f;
    if (m == -INFINITY) {           // never read: the cache's unwritten tail, or a pad
      if (lane < sh.group) p[lane][jj] = -INFINITY;
      continue;
    }
    float kv[MAX_E];
#pragma unroll
    for (int e = 0; e < MAX_E; ++e) {
      const int d = lane + 32 * e;
      kv[e] = d < sh.D ? to_f(kp[j * sh.kl + d]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
      if (g >= sh.group) break;
      float acc = 0.f;
#pragma unroll
      for (int e = 0; e < MAX_E; ++e) acc += qr[g][e] * kv[e];
      acc = warp_sum(acc) + m;
      if (lane == 0) p[g][jj] = acc;
    }
  }
  __syncthreads();
  // the chunk's softmax statistics, one warp a query head (lane = key)
  for (int g = warp; g < sh.group; g += nwarps) {
    const float x = lane < n ? p[g][lane] : -INFINITY;
    const float mx = warp_max(x);
    const float e = (x == -INFINITY) ? 0.f : __expf(x - mx);
    const float l = warp_sum(e);
    if (lane < n) p[g][lane] = e;
    if (lane == 0) ml[(int64_t)(b * sh.Hq + h0 + g) * sh.S + s] = make_float2(mx, l);
  }
  __syncthreads();
  // the chunk's weighted values, one thread a dim
  const int d = threadIdx.x;
  if (d >= sh.D) return;
  float acc[MAX_GROUP];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) acc[g] = 0.f;
#pragma unroll 4
  for (int jj = 0; jj < n; ++jj) {
    if (mp && to_f(mp[j0 + jj]) == -INFINITY) continue;
    const float x = to_f(vp[(j0 + jj) * sh.vl + d]);
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g)
      if (g < sh.group) acc[g] += p[g][jj] * x;
  }
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g)
    if (g < sh.group) o[((int64_t)(b * sh.Hq + h0 + g) * sh.S + s) * sh.D + d] = acc[g];
}

// grid B * Hq, blockDim = 32 * ceil(D / 32): out[bh, d] = sum_s w_s o_s[d] / sum_s w_s l_s with
// w_s = exp(max_s - max over chunks); zeros when every key of the row is masked.
template <typename T>
__global__ void combine_kernel(const float* __restrict__ o, const float2* __restrict__ ml, T* __restrict__ out,
                               int S, int D) {
  const int bh = blockIdx.x, d = threadIdx.x;
  if (d >= D) return;
  const float2* m = ml + (int64_t)bh * S;
  float M = -INFINITY;
  for (int s = 0; s < S; ++s) M = fmaxf(M, m[s].x);
  float num = 0.f, den = 0.f;
  if (M != -INFINITY) {
    for (int s = 0; s < S; ++s) {
      if (m[s].x == -INFINITY) continue;
      const float w = __expf(m[s].x - M);
      num += w * o[((int64_t)bh * S + s) * D + d];
      den += w * m[s].y;
    }
  }
  out[(int64_t)bh * D + d] = from_f<T>(den > 0.f ? num / den : 0.f);
}

template <typename T>
int launch_t(const void* q, const void* k, const void* v, const void* mask, void* out, float* work, int B,
             const Shape& sh, cudaStream_t st) {
  const int threads = 32 * ((sh.D + 31) / 32);
  float2* ml = reinterpret_cast<float2*>(work);
  float* o = work + 2 * (int64_t)B * sh.Hq * sh.S;
  split_kernel<T><<<dim3(B * sh.Hkv, sh.S), threads, 0, st>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(mask), o,
      ml, sh);
  combine_kernel<T><<<B * sh.Hq, threads, 0, st>>>(o, ml, static_cast<T*>(out), sh.S, sh.D);
  return (int)cudaGetLastError();
}

}  // namespace

bool decode_attention_supported(int Hq, int Hkv, int D) {
  return D > 0 && D <= 32 * MAX_E && Hkv > 0 && Hq % Hkv == 0 && Hq / Hkv <= MAX_GROUP;
}

int64_t decode_attention_workspace(int B, int Hq, int L, int D) {
  const int64_t S = (L + CHUNK - 1) / CHUNK;
  return (int64_t)B * Hq * S * (2 + D);
}

int launch_decode_attention(const void* q, const void* k, const void* v, const void* mask, void* out, float* work,
                            int dtype, int B, int Hq, int Hkv, int L, int D, const int64_t* st, float scale,
                            void* stream) {
  Shape sh{Hq, Hkv, Hq / Hkv, L, D, (L + CHUNK - 1) / CHUNK,
           st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8], scale};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == 0) return launch_t<float>(q, k, v, mask, out, work, B, sh, s);
  if (dtype == 1) return launch_t<__half>(q, k, v, mask, out, work, B, sh, s);
  return launch_t<__nv_bfloat16>(q, k, v, mask, out, work, B, sh, s);
}

}  // namespace nvfp4
