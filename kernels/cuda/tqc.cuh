/* Shared internals of libtq's CUDA kernels: the head-record layout and derived tables as the
 * device sees them, the per-thread arithmetic that must equal the CPU reference bit for bit
 * (kernels/FORMAT.md, "Reference arithmetic"), and error mapping. Host helpers live in
 * tables.cu. Every vector-level routine here runs in ONE thread over a register array: the
 * reference's fixed-tree sums (32 lane partials, then pairwise at 16, 8, 4, 2, 1) are reproduced
 * with 32 thread-local partials, and every multiply and add goes through __fmul_rn/__fadd_rn so
 * that nvcc never fuses them into FMAs the CPU does not do. */
#ifndef TQC_CUH
#define TQC_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "tq_cuda.h"
#include "tq_internal.h"
}

/* One part of a head record, with the device addresses of its tables. Offsets are bytes from the
 * start of the head record. */
typedef struct {
    uint32_t n, bits, m, prod;
    uint32_t n_planes, plane_w[2], plane_words[2], sign_words;
    uint32_t plane_off[2], scale_off, gamma_off, signs_off;
    const float *cent;     /* [2^m] centroids (unit-variance scale) */
    const float *bnd;      /* [2^m - 1] boundaries */
    const uint32_t *dsign; /* [n] 0 or 0x80000000: sign bit xored in by D */
    const float *S;        /* [n, n] QJL matrix, row-major (prod only) */
    const float *St;       /* [n, n] its transpose (prod only) */
} tqc_part;

typedef struct {
    uint32_t P, T, head_dim, n_heads;
    uint32_t raw, raw_dtype, n_parts, mask_words, norm;
    uint32_t record_size;
    tqc_part part[2];
} tqc_rec;

/* Fills `out` for one section (validates the recipe, uploads the tables to the current device
 * on first use). @return 0, TQKV_EBADCODEC, TQKV_EINVAL, TQKV_ENOMEM, TQKV_ENODEVICE, ECUDA. */
int tqkv__cuda_rec(const tq_recipe *r, uint32_t head_dim, uint32_t n_heads, uint32_t n_tokens,
                   uint64_t seed, tq_codebook_kind cb, tqc_rec *out);
/* Maps a CUDA error to a TQKV code (logs it). */
int tqkv__cuda_err(cudaError_t e, const char *what);
#define TQC_CHECK_LAUNCH(what)                                                                     \
    do {                                                                                           \
        cudaError_t _e = cudaGetLastError();                                                       \
        if (_e != cudaSuccess)                                                                     \
            return tqkv__cuda_err(_e, what);                                                       \
    } while (0)

/* ---- Number conversions, matching tq__f32_to_f16 / tq__f32_to_bf16 ----------------------- */

__device__ __forceinline__ uint16_t tqc_f32_to_f16(float f)
{
    return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float tqc_f16_to_f32(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ float tqc_bf16_to_f32(uint16_t b)
{
    return __uint_as_float((uint32_t)b << 16);
}
__device__ __forceinline__ uint16_t tqc_f32_to_bf16(float f)
{
    uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
/* Non-finite inputs read as 0, as tqkv__view_get does. */
__device__ __forceinline__ float tqc_finite(float v)
{
    return isfinite(v) ? v : 0.0f;
}

/* ---- Reference arithmetic, one thread per vector ----------------------------------------- */

/* In-place unnormalised Walsh-Hadamard transform, stages h = 1, 2, 4, ... */
template <int N> __device__ __forceinline__ void tqc_fwht(float (&v)[N])
{
#pragma unroll
    for (int h = 1; h < N; h <<= 1) {
#pragma unroll
        for (int i = 0; i < N; i += 2 * h) {
#pragma unroll
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = __fadd_rn(a, b);
                v[j + h] = __fsub_rn(a, b);
            }
        }
    }
}

/* Pairwise reduction of 32 partials at distances 16, 8, 4, 2, 1. */
__device__ __forceinline__ float tqc_tree32(float (&p)[32])
{
#pragma unroll
    for (int d = 16; d >= 1; d >>= 1) {
#pragma unroll
        for (int l = 0; l < d; l++)
            p[l] = __fadd_rn(p[l], p[l + d]);
    }
    return p[0];
}

template <int N> __device__ __forceinline__ float tqc_tree_sum_sq(const float (&v)[N])
{
    float p[32];
#pragma unroll
    for (int l = 0; l < 32; l++)
        p[l] = 0.0f;
#pragma unroll
    for (int k = 0; k < N; k++)
        p[k & 31] = __fadd_rn(p[k & 31], __fmul_rn(v[k], v[k]));
    return tqc_tree32(p);
}

#endif
