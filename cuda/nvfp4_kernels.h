// Host-side launchers of the CUDA kernels in nvfp4_kernels.cu. Plain C++ (no torch, no CUDA headers)
// so that nvfp4_ops.cpp can call them and the .cu compiles with plain `nvcc -c`.
// dtype codes: 0 = float32, 1 = float16, 2 = bfloat16. `stream` is a cudaStream_t.
// All pointers must be 16-byte aligned and tensors contiguous (the caller makes sure of both).
// Each returns 0 on success or the cudaError_t of the launch.
#pragma once
#include <stdint.h>

namespace nvfp4 {

// w [nb*16] -> q [nb*8], s [nb]  (nb = N*K/16 blocks; rows are contiguous so the tensor is one flat list)
int launch_quantize(const void* w, int w_dtype, uint8_t* q, uint8_t* s, int64_t nb, void* stream);
// q, s -> out [nb*16] in out_dtype
int launch_dequantize(const uint8_t* q, const uint8_t* s, void* out, int out_dtype, int64_t nb, void* stream);
// w -> dequantize(quantize(w)) in w's dtype
int launch_fake_quantize(const void* w, void* out, int dtype, int64_t nb, void* stream);
// dequantize(requantize_delta(q, s, delta)) in out_dtype; delta is float32 or bfloat16
int launch_fake_quantize_delta(const uint8_t* q, const uint8_t* s, const void* delta, int delta_dtype,
                               void* out, int out_dtype, int64_t nb, void* stream);
// (q, s) + delta -> (q2 [nb*8], s2 [nb]): the frozen-scale requantization the forward above uses
int launch_requantize_delta(const uint8_t* q, const uint8_t* s, const void* delta, int delta_dtype, uint8_t* q2,
                            uint8_t* s2, int64_t nb, void* stream);
// y [M, N] = x [M, K] @ W^T with W = (q [N, K/2], s [N, K/16]); needs 1 <= M <= 8, K % 32 == 0.
// rows (1, 2 or 4; 0 = 2) = weight rows per group; threads = 16: 16 lanes of a half-warp split K for
// their group (warp shuffles only); 32..256: the CTA kernel, whose threads split K and reduce through
// shared memory; 0 = default (16 for K <= 4096, else 128).
int launch_gemv(const void* x, int x_dtype, const uint8_t* q, const uint8_t* s, void* y, int M, int N,
                int K, int rows, int threads, void* stream);

// decode_attention.cu. out [B, Hq, D] = softmax(q k^T * scale + mask) v for one query a row:
// q [B, Hq, D], k and v [B, Hkv, L, D] (query head h reads KV head h / (Hq / Hkv)), mask [B, L]
// additive (-inf = not attended, never read) or null. Last dims contiguous; strides (in
// elements) = {q b, q h, k b, k h, k l, v b, v h, v l, mask b}. Shapes: decode_attention_supported;
// `work` holds decode_attention_workspace() floats. A row with every column masked gives zeros.
bool decode_attention_supported(int Hq, int Hkv, int D);
int64_t decode_attention_workspace(int B, int Hq, int L, int D);
int launch_decode_attention(const void* q, const void* k, const void* v, const void* mask, void* out, float* work,
                            int dtype, int B, int Hq, int Hkv, int L, int D, const int64_t* strides, float scale,
                            void* stream);

// adam8.cu. One AdamW step of n values with 8-bit states (--adam-state-bits 8; the codes are in
// nvfp4_common.h): p and g [n] (dtype codes); mq, sq [n] the codes of m and sqrt(v); ms, ss
// [ceil(n / ADAM8_BLOCK)] their per-block scales (0 = never written). bc1 = 1 - beta1^t, bc2 = 1 - beta2^t.
int launch_adam8(void* p, int p_dtype, const void* g, int g_dtype, uint8_t* mq, float* ms, uint8_t* sq,
                 float* ss, int64_t n, float lr, float beta1, float beta2, float eps, float wd, float bc1,
                 float bc2, void* stream);

}  // namespace nvfp4
