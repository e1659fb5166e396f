// nvfp4 torch ops: schemas, CPU kernels and (with -DNVFP4_WITH_CUDA) the CUDA wrappers around the
// launchers of nvfp4_kernels.cu. The numerics are nvfp4_common.h, shared with the CUDA kernels.
// Layout: w [N, K] (K % 16 == 0) <-> qdata uint8 [N, K/2] + scale uint8 [N, K/16] (e4m3 bytes).
// No op reads device data on the host (no .item(), no value checks): they are safe under CUDA graph
// capture; value checks (NaN/Inf) are done in Python by nvfp4lab.ops when asked.
#include <Python.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "nvfp4_common.h"

#ifdef NVFP4_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "nvfp4_kernels.h"
#endif

using at::Tensor;

namespace {

// ---------------------------------------------------------------- metadata checks (no device reads)
void check_weight_meta(const Tensor& w, const char* name) {
  TORCH_CHECK_VALUE(w.dim() == 2, name, ": NVFP4 needs a 2-D [out, in] tensor, got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(1) % nvfp4::BLOCK == 0, name, ": in_features ", w.size(1), " is not a multiple of 16");
  auto t = w.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, name, ": dtype ", t,
                    " is not float32/float16/bfloat16");
}

void check_packed_meta(const Tensor& q, const Tensor& s) {
  TORCH_CHECK_VALUE(q.scalar_type() == at::kByte && s.scalar_type() == at::kByte,
                    "nvfp4: qdata/scale must be uint8, got ", q.scalar_type(), "/", s.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == 2 && s.dim() == 2 && q.size(0) == s.size(0) && q.size(1) * 2 == s.size(1) * 16,
                    "nvfp4: qdata ", q.sizes(), " and scale ", s.sizes(),
                    " do not describe one [N, K] weight (need [N, K/2] and [N, K/16])");
  TORCH_CHECK_VALUE(q.device() == s.device(), "nvfp4: qdata and scale are on different devices");
}

void check_out_dtype(at::ScalarType t) {
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "nvfp4: output dtype ", t,
                    " is not float32/float16/bfloat16");
}

void check_delta_meta(const Tensor& q, const Tensor& delta) {
  TORCH_CHECK_VALUE(delta.dim() == 2 && delta.size(0) == q.size(0) && delta.size(1) == q.size(1) * 2,
                    "nvfp4: delta ", delta.sizes(), " does not match the weight [", q.size(0), ", ", q.size(1) * 2, "]");
  TORCH_CHECK_VALUE(delta.scalar_type() == at::kFloat || delta.scalar_type() == at::kBFloat16,
                    "nvfp4: delta dtype ", delta.scalar_type(), " is not float32/bfloat16");
  TORCH_CHECK_VALUE(delta.device() == q.device(), "nvfp4: delta is not on the weight's device");
}

void check_linear_meta(const Tensor& x, const Tensor& q) {
  TORCH_CHECK_VALUE(x.dim() == 2, "nvfp4.linear: x must be 2-D [M, K], got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) == q.size(1) * 2, "nvfp4.linear: x has K=", x.size(1), " but the weight has K=",
                    q.size(1) * 2);
  auto t = x.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "nvfp4.linear: x dtype ", t,
                    " is not float32/float16/bfloat16");
  TORCH_CHECK_VALUE(x.device() == q.device(), "nvfp4.linear: x is not on the weight's device");
}

// ---------------------------------------------------------------- CPU kernels
// Element conversions. Outputs are always codebook * e4m3 values (exact in every output dtype) or NaN.
inline float to_f(float v) { return v; }
inline float to_f(c10::Half v) { return static_cast<float>(v); }
inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }
template <typename T> inline T from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
template <> inline c10::Half from_f<c10::Half>(float v) { return c10::Half(v); }
template <> inline c10::BFloat16 from_f<c10::BFloat16>(float v) {
  return c10::BFloat16(nvfp4::bf16_bits(v), c10::BFloat16::from_bits());
}

// The 256 e4m3 byte values, decoded once.
const float* e4m3_table() {
  static const auto table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[b] = nvfp4::e4m3_to_float(b);
    return t;
  }();
  return table.data();
}

// Parallel over blocks of rows (at::parallel_for = OpenMP when built with it). nb = blocks per row.
template <typename F>
void for_rows(int64_t n, int64_t nb, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, nb));  // ~256K elements a task
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r);
  });
}

