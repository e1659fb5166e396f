// CUDA kernels of the nvfp4 ops. Pure CUDA (no torch headers): `nvcc -c` compiles this file alone.
// The numerics live in nvfp4_common.h, shared with the CPU kernels, so both devices agree bit for bit.
// Elementwise kernels: one thread = one 16-element block of the flat [N*K] tensor (rows are contiguous,
// so block b is packed bytes [8b, 8b+8), scale byte b, elements [16b, 16b+16) whatever N and K are).
// GEMV (linear, M <= 8): two variants sharing chunk_fma, picked by launch_gemv (see nvfp4_kernels.h).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "nvfp4_common.h"
#include "nvfp4_kernels.h"

namespace nvfp4 {
namespace {

constexpr int EW_THREADS = 256;  // elementwise kernels

// ---- 16-element loads/stores through 16-byte vectors (fp32: 4 x float4, 16-bit: 2 x uint4) ----
__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xFFFF0000u); }

__device__ __forceinline__ void load8(const float* p, float* v) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) {
  uint4 a = *reinterpret_cast<const uint4*>(p);
  uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) { v[2 * j] = bf16_lo(w[j]); v[2 * j + 1] = bf16_hi(w[j]); }
}
__device__ __forceinline__ void load8(const __half* p, float* v) {
  uint4 a = *reinterpret_cast<const uint4*>(p);
  uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[j]));
    v[2 * j] = f.x; v[2 * j + 1] = f.y;
  }
}
template <typename T>
__device__ __forceinline__ void load16(const T* p, float* v) { load8(p, v); load8(p + 8, v + 8); }

// fp32 -> fp16 bits, RNE; NaN -> sign | 0x7E00 exactly as c10::Half (the CPU kernels use c10::Half).
__device__ __forceinline__ uint32_t half_bits(float f) {
  if (f != f) return ((__float_as_uint(f) >> 16) & 0x8000u) | 0x7E00u;
  return __half_as_ushort(__float2half_rn(f));
}

__device__ __forceinline__ void store16(float* p, const float* v) {
  float4* p4 = reinterpret_cast<float4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) p4[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}
// fp32 -> bf16 bits for values that bf16 holds exactly (all that store16 writes: codebook * e4m3 has
// <= 6 significant bits): truncation, with NaN -> 0x7FC0 as c10::BFloat16 / nvfp4_common.h bf16_bits.
__device__ __forceinline__ uint32_t bf16_bits_exact(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : (u >> 16);
}

__device__ __forceinline__ void store16(__nv_bfloat16* p, const float* v) {
  uint32_t w[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) w[j] = bf16_bits_exact(v[2 * j]) | (bf16_bits_exact(v[2 * j + 1]) << 16);
  uint4* p4 = reinterpret_cast<uint4*>(p);
  p4[0] = make_uint4(w[0], w[1], w[2], w[3]);
  p4[1] = make_uint4(w[4], w[5], w[6], w[7]);
}
__device__ __forceinline__ void store16(__half* p, const float* v) {
  uint32_t w[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) w[j] = half_bits(v[2 * j]) | (half_bits(v[2 * j + 1]) << 16);
  uint4* p4 = reinterpret_cast<uint4*>(p);
  p4[0] = make_uint4(w[0], w[1], w[2], w[3]);
  p4[1] = make_uint4(w[4], w[5], w[6], w[7]);
}

// 8 codes of one 32-bit word -> f[i] = codebook[code_i] * 2^-14. Each e2m1 code is dropped into an
// fp16 bit pattern (sign -> bit 15, magnitude bits eem -> bits 9..11): fp16 subnormals/normals then
// spell exactly the e2m1 values times 2^-14 (the 2^14 is folded into the block scale). Elements k and
// k+4 sit 16 bits apart, so one shift places both halves of a half2.
__device__ __forceinline__ void decode8(uint32_t w, float* f) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    uint32_t mag = (k < 3 ? (w << (9 - 4 * k)) : (w >> 3)) & 0x0E000E00u;
    uint32_t sgn = (w << (12 - 4 * k)) & 0x80008000u;
    uint32_t h = mag | sgn;
    float2 ff = __half22float2(*reinterpret_cast<const __half2*>(&h));
    f[k] = ff.x;
    f[k + 4] = ff.y;
  }
}

