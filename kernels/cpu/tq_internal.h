/* Internal interfaces of libtq's CPU path: number conversions, derived tables (rotation signs,
 * QJL matrices, codebooks with their boundaries), the byte layout of a head record, and the
 * per-vector kernels that the scalar and AVX2 implementations both provide. Everything that
 * decides a code follows the "Reference arithmetic" section of kernels/FORMAT.md; this library
 * is compiled with -ffp-contract=off so that no multiply-add is fused behind our back. */
#ifndef TQ_INTERNAL_H
#define TQ_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tq.h"

/* ---- Number conversions (bit-exact, round to nearest even) ------------------------------- */

static inline float tq__bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t tq__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* fp16 -> float, exact (subnormals included). */
static inline float tq__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f)
        return tq__bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* subnormal or zero: mant * 2^-24, exact in float */
        float v = (float)mant * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return tq__bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* float -> fp16, round to nearest even, overflow to infinity; NaN kept quiet with its top
 * payload bits (what F16C's vcvtps2ph and CUDA's __float2half_rn do). */
static inline uint16_t tq__f32_to_f16(float f)
{
    uint32_t x = tq__f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        if (ax > 0x7f800000u)
            return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
        return (uint16_t)(sign | 0x7c00);
    }
    if (ax >= 0x47800000u) /* >= 65536: infinity after rounding */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {
        /* result is subnormal or zero: let the FPU round at the 2^-24 grid by adding 0.5 */
        float v = tq__bits_f32(ax) + 0.5f;
        return (uint16_t)(sign | (tq__f32_bits(v) - 0x3f000000u));
    }
    uint32_t odd = (ax >> 13) & 1;
    ax += 0xc8000fffu + odd; /* rebias exponent (-112 << 23) and round half to even */
    return (uint16_t)(sign | (ax >> 13));
}

static inline float tq__bf16_to_f32(uint16_t b) { return tq__bits_f32((uint32_t)b << 16); }

