// NVFP4 numerics shared by the CPU (g++) and CUDA (nvcc) kernels: one copy of the bit-exact rules of
// scripts/nvfp4lab/nvfp4_ref.py, so that both devices run literally the same code.
//   block of 16 along K -> 8 packed bytes (element 2j in the low nibble of byte j) + 1 e4m3 scale byte
//   scale = e4m3(clamp(amax / 6, 2^-6, 448)), round to nearest even (torchao's to_nvfp4)
//   x     = w / scale (true IEEE division)
//   code  = |x| rounded half to even onto the codebook (saturating) | sign bit of x
//   value = codebook[code] * scale, in fp32 (always exact: <= 6 significant bits)
//   training: requantize_delta_block keeps a block's stored scale while the update fits it
// No torch and no CUDA runtime headers here: plain `nvcc -c` and plain g++ both compile it.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define NV_HD __host__ __device__ __forceinline__
#else
#define NV_HD inline
#endif

namespace nvfp4 {

constexpr int BLOCK = 16;

NV_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

NV_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

// Correctly rounded fp32 ops. Under nvcc spell them out so that neither --use_fast_math nor FMA
// contraction can change a bit; g++ without -ffast-math already does exactly this.
NV_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
NV_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NV_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// max(a, b) that returns NaN when either is NaN (fmaxf would drop it).
NV_HD float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  if (a != a) return a;
  if (b != b) return b;
  return b > a ? b : a;
#endif
}

// e4m3fn byte -> fp32, all 256 bytes (0x7F / 0xFF are NaN; no infinities in this format).
NV_HD float e4m3_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  // branch-free: the e4m3 bits shifted into an fp16 spell value * 2^-8, subnormals included
  uint32_t h = ((b & 0x80u) << 8) | ((b & 0x7Fu) << 7);
  float f = __half2float(__ushort_as_half((unsigned short)h)) * 256.0f;
  return (b & 0x7Fu) == 0x7Fu ? u2f(0x7FC00000u | ((b & 0x80u) << 24)) : f;
#else
  uint32_t e = (b >> 3) & 15u, m = b & 7u;
  float mag;
  if (e == 0) mag = (float)m * 0.001953125f;                    // subnormal: m * 2^-9 (exact)
  else if (e == 15 && m == 7) mag = u2f(0x7FC00000u);            // NaN
  else mag = u2f(((e + 120u) << 23) | (m << 20));                // rebias 7 -> 127
  return (b & 0x80u) ? -mag : mag;
#endif
}

// fp32 (>= 0, or NaN) -> e4m3fn byte, round to nearest even, saturating at 448 (0x7E).
// Negative inputs never occur here (the scale is |w|max / 6).
NV_HD uint32_t e4m3_from_float(float v) {
  if (!(v == v)) return 0x7Fu;                                   // NaN
  if (v >= 448.0f) return 0x7Eu;
  if (v < 0.015625f) {                                           // below 2^-6: subnormal grid of 2^-9
    // v * 512 is exact; rintf rounds half to even (default rounding mode). 8 -> 0x08 = 2^-6, the
    // smallest normal, which is also the right byte.
    return (uint32_t)rintf(v * 512.0f);
  }
  uint32_t u = f2u(v);
  u += 0x7FFFFu + ((u >> 20) & 1u);                              // RNE on the 20 dropped mantissa bits
  return (((u >> 23) - 120u) << 3) | ((u >> 20) & 7u);           // carry into the exponent is right too
}

// 4-bit code -> codebook value {0,.5,1,1.5,2,3,4,6} with sign bit 8 (e2m1 decoded exactly).
NV_HD float fp4_to_float(uint32_t code) {
  uint32_t mag = code & 7u;
  float v = mag < 2 ? 0.5f * (float)mag : u2f((((mag >> 1) + 126u) << 23) | ((mag & 1u) << 22));
  return (code & 8u) ? -v : v;
}

// Block scale byte for a block max, torchao's rule: e4m3(clamp(amax / 6, 2^-6, 448)), round to
// nearest even. NaN stays NaN (both compares are false) and gives byte 0x7F.
NV_HD uint32_t scale_byte_for(float amax) {
  float s = div_rn(amax, 6.0f);
  s = s < 0.015625f ? 0.015625f : (s > 448.0f ? 448.0f : s);
  return e4m3_from_float(s);
}