template <typename T>
void quantize_cpu_impl(const T* w, uint8_t* q, uint8_t* s, int64_t n, int64_t k) {
  const int64_t nb = k / 16;
  for_rows(n, nb, [&](int64_t r) {
    for (int64_t b = r * nb; b < (r + 1) * nb; ++b) {
      float v[16];
      for (int i = 0; i < 16; ++i) v[i] = to_f(w[16 * b + i]);
      uint32_t p0, p1;
      s[b] = (uint8_t)nvfp4::quantize_block(v, p0, p1);
      memcpy(q + 8 * b, &p0, 4);  // little-endian: element 2j -> low nibble of byte j
      memcpy(q + 8 * b + 4, &p1, 4);
    }
  });
}

// Packed block b (8 bytes of codes + 1 scale byte) -> v[16] fp32.
inline void load_block(const uint8_t* q, const uint8_t* s, int64_t b, const float* e4m3, float* v) {
  uint32_t p0, p1;
  memcpy(&p0, q + 8 * b, 4);      // little-endian: element 2j is the low nibble of byte j
  memcpy(&p1, q + 8 * b + 4, 4);
  nvfp4::dequantize_block(p0, p1, e4m3[s[b]], v);
}

template <typename TO>
void dequantize_cpu_impl(const uint8_t* q, const uint8_t* s, TO* out, int64_t n, int64_t k) {
  const int64_t nb = k / 16;
  const float* e4m3 = e4m3_table();
  for_rows(n, nb, [&](int64_t r) {
    for (int64_t b = r * nb; b < (r + 1) * nb; ++b) {
      float v[16];
      load_block(q, s, b, e4m3, v);
      for (int i = 0; i < 16; ++i) out[16 * b + i] = from_f<TO>(v[i]);
    }
  });
}

template <typename T>
void fake_quantize_cpu_impl(const T* w, T* out, int64_t n, int64_t k) {
  const int64_t nb = k / 16;
  const float* e4m3 = e4m3_table();
  for_rows(n, nb, [&](int64_t r) {
    for (int64_t b = r * nb; b < (r + 1) * nb; ++b) {
      float v[16];
      for (int i = 0; i < 16; ++i) v[i] = to_f(w[16 * b + i]);
      uint32_t p0, p1;
      const uint32_t sb = nvfp4::quantize_block(v, p0, p1);
      nvfp4::dequantize_block(p0, p1, e4m3[sb], v);
      for (int i = 0; i < 16; ++i) out[16 * b + i] = from_f<T>(v[i]);
    }
  });
}

// Every stored block + its delta, requantized with the frozen-scale rule of nvfp4_common.h:
// f(b, scale byte, p0, p1) per block, rows in parallel.
template <typename TD, typename F>
void for_requantized_blocks(const uint8_t* q, const uint8_t* s, const TD* d, int64_t n, int64_t k, const F& f) {
  const int64_t nb = k / 16;
  const float* e4m3 = e4m3_table();
  for_rows(n, nb, [&](int64_t r) {
    for (int64_t b = r * nb; b < (r + 1) * nb; ++b) {
      float v[16], dv[16];
      uint32_t q0, q1, p0, p1;
      memcpy(&q0, q + 8 * b, 4);
      memcpy(&q1, q + 8 * b + 4, 4);
      nvfp4::dequantize_block(q0, q1, e4m3[s[b]], v);
      for (int i = 0; i < 16; ++i) dv[i] = to_f(d[16 * b + i]);
      const uint32_t sb = nvfp4::requantize_delta_block(v, dv, s[b], q0, q1, p0, p1);
      f(b, sb, p0, p1);
    }
  });
}

// The trainer's forward weight: dequantize(requantize_delta(q, s, d)).
template <typename TD, typename TO>
void fake_quantize_delta_cpu_impl(const uint8_t* q, const uint8_t* s, const TD* d, TO* out, int64_t n, int64_t k) {
  const float* e4m3 = e4m3_table();
  for_requantized_blocks(q, s, d, n, k, [&](int64_t b, uint32_t sb, uint32_t p0, uint32_t p1) {
    float v[16];
    nvfp4::dequantize_block(p0, p1, e4m3[sb], v);
    for (int i = 0; i < 16; ++i) out[16 * b + i] = from_f<TO>(v[i]);
  });
}