static inline uint16_t tq__f32_to_bf16(float f)
{
    uint32_t x = tq__f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- Derived tables ----------------------------------------------------------------------- */

static inline uint64_t tq__splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Rotation signs of part dimension n, part index p: dsign[k] is 0 (+1) or 0x80000000 (-1), the
 * float sign bit to xor in. */
void tqkv__rotation_signs(uint64_t seed, uint32_t n, uint32_t p, uint32_t *dsign);

/* QJL matrix of (seed, n, p), row-major S[k*n + j], and its transpose St[j*n + k]. Cached for
 * the life of the process. @return NULL on allocation failure. */
typedef struct {
    const float *S;
    const float *St;
} tq__qjl;
int tqkv__qjl_get(uint64_t seed, uint32_t n, uint32_t p, tq__qjl *out);

/* Expected E[(t - c(t))^2] of the codebook (kind, n, bits) for coordinates drawn from `density`
 * (exact Beta-type density of dimension n, or N(0,1)), by numerical integration. Used by tests
 * to know what distortion to expect. @return negative on bad arguments. */
double tqkv__codebook_distortion(tq_codebook_kind kind, uint32_t n, uint32_t bits,
                                 tq_codebook_kind density);

/* ---- Layout of a head record -------------------------------------------------------------- */

typedef struct {
    uint32_t n;          /* part dimension */
    uint32_t bits;       /* recipe bits of this part */
    uint32_t m;          /* MSE bits (bits, or bits - 1 for prod) */
    uint32_t prod;       /* 1 when the part carries QJL signs and gamma */
    uint32_t n_planes;   /* code sub-planes: 0, 1 or 2 */
    uint32_t plane_w[2]; /* sub-plane widths */
    uint32_t plane_words[2]; /* u32 words per token of each sub-plane */
    size_t plane_off[2];     /* byte offsets in the record */
    uint32_t sign_words;     /* u32 words per token of the QJL sign plane */
    size_t scale_off, gamma_off, signs_off;
} tq__part_layout;

typedef struct {
    uint32_t P, T;
    uint32_t raw;         /* raw mode: record is T x P 16-bit values */
    uint32_t n_parts;     /* 1 or 2 */
    uint32_t mask_words;  /* P/32 when split, else 0 */
    tq__part_layout part[2];
    size_t record_size;
} tq__layout;

/* Fills the layout of a head record. The recipe must be valid (tq_recipe_validate). */
void tqkv__layout(const tq_recipe *r, uint32_t P, uint32_t T, tq__layout *out);

/* ---- Per-vector kernels ------------------------------------------------------------------ */

/* Everything needed to encode or decode one part vector. */
typedef struct {
    uint32_t n, m, prod, norm;
    const float *cent;    /* 2^m centroids (unit-variance scale), NULL when m == 0 */
    float bnd[256];       /* 2^m - 1 boundaries, bnd[j] = (cent[j] + cent[j+1]) * 0.5f */
    uint32_t dsign[TQ_MAX_HEAD_DIM];
    const float *S, *St;  /* QJL matrix and transpose (prod only) */
} tq__part_ctx;

/* Prepares a part context. @return 0, TQKV_ENOMEM, or TQKV_EINVAL. */
int tqkv__part_ctx_init(tq__part_ctx *c, const tq__part_layout *pl, uint32_t part_index,
                        uint32_t norm, uint64_t seed, tq_codebook_kind cb);

/* Encodes one part vector x[n] (float, already gathered): codes[n] (0 .. 2^m - 1), fp16 scale
 * and gamma, and the QJL sign bits (sign_words u32 words; bit k%32 of word k/32). */
typedef void (*tq__encode_vec_fn)(const tq__part_ctx *c, const float *x, uint8_t *codes,
                                  uint16_t *scale, uint16_t *gamma, uint32_t *signs);
/* Decodes one part vector to the original domain of the part (out[n]). */
typedef void (*tq__decode_vec_fn)(const tq__part_ctx *c, const uint8_t *codes, uint16_t scale,
                                  uint16_t gamma, const uint32_t *signs, float *out);

void tqkv__encode_vec_scalar(const tq__part_ctx *c, const float *x, uint8_t *codes,
                             uint16_t *scale, uint16_t *gamma, uint32_t *signs);
void tqkv__decode_vec_scalar(const tq__part_ctx *c, const uint8_t *codes, uint16_t scale,
                             uint16_t gamma, const uint32_t *signs, float *out);
#if defined(__x86_64__)
void tqkv__encode_vec_avx2(const tq__part_ctx *c, const float *x, uint8_t *codes,
                           uint16_t *scale, uint16_t *gamma, uint32_t *signs);
void tqkv__decode_vec_avx2(const tq__part_ctx *c, const uint8_t *codes, uint16_t scale,
                           uint16_t gamma, const uint32_t *signs, float *out);
int tqkv__cpu_has_avx2(void);
void tqkv__f16_row_avx2(const uint16_t *src, uint32_t n, float *dst);
void tqkv__f16_store_avx2(const float *src, uint32_t n, uint16_t *dst);
void tqkv__pack_codes_bmi2(const uint8_t *codes, uint32_t n, uint32_t m, uint32_t *w0,
                           uint32_t *w1);
void tqkv__unpack_codes_bmi2(const uint32_t *w0, const uint32_t *w1, uint32_t n, uint32_t m,
                             uint8_t *codes);
/* Vertical AVX2 section kernels (avx2_group.c): tokens [0, T & ~7) of every head, eight
 * tokens at a time in token order, bytes identical to the per-token path. chs holds each head's
 * two part channel lists ([n_kv_heads][2][TQ_MAX_HEAD_DIM]; NULL without outliers), and the
 * outlier masks must already be in the records. Encode writes the part records of the section
 * dst; decode writes rows of dst ([token][head][dim], out_dtype). @return the number of tokens
 * done per head (0 when the geometry or the codebook is not supported: head_dim not a multiple
 * of 8, T < 8, m > 4; or no scratch memory); the caller does the rest with the per-token
 * kernels. */
uint32_t tqkv__encode_section_avx2(const tq__part_ctx *ctx, const tq__layout *L,
                                   const uint16_t *chs, const tq_kv_view *src,
                                   uint32_t n_kv_heads, uint32_t head_dim, uint8_t *dst);
uint32_t tqkv__decode_section_avx2(const tq__part_ctx *ctx, const tq__layout *L,
                                   const uint16_t *chs, const uint8_t *sec, uint32_t n_kv_heads,
                                   uint32_t head_dim, tq_dtype out_dtype, void *dst);
/* Test hook: the codes of t[k * 8 + lane] (k < n, 8 lanes = 8 tokens) by the vertical
 * quantiser (t taken as the already scaled coordinate), written as the plane words of a record
 * of T = 8 tokens (layout pl). @return 0, TQKV_ENOTSUP (m = 0 or m > 4) or TQKV_ENOMEM. */
int tqkv__quant_group_avx2(const tq__part_ctx *c, const tq__part_layout *pl, const float *t,
                           uint8_t *rec);
/* E[j] = E[j] + x[j] * x[j] for the head vector x of (t, h), j < head_dim (a multiple of 8). */
void tqkv__energy_add_avx2(const tq_kv_view *v, uint32_t t, uint32_t h, uint32_t head_dim,
                           float *E);
/* bf16 row -> fp16 (as tq__f32_to_f16 of the widened value) or fp32 (out_dtype), n a multiple
 * of 8. */
void tqkv__bf16_widen_avx2(const uint16_t *src, uint32_t n, tq_dtype out_dtype, uint8_t *dst);
/* float row -> bf16 (round to nearest even, as tq__f32_to_bf16), n a multiple of 8. */
void tqkv__bf16_store_avx2(const float *src, uint32_t n, uint16_t *dst);
#endif

/* Blocks, shared by the CPU and CUDA paths (block.c). Packed raw KV of p (tq_block_encode_packed's
 * layout): validates p, n_tokens and kv_len; *per = bytes of one layer's K (or V). @return 0,
 * a tq_codec_params_validate error, TQKV_EBADGEOMETRY. */
int tqkv__packed_check(const tq_codec_params *p, uint32_t n_tokens, size_t kv_len, size_t *per);
/* A decode of layers [layer_begin, +n_layers) of b into dst_cap bytes of out_dtype: *per = bytes
 * of one layer's K (or V). @return 0, TQKV_EBADDTYPE, TQKV_EBADLAYERS, TQKV_ENOSPC. */
int tqkv__block_decode_check(const tq_block_view *b, uint32_t layer_begin, uint32_t n_layers,
                             tq_dtype out_dtype, size_t dst_cap, size_t *per);

/* The kernels of one implementation, looked up once per call. */
typedef struct {
    int avx2;
    tq__encode_vec_fn encode_vec;
    tq__decode_vec_fn decode_vec;
    void (*pack)(const uint8_t *codes, uint32_t n, uint32_t m, uint32_t *w0, uint32_t *w1);
    void (*unpack)(const uint32_t *w0, const uint32_t *w1, uint32_t n, uint32_t m,
                   uint8_t *codes);
} tq__kernels;
void tqkv__kernels(tq__kernels *k);
/* tqkv__view_read_head with the implementation's converters. */
void tqkv__view_read_head_k(const tq__kernels *k, const tq_kv_view *v, uint32_t t, uint32_t h,
                            uint32_t head_dim, float *out);

tq__encode_vec_fn tqkv__encode_vec(void);
tq__decode_vec_fn tqkv__decode_vec(void);

/* In-place unnormalised Walsh-Hadamard transform, stages h = 1, 2, 4, ... (FORMAT.md). */
void tqkv__fwht_scalar(float *v, uint32_t n);
/* The fixed-tree sum of FORMAT.md: 32 lane partials over k = lane (mod 32) in increasing k,
 * then pairwise at distances 16, 8, 4, 2, 1. */
float tqkv__tree_sum_sq(const float *v, uint32_t n);
float tqkv__tree_sum_prod(const float *a, const float *b, uint32_t n);

/* Packs codes[n] of m bits into the per-token words of each sub-plane (words[plane][i]). */
void tqkv__pack_codes(const uint8_t *codes, uint32_t n, uint32_t m, uint32_t *w0, uint32_t *w1);
void tqkv__unpack_codes(const uint32_t *w0, const uint32_t *w1, uint32_t n, uint32_t m,
                        uint8_t *codes);

/* Reads token t's codes (and QJL sign words) of one part from a head record. */
int tqkv__read_part_codes(const uint8_t *rec, const tq__part_layout *pl, uint32_t T, uint32_t t,
                          uint8_t *codes, uint32_t *sg);

/* Reads one head vector (head_dim values) of token t into out[0..head_dim). */
void tqkv__view_read_head(const tq_kv_view *v, uint32_t t, uint32_t h, uint32_t head_dim,
                          float *out);

#endif