// x (= w / scale) -> 4-bit code: magnitude rounded half to even onto {0,.5,1,1.5,2,3,4,6} (a tie
// goes to the even code: up at .75, 1.75, 3.5, down at .25, 1.25, 2.5, 5; beyond 6 saturates),
// sign bit copied from the float, so -0.0 and small negatives give code 8 (torchao's rule).
NV_HD uint32_t fp4_code(float x) {
  const float a = fabsf(x);
  const uint32_t mag = (uint32_t)(a > 0.25f) + (uint32_t)(a >= 0.75f) + (uint32_t)(a > 1.25f) +
                       (uint32_t)(a >= 1.75f) + (uint32_t)(a > 2.5f) + (uint32_t)(a >= 3.5f) +
                       (uint32_t)(a > 5.0f);
  return mag | ((f2u(x) >> 28) & 8u);
}

// Codes of v[16] at scale value s (true IEEE division, no epsilon), packed: p0 holds elements 0..7,
// p1 elements 8..15, element i in bits 4i..4i+3 of its word (little-endian bytes = packed layout).
NV_HD void encode_block(const float* v, float s, uint32_t& p0, uint32_t& p1) {
  uint32_t code[BLOCK];
  for (int i = 0; i < BLOCK; ++i) code[i] = fp4_code(div_rn(v[i], s));
  p0 = 0;
  p1 = 0;
  for (int i = 0; i < 8; ++i) {
    p0 |= code[i] << (4 * i);
    p1 |= code[8 + i] << (4 * i);
  }
}

// Quantize one block with torchao's rule: returns the scale byte, fills the packed codes.
NV_HD uint32_t quantize_block(const float* v, uint32_t& p0, uint32_t& p1) {
  float amax = 0.0f;
  for (int i = 0; i < BLOCK; ++i) amax = max_nan(amax, fabsf(v[i]));  // NaN propagates, like torch.amax
  const uint32_t sb = scale_byte_for(amax);
  encode_block(v, e4m3_to_float(sb), p0, p1);
  return sb;
}

// A stored block plus a training delta, as NVFP4 again, with the stored scale frozen:
//   u[i] = base[i] + d[i]; the stored scale byte stays while the block fits it (max|u| <= 6 * scale),
//   and then an element whose delta is 0 keeps its stored code (so zero delta -> the stored bytes,
//   -0 codes and zero scales included, whichever quantizer wrote them); a block that outgrew its
//   scale takes scale_byte_for(max|u|), never smaller than the stored one, and every code of it is
//   rounded again. `base` holds the dequantized block (overwritten with u); (q0, q1) are its stored
//   packed codes. Returns the new scale byte; (p0, p1) get the new packed codes.
NV_HD uint32_t requantize_delta_block(float* base, const float* d, uint32_t sb, uint32_t q0, uint32_t q1,
                                      uint32_t& p0, uint32_t& p1) {
  const float s = e4m3_to_float(sb);
  float amax = 0.0f;
  for (int i = 0; i < BLOCK; ++i) {
    base[i] = add_rn(base[i], d[i]);
    amax = max_nan(amax, fabsf(base[i]));
  }
  const bool fits = amax <= mul_rn(6.0f, s);   // exact product; false for NaN
  const uint32_t nb = fits ? sb : scale_byte_for(amax);
  encode_block(base, e4m3_to_float(nb), p0, p1);
  if (nb == sb) {                              // same scale: untouched elements keep their code
    uint32_t keep0 = 0, keep1 = 0;
    for (int i = 0; i < 8; ++i) {
      keep0 |= (d[i] == 0.0f ? 15u : 0u) << (4 * i);
      keep1 |= (d[8 + i] == 0.0f ? 15u : 0u) << (4 * i);
    }
    p0 = (p0 & ~keep0) | (q0 & keep0);
    p1 = (p1 & ~keep1) | (q1 & keep1);
  }
  return nb;
}