// What export writes: the packed codes and scales the forward above dequantizes.
template <typename TD>
void requantize_delta_cpu_impl(const uint8_t* q, const uint8_t* s, const TD* d, uint8_t* q2, uint8_t* s2,
                               int64_t n, int64_t k) {
  for_requantized_blocks(q, s, d, n, k, [&](int64_t b, uint32_t sb, uint32_t p0, uint32_t p1) {
    s2[b] = (uint8_t)sb;
    memcpy(q2 + 8 * b, &p0, 4);
    memcpy(q2 + 8 * b + 4, &p1, 4);
  });
}

// Calls f(T*) with the tensor's data pointer typed as float / c10::Half / c10::BFloat16.
template <typename F>
void with_float_type(at::ScalarType t, const F& f) {
  if (t == at::kFloat) f(float{});
  else if (t == at::kHalf) f(c10::Half{});
  else f(c10::BFloat16{});
}

std::tuple<Tensor, Tensor> quantize_cpu(const Tensor& w_) {
  check_weight_meta(w_, "nvfp4.quantize");
  Tensor w = w_.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  Tensor q = at::empty({n, k / 2}, w.options().dtype(at::kByte));
  Tensor s = at::empty({n, k / 16}, w.options().dtype(at::kByte));
  with_float_type(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    quantize_cpu_impl<T>(w.data_ptr<T>(), q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), n, k);
  });
  return {q, s};
}

Tensor dequantize_cpu(const Tensor& q_, const Tensor& s_, at::ScalarType dtype) {
  check_packed_meta(q_, s_);
  check_out_dtype(dtype);
  Tensor q = q_.contiguous(), s = s_.contiguous();
  const int64_t n = q.size(0), k = q.size(1) * 2;
  Tensor out = at::empty({n, k}, q.options().dtype(dtype));
  with_float_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    dequantize_cpu_impl<T>(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), out.data_ptr<T>(), n, k);
  });
  return out;
}

Tensor fake_quantize_cpu(const Tensor& w_) {
  check_weight_meta(w_, "nvfp4.fake_quantize");
  Tensor w = w_.contiguous();
  Tensor out = at::empty_like(w);
  with_float_type(w.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    fake_quantize_cpu_impl<T>(w.data_ptr<T>(), out.data_ptr<T>(), w.size(0), w.size(1));
  });
  return out;
}

Tensor fake_quantize_delta_cpu(const Tensor& q_, const Tensor& s_, const Tensor& d_, at::ScalarType dtype) {
  check_packed_meta(q_, s_);
  check_delta_meta(q_, d_);
  check_out_dtype(dtype);
  Tensor q = q_.contiguous(), s = s_.contiguous(), d = d_.contiguous();
  const int64_t n = q.size(0), k = q.size(1) * 2;
  Tensor out = at::empty({n, k}, q.options().dtype(dtype));
  with_float_type(dtype, [&](auto otag) {
    using TO = decltype(otag);
    if (d.scalar_type() == at::kFloat)
      fake_quantize_delta_cpu_impl<float, TO>(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), d.data_ptr<float>(),
                                              out.data_ptr<TO>(), n, k);
    else
      fake_quantize_delta_cpu_impl<c10::BFloat16, TO>(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(),
                                                      d.data_ptr<c10::BFloat16>(), out.data_ptr<TO>(), n, k);
  });
  return out;
}

std::tuple<Tensor, Tensor> requantize_delta_cpu(const Tensor& q_, const Tensor& s_, const Tensor& d_) {
  check_packed_meta(q_, s_);
  check_delta_meta(q_, d_);
  Tensor q = q_.contiguous(), s = s_.contiguous(), d = d_.contiguous();
  const int64_t n = q.size(0), k = q.size(1) * 2;
  Tensor q2 = at::empty_like(q), s2 = at::empty_like(s);
  if (d.scalar_type() == at::kFloat)
    requantize_delta_cpu_impl<float>(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), d.data_ptr<float>(),
                                     q2.data_ptr<uint8_t>(), s2.data_ptr<uint8_t>(), n, k);
  else
    requantize_delta_cpu_impl<c10::BFloat16>(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(),
                                             d.data_ptr<c10::BFloat16>(), q2.data_ptr<uint8_t>(),
                                             s2.data_ptr<uint8_t>(), n, k);
  return {q2, s2};
}

