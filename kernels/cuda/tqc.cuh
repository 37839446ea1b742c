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

/* In-place unnormalised Walsh-Hadamard transform, stages h = 1, 2, 4, ... (one template level
 * per stage, so that every index is a compile-time constant and the vector stays in registers). */
template <int N, int H> struct tqc_fwht_stage {
    static __device__ __forceinline__ void run(float (&v)[N])
    {
#pragma unroll
        for (int i = 0; i < N; i += 2 * H) {
#pragma unroll
            for (int j = 0; j < H; j++) {
                float a = v[i + j], b = v[i + j + H];
                v[i + j] = __fadd_rn(a, b);
                v[i + j + H] = __fsub_rn(a, b);
            }
        }
        tqc_fwht_stage<N, 2 * H>::run(v);
    }
};
template <int N> struct tqc_fwht_stage<N, N> {
    static __device__ __forceinline__ void run(float (&)[N]) {}
};
template <int N> __device__ __forceinline__ void tqc_fwht(float (&v)[N])
{
    tqc_fwht_stage<N, 1>::run(v);
}

/* The reference's fixed-tree sum TS of term(k), k = 0..N-1: 32 partials L_l over k = l (mod 32)
 * in increasing k, then pairwise at distances 16, 8, 4, 2, 1. Evaluated partial pair by partial
 * pair (L_l and L_{l+16} right before their sum), so that only 16 values are live at once: the
 * same floats in the same order, fewer registers than 32 running partials next to the vector. */
template <int N, typename F> __device__ __forceinline__ float tqc_tree_sum(const F &term)
{
    float a[16];
#pragma unroll
    for (int l = 0; l < 16; l++) {
        float lo = 0.0f, hi = 0.0f;
#pragma unroll
        for (int k = l; k < N; k += 32)
            lo = __fadd_rn(lo, term(k));
#pragma unroll
        for (int k = l + 16; k < N; k += 32)
            hi = __fadd_rn(hi, term(k));
        a[l] = __fadd_rn(lo, hi);
    }
#pragma unroll
    for (int d = 8; d >= 1; d >>= 1) {
#pragma unroll
        for (int l = 0; l < d; l++)
            a[l] = __fadd_rn(a[l], a[l + d]);
    }
    return a[0];
}

template <int N> struct tqc_sq_term {
    const float (&v)[N];
    __device__ __forceinline__ float operator()(int k) const { return __fmul_rn(v[k], v[k]); }
};

template <int N> __device__ __forceinline__ float tqc_tree_sum_sq(const float (&v)[N])
{
    tqc_sq_term<N> t{v};
    return tqc_tree_sum<N>(t);
}

#endif