// e4m3 byte -> value * 2^14, exact and branch-free (all 256 bytes; 0x7F/0xFF give NaN): the e4m3 bits
// shifted into an fp16 spell value * 2^-8 (subnormals included); * 2^22 makes that value * 2^14, the
// factor that undoes decode8's 2^-14.
__device__ __forceinline__ float e4m3_x2p14(uint32_t b) {
  uint32_t h = ((b & 0x80u) << 8) | ((b & 0x7Fu) << 7);
  float f = __half2float(__ushort_as_half((unsigned short)h)) * 4194304.0f;
  return (b & 0x7Fu) == 0x7Fu ? __uint_as_float(0x7FC00000u) : f;
}

// One block dequantized on the device: decode8's exact codebook * 2^-14 times scale * 2^14 gives
// exactly nvfp4_common.h's dequantize_block (every product is exact), in ~3 instructions an element.
__device__ __forceinline__ void dequant16(uint32_t p0, uint32_t p1, float scale_x2p14, float* out) {
  float f[8];
  decode8(p0, f);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = __fmul_rn(f[i], scale_x2p14);
  decode8(p1, f);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[8 + i] = __fmul_rn(f[i], scale_x2p14);
}

// ---- elementwise kernels, one thread per 16-element block ----
template <typename T>
__global__ void quantize_kernel(const T* __restrict__ w, uint2* __restrict__ q, uint8_t* __restrict__ s,
                                int64_t nb) {
  int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  float v[16];
  load16(w + 16 * b, v);
  uint32_t p0, p1;
  s[b] = (uint8_t)quantize_block(v, p0, p1);
  q[b] = make_uint2(p0, p1);
}

template <typename TO>
__global__ void dequantize_kernel(const uint2* __restrict__ q, const uint8_t* __restrict__ s,
                                  TO* __restrict__ out, int64_t nb) {
  int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  uint2 p = q[b];
  float v[16];
  dequant16(p.x, p.y, e4m3_x2p14(s[b]), v);
  store16(out + 16 * b, v);
}

template <typename T>
__global__ void fake_quantize_kernel(const T* __restrict__ w, T* __restrict__ out, int64_t nb) {
  int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  float v[16];
  load16(w + 16 * b, v);
  uint32_t p0, p1;
  uint32_t sb = quantize_block(v, p0, p1);
  dequant16(p0, p1, e4m3_x2p14(sb), v);
  store16(out + 16 * b, v);
}

// Stored block b + its delta -> the frozen-scale requantized block (nvfp4_common.h): returns the
// new scale byte, fills the packed codes; v gets the updated (unrounded) values.
template <typename TD>
__device__ __forceinline__ uint32_t requant16(const uint2* __restrict__ q, const uint8_t* __restrict__ s,
                                              const TD* __restrict__ delta, int64_t b, uint32_t& p0,
                                              uint32_t& p1) {
  uint2 p = q[b];
  float v[16], d[16];
  dequant16(p.x, p.y, e4m3_x2p14(s[b]), v);
  load16(delta + 16 * b, d);
  return requantize_delta_block(v, d, s[b], p.x, p.y, p0, p1);
}

// The trainer's forward weight: dequantize(requantize_delta(q, s, delta)), all in fp32 registers.
template <typename TD, typename TO>
__global__ void fake_quantize_delta_kernel(const uint2* __restrict__ q, const uint8_t* __restrict__ s,
                                           const TD* __restrict__ delta, TO* __restrict__ out, int64_t nb) {
  int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  uint32_t p0, p1;
  const uint32_t sb = requant16(q, s, delta, b, p0, p1);
  float v[16];
  dequant16(p0, p1, e4m3_x2p14(sb), v);
  store16(out + 16 * b, v);
}

// What export writes: the codes and scales the forward above dequantizes.
template <typename TD>
__global__ void requantize_delta_kernel(const uint2* __restrict__ q, const uint8_t* __restrict__ s,
                                        const TD* __restrict__ delta, uint2* __restrict__ q2,
                                        uint8_t* __restrict__ s2, int64_t nb) {
  int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  uint32_t p0, p1;
  s2[b] = (uint8_t)requant16(q, s, delta, b, p0, p1);
  q2[b] = make_uint2(p0, p1);
}

// ---- W4A16 GEMV / small batch: y[m, n] = sum_k x[m, k] * W[n, k], W never materialised ----