// Dequantize one block: out[i] = codebook[code_i] * scale (exact in fp32).
NV_HD void dequantize_block(uint32_t p0, uint32_t p1, float scale, float* out) {
#if defined(__CUDA_ARCH__)
  for (int i = 0; i < 8; ++i) out[i] = mul_rn(fp4_to_float((p0 >> (4 * i)) & 15u), scale);
  for (int i = 0; i < 8; ++i) out[8 + i] = mul_rn(fp4_to_float((p1 >> (4 * i)) & 15u), scale);
#else
  // CPU: a 16-entry table instead of the branchy decode (same values, exactly).
  static const float lut[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  for (int i = 0; i < 8; ++i) out[i] = lut[(p0 >> (4 * i)) & 15u] * scale;
  for (int i = 0; i < 8; ++i) out[8 + i] = lut[(p1 >> (4 * i)) & 15u] * scale;
#endif
}

// fp32 -> bf16 bits, round to nearest even, NaN -> 0x7FC0 (bit-identical to c10::BFloat16(float)).
NV_HD uint16_t bf16_bits(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// ---------------------------------------------------------------- AdamW with 8-bit states
// (--adam-state-bits 8; the CUDA kernel is adam8.cu, the CPU one adam8_step_cpu in nvfp4_ops.cpp).
// Each state is one byte a value plus one fp32 scale (the block's largest value) per ADAM8_BLOCK
// values. The codes are logarithmic because Adam's states span orders of magnitude within a
// block: a linear 8-bit code would round most of them to 0 (m: no move; v: an update blown up
// by 1/eps).
//   m: bit 7 the sign, bits 0-6 k: |m| = scale * 2^(-k/8); k = 127 is 0 (below 2^-15.75)
//   s = sqrt(v): c in 0..255: s = scale * 2^(-c/16); never 0 once its scale is set: a value
//                below the range decodes as the floor, which only damps its update
// Rounding is to the nearest code in the log domain, so re-coding v every step does not drift it
// (rounding up would compound through beta2). The update uses this step's exact fp32 m and v, as
// bitsandbytes' 8-bit Adam does; only what is kept for the next step is coded.
constexpr int ADAM8_BLOCK = 256;

NV_HD float adam8_decode_m(uint8_t b, float scale) {
  const int k = b & 0x7F;
  if (k == 0x7F || scale == 0.0f) return 0.0f;
  const float mag = scale * exp2f(-(float)k * 0.125f);
  return (b & 0x80) ? -mag : mag;
}

NV_HD float adam8_decode_s(uint8_t c, float scale) {
  return scale == 0.0f ? 0.0f : scale * exp2f(-(float)c * 0.0625f);
}

NV_HD uint8_t adam8_encode_m(float m, float scale) {
  if (m == 0.0f || scale == 0.0f) return 0x7F;
  const float k = rintf(-8.0f * log2f(fabsf(m) / scale));
  if (k > 126.0f) return 0x7F;                     // below the range: 0
  const uint8_t code = (uint8_t)fmaxf(k, 0.0f);
  return m < 0.0f ? (uint8_t)(code | 0x80) : code;
}

NV_HD uint8_t adam8_encode_s(float s, float scale) {
  if (scale == 0.0f) return 0;
  if (s <= 0.0f) return 255;                       // the floor (log2(0) = -inf)
  const float c = rintf(-16.0f * log2f(s / scale));
  return (uint8_t)fminf(fmaxf(c, 0.0f), 255.0f);
}

// One value's AdamW step (decoupled decay) from its decoded states: the new weight, m and s.
NV_HD void adam8_update(float w, float g, float m_old, float s_old, float lr, float beta1, float beta2,
                        float eps, float wd, float bc1, float sqrt_bc2, float* w_new, float* m_new,
                        float* s_new) {
  const float m = beta1 * m_old + (1.0f - beta1) * g;
  const float s = sqrtf(beta2 * s_old * s_old + (1.0f - beta2) * g * g);
  *w_new = w * (1.0f - lr * wd) - lr * (m / bc1) / (s / sqrt_bc2 + eps);
  *m_new = m;
  *s_new = s;
}

}  // namespace nvfp4