// CPU linear: the correctness path. fp32 weight and fp32 accumulation, result cast to x's dtype.
Tensor linear_cpu(const Tensor& x, const Tensor& q, const Tensor& s) {
  check_packed_meta(q, s);
  check_linear_meta(x, q);
  Tensor w = dequantize_cpu(q, s, at::kFloat);  // [N, K]
  return at::matmul(x.to(at::kFloat), w.t()).to(x.scalar_type());
}

Tensor linear_cfg_cpu(const Tensor& x, const Tensor& q, const Tensor& s, int64_t, int64_t) {
  return linear_cpu(x, q, s);
}

// ---------------------------------------------------------------- decode attention
// q [B, Hq, D], k/v [B, Hkv, L, D], mask [B or 1, L] additive (see nvfp4_kernels.h).
void check_decode_attention_meta(const Tensor& q, const Tensor& k, const Tensor& v, const c10::optional<Tensor>& mask) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4, "nvfp4.decode_attention: q [B, Hq, D], k/v [B, Hkv, L, D]");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(2),
              "nvfp4.decode_attention: k, v and q disagree on B or D");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "nvfp4.decode_attention: Hq % Hkv != 0");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "nvfp4.decode_attention: q, k, v need one dtype");
  if (mask.has_value()) {
    const Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 2 && (m.size(0) == 1 || m.size(0) == q.size(0)) && m.size(1) == k.size(2) &&
                m.scalar_type() == q.scalar_type(), "nvfp4.decode_attention: mask [B or 1, L] in q's dtype");
  }
}

// The reference (and the CPU kernel): fp32 math through ATen.
Tensor decode_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const c10::optional<Tensor>& mask,
                            double scale) {
  check_decode_attention_meta(q, k, v, mask);
  const int64_t group = q.size(1) / k.size(1), L = k.size(2);
  Tensor kf = k.to(at::kFloat).repeat_interleave(group, 1), vf = v.to(at::kFloat).repeat_interleave(group, 1);
  Tensor scores = at::matmul(kf, (q.to(at::kFloat) * scale).unsqueeze(-1)).squeeze(-1);  // [B, Hq, L]
  if (mask.has_value()) scores = scores + mask->to(at::kFloat).view({mask->size(0), 1, L});
  Tensor p = at::nan_to_num(at::softmax(scores, -1), 0.0);  // an all-masked row: zeros, not NaN
  return at::matmul(p.unsqueeze(2), vf).squeeze(2).to(q.scalar_type());
}

// ---------------------------------------------------------------- AdamW with 8-bit states
// p [n] (the trained values, float32/float16/bfloat16) and g [n] (the same dtype); m, s [n] uint8 codes
// and m_scale, s_scale [ceil(n / ADAM8_BLOCK)] float32 (nvfp4_common.h). In place; no device reads.
void check_adam8_meta(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& ms, const Tensor& s,
                      const Tensor& ss) {
  const int64_t n = p.numel(), nb = (n + nvfp4::ADAM8_BLOCK - 1) / nvfp4::ADAM8_BLOCK;
  auto t = p.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "nvfp4.adam8_step_: dtype ", t,
                    " is not float32/float16/bfloat16");
  TORCH_CHECK_VALUE(g.scalar_type() == t && g.numel() == n, "nvfp4.adam8_step_: grad ", g.sizes(), " ",
                    g.scalar_type(), " does not match the value ", p.sizes(), " ", t);
  TORCH_CHECK_VALUE(m.scalar_type() == at::kByte && s.scalar_type() == at::kByte && m.numel() == n && s.numel() == n,
                    "nvfp4.adam8_step_: the state codes must be uint8 with one byte a value");
  TORCH_CHECK_VALUE(ms.scalar_type() == at::kFloat && ss.scalar_type() == at::kFloat && ms.numel() == nb &&
                    ss.numel() == nb, "nvfp4.adam8_step_: the state scales must be float32, one per ",
                    nvfp4::ADAM8_BLOCK, " values (", nb, ")");
  for (const Tensor* x : {&p, &g, &m, &ms, &s, &ss}) {
    TORCH_CHECK_VALUE(x->is_contiguous(), "nvfp4.adam8_step_: every tensor must be contiguous");
    TORCH_CHECK_VALUE(x->device() == p.device(), "nvfp4.adam8_step_: every tensor must be on one device");
  }
}