// Packed weight bytes are read once: 16-byte loads that skip L1 so that x stays there.
__device__ __forceinline__ uint4 ld_weight16(const uint8_t* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int g) {
  return g == 0 ? v.x : g == 1 ? v.y : g == 2 ? v.z : v.w;
}

__device__ __forceinline__ void store1(float* p, float v) { *p = v; }
__device__ __forceinline__ void store1(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store1(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// acc[r][m] += x[m, 32c .. 32c+32) . W[row r, 32c .. 32c+32) for one 32-element chunk c of R rows:
// wc[r] = the row's 16 packed bytes, sc[r] = its 2 scale bytes, xr[m] = row m of x.
template <typename T, int M, int R>
__device__ __forceinline__ void chunk_fma(const uint4 (&wc)[R], const uint32_t (&sc)[R], const T* const (&xr)[M],
                                          int c, float (&acc)[R][M]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {  // the chunk's two 16-element scale blocks
    float part[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) part[r][m] = 0.0f;
#pragma unroll
    for (int g = 2 * h; g < 2 * h + 2; ++g) {  // 32-bit word g = elements 8g .. 8g+7 of the chunk
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) decode8(word_of(wc[r], g), wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xv[8];
        load8(xr[m] + 32 * c + 8 * g, xv);  // converted once, used for all R rows
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int i = 0; i < 8; ++i) part[r][m] = fmaf(xv[i], wf[r][i], part[r][m]);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float sf = e4m3_x2p14((sc[r] >> (8 * h)) & 0xFFu);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = fmaf(part[r][m], sf, acc[r][m]);
    }
  }
}

// acc[R][M] over the chunks c = c0, c0 + stride, ... < nchunk of rows qr/sr, with the next chunk's
// 16-byte loads issued before the current chunk is used (two chunks in flight per thread).
template <typename T, int M, int R>
__device__ __forceinline__ void rows_dot(const uint8_t* const (&qr)[R], const uint8_t* const (&sr)[R],
                                         const T* const (&xr)[M], int c, int stride, int nchunk,
                                         float (&acc)[R][M]) {
  uint4 wn[R];
  uint32_t sn[R];
  if (c < nchunk) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      wn[r] = ld_weight16(qr[r] + 16 * c);
      sn[r] = *reinterpret_cast<const uint16_t*>(sr[r] + 2 * c);
    }
  }
  for (; c < nchunk; c += stride) {
    uint4 wc[R];
    uint32_t sc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) { wc[r] = wn[r]; sc[r] = sn[r]; }
    const int cn = c + stride;
    if (cn < nchunk) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        wn[r] = ld_weight16(qr[r] + 16 * cn);
        sn[r] = *reinterpret_cast<const uint16_t*>(sr[r] + 2 * cn);
      }
    }
    chunk_fma<T, M, R>(wc, sc, xr, c, acc);
  }
}

// Row pointers of rows n0 .. n0+R-1 and x rows 0 .. M-1. Rows past N re-read row N-1 and x rows past
// Mx re-read row Mx-1 (their results are dropped), so that every thread runs the same loop.
template <typename T, int M, int R>
__device__ __forceinline__ void row_ptrs(const T* x, const uint8_t* q, const uint8_t* s, int n0, int Mx, int N,
                                         int K, const uint8_t* (&qr)[R], const uint8_t* (&sr)[R],
                                         const T* (&xr)[M]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    int n = min(n0 + r, N - 1);
    qr[r] = q + (int64_t)n * (K >> 1);
    sr[r] = s + (int64_t)n * (K >> 4);
  }
#pragma unroll
  for (int m = 0; m < M; ++m) xr[m] = x + (int64_t)min(m, Mx - 1) * K;
}

// Variant "cta": one CTA = R weight rows; its blockDim.x threads (<= 256) split K, then reduce through
// shared memory. x [Mx, K], q [N, K/2], s [N, K/16], y [Mx, N]; K % 32 == 0; M >= Mx.
template <typename T, int M, int R>
__global__ void __launch_bounds__(256, 1) gemv_cta_kernel(const T* __restrict__ x, const uint8_t* __restrict__ q,
                                                          const uint8_t* __restrict__ s, T* __restrict__ y,
                                                          int Mx, int N, int K) {
  const int n0 = blockIdx.x * R;
  const uint8_t* qr[R];
  const uint8_t* sr[R];
  const T* xr[M];
  row_ptrs<T, M, R>(x, q, s, n0, Mx, N, K, qr, sr, xr);
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
  rows_dot<T, M, R>(qr, sr, xr, threadIdx.x, blockDim.x, K >> 5, acc);

  __shared__ float red[8][R * M];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
      if (lane == 0) red[warp][r * M + m] = v;
    }
  __syncthreads();
  if (threadIdx.x < R * M) {
    const int r = threadIdx.x / M, m = threadIdx.x % M, n = n0 + r;
    float v = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) v += red[w][threadIdx.x];
    if (n < N && m < Mx) store1(y + (int64_t)m * N + n, v);
  }
}