template <typename T>
void adam8_blocks_cpu(T* p, const T* g, uint8_t* mq, float* ms, uint8_t* sq, float* ss, int64_t n, float lr,
                      float beta1, float beta2, float eps, float wd, float bc1, float sqrt_bc2) {
  const int64_t nb = (n + nvfp4::ADAM8_BLOCK - 1) / nvfp4::ADAM8_BLOCK;
  at::parallel_for(0, nb, 64, [&](int64_t b0, int64_t b1) {
    std::array<float, nvfp4::ADAM8_BLOCK> m, s;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * nvfp4::ADAM8_BLOCK, len = std::min<int64_t>(nvfp4::ADAM8_BLOCK, n - start);
      float m_scale = 0.0f, s_scale = 0.0f;
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = start + j;
        float w;
        nvfp4::adam8_update(static_cast<float>(p[i]), static_cast<float>(g[i]), nvfp4::adam8_decode_m(mq[i], ms[b]),
                            nvfp4::adam8_decode_s(sq[i], ss[b]), lr, beta1, beta2, eps, wd, bc1, sqrt_bc2, &w,
                            &m[j], &s[j]);
        p[i] = static_cast<T>(w);
        m_scale = std::max(m_scale, std::fabs(m[j]));
        s_scale = std::max(s_scale, s[j]);
      }
      for (int64_t j = 0; j < len; ++j) {
        mq[start + j] = nvfp4::adam8_encode_m(m[j], m_scale);
        sq[start + j] = nvfp4::adam8_encode_s(s[j], s_scale);
      }
      ms[b] = m_scale;
      ss[b] = s_scale;
    }
  });
}

void adam8_step_cpu(Tensor& p, const Tensor& g, Tensor& m, Tensor& ms, Tensor& s, Tensor& ss, double lr,
                    double beta1, double beta2, double eps, double wd, double bc1, double bc2) {
  check_adam8_meta(p, g, m, ms, s, ss);
  const float sqrt_bc2 = std::sqrt((float)bc2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "adam8_step_cpu", [&] {
    adam8_blocks_cpu<scalar_t>(p.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(),
                               ms.data_ptr<float>(), s.data_ptr<uint8_t>(), ss.data_ptr<float>(), p.numel(),
                               (float)lr, (float)beta1, (float)beta2, (float)eps, (float)wd, (float)bc1, sqrt_bc2);
  });
}

// ---------------------------------------------------------------- CUDA wrappers
#ifdef NVFP4_WITH_CUDA

int dtype_code(at::ScalarType t) { return t == at::kFloat ? 0 : (t == at::kHalf ? 1 : 2); }

// Contiguous and 16-byte aligned (a view with an odd storage offset is copied once): the kernels use
// 16-byte vector loads/stores. A metadata-only decision, no device sync.
Tensor aligned(const Tensor& t) {
  Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

void check_launch(int err) {
  TORCH_CHECK(err == 0, "nvfp4: CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<Tensor, Tensor> quantize_cuda(const Tensor& w_) {
  check_weight_meta(w_, "nvfp4.quantize");
  c10::cuda::CUDAGuard guard(w_.device());
  Tensor w = aligned(w_);
  const int64_t n = w.size(0), k = w.size(1), nb = n * k / 16;
  Tensor q = at::empty({n, k / 2}, w.options().dtype(at::kByte));
  Tensor s = at::empty({n, k / 16}, w.options().dtype(at::kByte));
  if (nb > 0)
    check_launch(nvfp4::launch_quantize(w.data_ptr(), dtype_code(w.scalar_type()), q.data_ptr<uint8_t>(),
                                        s.data_ptr<uint8_t>(), nb, stream()));
  return {q, s};
}

Tensor dequantize_cuda(const Tensor& q_, const Tensor& s_, at::ScalarType dtype) {
  check_packed_meta(q_, s_);
  check_out_dtype(dtype);
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = aligned(q_), s = s_.contiguous();
  const int64_t n = q.size(0), k = q.size(1) * 2, nb = n * k / 16;
  Tensor out = at::empty({n, k}, q.options().dtype(dtype));
  if (nb > 0)
    check_launch(nvfp4::launch_dequantize(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), out.data_ptr(),
                                          dtype_code(dtype), nb, stream()));
  return out;
}

Tensor fake_quantize_cuda(const Tensor& w_) {
  check_weight_meta(w_, "nvfp4.fake_quantize");
  c10::cuda::CUDAGuard guard(w_.device());
  Tensor w = aligned(w_);
  const int64_t nb = w.numel() / 16;
  Tensor out = at::empty_like(w);
  if (nb > 0)
    check_launch(nvfp4::launch_fake_quantize(w.data_ptr(), out.data_ptr(), dtype_code(w.scalar_type()), nb, stream()));
  return out;
}

Tensor fake_quantize_delta_cuda(const Tensor& q_, const Tensor& s_, const Tensor& d_, at::ScalarType dtype) {
  check_packed_meta(q_, s_);
  check_delta_meta(q_, d_);
  check_out_dtype(dtype);
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = aligned(q_), s = s_.contiguous(), d = aligned(d_);
  const int64_t n = q.size(0), k = q.size(1) * 2, nb = n * k / 16;
  Tensor out = at::empty({n, k}, q.options().dtype(dtype));
  if (nb > 0)
    check_launch(nvfp4::launch_fake_quantize_delta(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), d.data_ptr(),
                                                   dtype_code(d.scalar_type()), out.data_ptr(), dtype_code(dtype),
                                                   nb, stream()));
  return out;
}