// Variant "half-warp" (the default for K <= 4096): 16 lanes own R weight rows and split K between
// them (for the Qwen shapes K/32 is a multiple of 16, so every lane gets the same number of chunks);
// the sum is a 4-step butterfly inside the half-warp: no shared memory, no __syncthreads.
constexpr int GEMV16_THREADS = 128;
template <typename T, int M, int R>
__global__ void __launch_bounds__(GEMV16_THREADS, 1) gemv16_kernel(const T* __restrict__ x,
                                                                const uint8_t* __restrict__ q,
                                                                const uint8_t* __restrict__ s, T* __restrict__ y,
                                                                int Mx, int N, int K) {
  const int l16 = threadIdx.x & 15;
  const int n0 = (int)(((int64_t)blockIdx.x * GEMV16_THREADS + threadIdx.x) >> 4) * R;
  const uint8_t* qr[R];
  const uint8_t* sr[R];
  const T* xr[M];
  row_ptrs<T, M, R>(x, q, s, min(n0, N - 1), Mx, N, K, qr, sr, xr);
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
  rows_dot<T, M, R>(qr, sr, xr, l16, 16, K >> 5, acc);
  // xor offsets 8..1 stay inside each half-warp; all 32 lanes run this (same trip counts above)
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][m], o);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
      if (l16 == (r * M + m) % 16 && n0 + r < N && m < Mx) store1(y + (int64_t)m * N + n0 + r, acc[r][m]);
}

int grid_for(int64_t nb) { return (int)((nb + EW_THREADS - 1) / EW_THREADS); }

template <typename T, int M, int R>
void launch_gemv_r(const T* x, const uint8_t* q, const uint8_t* s, T* y, int Mx, int N, int K, int threads,
                   cudaStream_t st) {
  const int groups = (N + R - 1) / R;
  if (threads == 16) {
    const int blocks = (int)(((int64_t)groups * 16 + GEMV16_THREADS - 1) / GEMV16_THREADS);
    gemv16_kernel<T, M, R><<<blocks, GEMV16_THREADS, 0, st>>>(x, q, s, y, Mx, N, K);
  } else {
    gemv_cta_kernel<T, M, R><<<groups, threads, 0, st>>>(x, q, s, y, Mx, N, K);
  }
}

template <typename T, int M>
int launch_gemv_m(const T* x, const uint8_t* q, const uint8_t* s, T* y, int Mx, int N, int K, int rows,
                  int threads, cudaStream_t st) {
  if (rows == 1) {
    launch_gemv_r<T, M, 1>(x, q, s, y, Mx, N, K, threads, st);
  } else if (rows == 2) {
    launch_gemv_r<T, M, 2>(x, q, s, y, Mx, N, K, threads, st);
  } else {
    if constexpr (M < 8) launch_gemv_r<T, M, 4>(x, q, s, y, Mx, N, K, threads, st);
    else launch_gemv_r<T, M, 2>(x, q, s, y, Mx, N, K, threads, st);  // 4 x 8 accumulators would spill
  }
  return (int)cudaGetLastError();
}

template <typename T>
int launch_gemv_t(const void* x, const uint8_t* q, const uint8_t* s, void* y, int M, int N, int K, int rows,
                  int threads, cudaStream_t st) {
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  if (M <= 1) return launch_gemv_m<T, 1>(xt, q, s, yt, M, N, K, rows, threads, st);
  if (M <= 2) return launch_gemv_m<T, 2>(xt, q, s, yt, M, N, K, rows, threads, st);
  if (M <= 4) return launch_gemv_m<T, 4>(xt, q, s, yt, M, N, K, rows, threads, st);
  return launch_gemv_m<T, 8>(xt, q, s, yt, M, N, K, rows, threads, st);
}

}  // namespace