std::tuple<Tensor, Tensor> requantize_delta_cuda(const Tensor& q_, const Tensor& s_, const Tensor& d_) {
  check_packed_meta(q_, s_);
  check_delta_meta(q_, d_);
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = aligned(q_), s = s_.contiguous(), d = aligned(d_);
  const int64_t nb = q.numel() / 8;
  Tensor q2 = at::empty_like(q), s2 = at::empty_like(s);
  if (nb > 0)
    check_launch(nvfp4::launch_requantize_delta(q.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), d.data_ptr(),
                                                dtype_code(d.scalar_type()), q2.data_ptr<uint8_t>(),
                                                s2.data_ptr<uint8_t>(), nb, stream()));
  return {q2, s2};
}

// M <= 8 and K % 32 == 0: the GEMV kernel (packed weight read once, dequantised in registers).
// Otherwise: dequantise to x's dtype and let cuBLAS do it (fp32 accumulation).
Tensor linear_cfg_cuda(const Tensor& x_, const Tensor& q_, const Tensor& s_, int64_t rows, int64_t threads) {
  check_packed_meta(q_, s_);
  check_linear_meta(x_, q_);
  c10::cuda::CUDAGuard guard(q_.device());
  const int64_t m = x_.size(0), n = q_.size(0), k = q_.size(1) * 2;
  if (m == 0 || n == 0 || k == 0) return at::zeros({m, n}, x_.options());
  if (m > 8 || k % 32 != 0 || n > INT32_MAX || k > INT32_MAX) {
    Tensor w = dequantize_cuda(q_, s_, x_.scalar_type());
    return at::matmul(x_, w.t());
  }
  Tensor x = aligned(x_), q = aligned(q_), s = aligned(s_);
  Tensor y = at::empty({m, n}, x.options());
  check_launch(nvfp4::launch_gemv(x.data_ptr(), dtype_code(x.scalar_type()), q.data_ptr<uint8_t>(),
                                  s.data_ptr<uint8_t>(), y.data_ptr(), (int)m, (int)n, (int)k, (int)rows,
                                  (int)threads, stream()));
  return y;
}

Tensor linear_cuda(const Tensor& x, const Tensor& q, const Tensor& s) { return linear_cfg_cuda(x, q, s, 0, 0); }