int launch_quantize(const void* w, int w_dtype, uint8_t* q, uint8_t* s, int64_t nb, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  uint2* q2 = reinterpret_cast<uint2*>(q);
  if (w_dtype == 0) quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const float*>(w), q2, s, nb);
  else if (w_dtype == 1) quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const __half*>(w), q2, s, nb);
  else quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const __nv_bfloat16*>(w), q2, s, nb);
  return (int)cudaGetLastError();
}

int launch_dequantize(const uint8_t* q, const uint8_t* s, void* out, int out_dtype, int64_t nb, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const uint2* q2 = reinterpret_cast<const uint2*>(q);
  if (out_dtype == 0) dequantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, static_cast<float*>(out), nb);
  else if (out_dtype == 1) dequantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, static_cast<__half*>(out), nb);
  else dequantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, static_cast<__nv_bfloat16*>(out), nb);
  return (int)cudaGetLastError();
}

int launch_fake_quantize(const void* w, void* out, int dtype, int64_t nb, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    fake_quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const float*>(w), static_cast<float*>(out), nb);
  else if (dtype == 1)
    fake_quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const __half*>(w), static_cast<__half*>(out), nb);
  else
    fake_quantize_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(static_cast<const __nv_bfloat16*>(w),
                                                              static_cast<__nv_bfloat16*>(out), nb);
  return (int)cudaGetLastError();
}

template <typename TD>
static void launch_fqd_d(const uint2* q2, const uint8_t* s, const TD* d, void* out, int out_dtype, int64_t nb,
                         cudaStream_t st) {
  if (out_dtype == 0)
    fake_quantize_delta_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, d, static_cast<float*>(out), nb);
  else if (out_dtype == 1)
    fake_quantize_delta_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, d, static_cast<__half*>(out), nb);
  else
    fake_quantize_delta_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(q2, s, d, static_cast<__nv_bfloat16*>(out), nb);
}

int launch_fake_quantize_delta(const uint8_t* q, const uint8_t* s, const void* delta, int delta_dtype, void* out,
                               int out_dtype, int64_t nb, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const uint2* q2 = reinterpret_cast<const uint2*>(q);
  if (delta_dtype == 0) launch_fqd_d(q2, s, static_cast<const float*>(delta), out, out_dtype, nb, st);
  else launch_fqd_d(q2, s, static_cast<const __nv_bfloat16*>(delta), out, out_dtype, nb, st);
  return (int)cudaGetLastError();
}

int launch_requantize_delta(const uint8_t* q, const uint8_t* s, const void* delta, int delta_dtype, uint8_t* q2,
                            uint8_t* s2, int64_t nb, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const uint2* qi = reinterpret_cast<const uint2*>(q);
  uint2* qo = reinterpret_cast<uint2*>(q2);
  if (delta_dtype == 0)
    requantize_delta_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(qi, s, static_cast<const float*>(delta), qo, s2, nb);
  else
    requantize_delta_kernel<<<grid_for(nb), EW_THREADS, 0, st>>>(qi, s, static_cast<const __nv_bfloat16*>(delta), qo,
                                                                 s2, nb);
  return (int)cudaGetLastError();
}

int launch_gemv(const void* x, int x_dtype, const uint8_t* q, const uint8_t* s, void* y, int M, int N, int K,
                int rows, int threads, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (rows != 1 && rows != 2 && rows != 4) rows = 2;
  // Default launch shape, from an H100 sweep of the Qwen3-4B shapes (scripts/gpu_check.py): the
  // half-warp kernel while a row's K/32 chunks are few (K <= 4096: q/k/v/o, gate/up, lm_head); for long
  // rows (down_proj, K = 9728) it leaves too few threads per SM, and 128 threads per 2-row CTA win.
  if (threads <= 0) threads = K / 32 > 128 ? 128 : 16;
  if (threads != 16) {
    threads = threads < 32 ? 32 : (threads > 256 ? 256 : threads / 32 * 32);
  }
  if (x_dtype == 0) return launch_gemv_t<float>(x, q, s, y, M, N, K, rows, threads, st);
  if (x_dtype == 1) return launch_gemv_t<__half>(x, q, s, y, M, N, K, rows, threads, st);
  return launch_gemv_t<__nv_bfloat16>(x, q, s, y, M, N, K, rows, threads, st);
}

}  // namespace nvfp4