Tensor decode_attention_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const c10::optional<Tensor>& mask,
                             double scale) {
  check_decode_attention_meta(q, k, v, mask);
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1), L = k.size(2);
  const bool last_dims_ok = q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1 &&
                            (!mask.has_value() || mask->stride(1) == 1);
  if (!nvfp4::decode_attention_supported((int)Hq, (int)Hkv, (int)D) || !last_dims_ok)
    return decode_attention_cpu(q, k, v, mask, scale);  // the same math through ATen, on the GPU
  c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty({B, Hq, D}, q.options());
  if (B == 0 || Hq == 0 || L == 0) return out.zero_();
  Tensor work = at::empty({nvfp4::decode_attention_workspace((int)B, (int)Hq, (int)L, (int)D)},
                          q.options().dtype(at::kFloat));
  const int64_t mb = mask.has_value() && mask->size(0) > 1 ? mask->stride(0) : 0;
  const int64_t strides[9] = {q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                              v.stride(0), v.stride(1), v.stride(2), mb};
  check_launch(nvfp4::launch_decode_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                              mask.has_value() ? mask->data_ptr() : nullptr, out.data_ptr(),
                                              work.data_ptr<float>(), dtype_code(q.scalar_type()), (int)B, (int)Hq, (int)Hkv, (int)L, (int)D,
                                              strides, (float)scale, stream()));
  return out;
}

void adam8_step_cuda(Tensor& p, const Tensor& g, Tensor& m, Tensor& ms, Tensor& s, Tensor& ss, double lr,
                     double beta1, double beta2, double eps, double wd, double bc1, double bc2) {
  check_adam8_meta(p, g, m, ms, s, ss);
  c10::cuda::CUDAGuard guard(p.device());
  const int code = dtype_code(p.scalar_type());
  check_launch(nvfp4::launch_adam8(p.data_ptr(), code, g.data_ptr(), code, m.data_ptr<uint8_t>(),
                                   ms.data_ptr<float>(), s.data_ptr<uint8_t>(), ss.data_ptr<float>(), p.numel(),
                                   (float)lr, (float)beta1, (float)beta2, (float)eps, (float)wd, (float)bc1,
                                   (float)bc2, stream()));
}

#endif  // NVFP4_WITH_CUDA

}  // namespace

TORCH_LIBRARY(nvfp4, m) {
  m.def("quantize(Tensor w) -> (Tensor, Tensor)");
  m.def("dequantize(Tensor qdata, Tensor scale, ScalarType dtype) -> Tensor");
  m.def("fake_quantize(Tensor w) -> Tensor");
  m.def("fake_quantize_delta(Tensor qdata, Tensor scale, Tensor delta, ScalarType dtype) -> Tensor");
  m.def("requantize_delta(Tensor qdata, Tensor scale, Tensor delta) -> (Tensor, Tensor)");
  m.def("linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor");
  // linear with the GEMV launch shape forced (see launch_gemv in nvfp4_kernels.h; 0, 0 = default): benchmarks
  m.def("_linear_cfg(Tensor x, Tensor qdata, Tensor scale, int rows, int threads) -> Tensor");
  // one query a row over a (grouped) KV cache: q [B, Hq, D], k/v [B, Hkv, L, D], mask [B or 1, L]
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  // one AdamW step with 8-bit states, in place (--adam-state-bits 8; nvfp4lab/adam8.py)
  m.def("adam8_step_(Tensor(a!) p, Tensor g, Tensor(b!) m, Tensor(c!) m_scale, Tensor(d!) s, Tensor(e!) s_scale, "
        "float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2) -> ()");
}

TORCH_LIBRARY_IMPL(nvfp4, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("fake_quantize", &fake_quantize_cpu);
  m.impl("fake_quantize_delta", &fake_quantize_delta_cpu);
  m.impl("requantize_delta", &requantize_delta_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("_linear_cfg", &linear_cfg_cpu);
  m.impl("decode_attention", &decode_attention_cpu);
  m.impl("adam8_step_", &adam8_step_cpu);
}

#ifdef NVFP4_WITH_CUDA
TORCH_LIBRARY_IMPL(nvfp4, CUDA, m) {
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("fake_quantize", &fake_quantize_cuda);
  m.impl("fake_quantize_delta", &fake_quantize_delta_cuda);
  m.impl("requantize_delta", &requantize_delta_cuda);
  m.impl("linear", &linear_cuda);
  m.impl("_linear_cfg", &linear_cfg_cuda);
  m.impl("decode_attention", &decode_attention_cuda);
  m.impl("adam8_step_", &adam8_step_cuda);
}
#endif

// A plain Python module: importing nvfp4lab._nvfp4_C runs the registrations above.
PyMODINIT_FUNC PyInit__nvfp4_C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_nvfp4_C", "nvfp4 torch ops (torch.ops.nvfp4.*)", -1, nullptr};
  return PyModule_Create(&def);
}
