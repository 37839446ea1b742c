/* AVX2 section codec over groups of eight tokens, one token per SIMD lane ("vertical"). The
 * block layout is word-major, token-minor (FORMAT.md), so word i of eight consecutive tokens is
 * one 256-bit store; every lane performs exactly the scalar sequence of the reference
 * (codec.c), so the FWHT is plain vertical add/sub, the tree sums keep their 32 lane partials as
 * 32 vectors, and the scales of eight tokens are one vcvtps2ph. Only the [token][head][dim]
 * rows of the input (and of decode's output) need an 8x8 transpose; a section is walked in token
 * order over all heads so that those rows are read (written) in memory order. Codes are counted
 * on |t| against the positive boundaries only, which the codebook's exact symmetry allows
 * (checked when a part is prepared; an asymmetric table falls back to the per-token kernels):
 *   t >= 0:  c = K/2 + #{b_i <= t}
 *   t < 0:   c = K/2 - 1 - #{b_i < |t|} = K/2 - 1 - #{b_i <= nextdown(|t|)}
 *   t NaN:   c = 0 (the compare-and-count of the reference gives 0 for NaN)
 * with b_i the K/2 - 1 positive boundaries and the middle one exactly +0, counting with integer
 * compares of the float bit patterns (monotonic for non-negative floats, and a NaN's pattern is
 * above every finite one); a binary search over them (vpermd) for 3 and 4 bits. When a group's
 * sums of squares are finite, no t can be NaN and the sign alone decides between the two cases.
 * tests/unit/test_tq_codec.c checks the bytes against the scalar path.
 * Only additions, subtractions, multiplications, divisions and square roots appear, never a fused
 * multiply-add (the library is compiled with -ffp-contract=off). */
#include "tq_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#include "tqkv_alloc.h"

#define TQ_AVX2 __attribute__((target("avx2,f16c,bmi2")))
#define TQ_AVX2_INL __attribute__((target("avx2,f16c,bmi2"), always_inline)) static inline

/* What the vertical kernels need of one part beyond its tq__part_ctx. */
typedef struct {
    uint32_t n, m, npos;
    _Alignas(32) int32_t pb[8]; /* bit patterns of the positive boundaries, minus 1 */
    /* the binary search's second and last levels, indexed by the count so far */
    _Alignas(32) int32_t pbl2[8];
    _Alignas(32) int32_t pbl3[8];
    _Alignas(32) float mag[8];  /* cent[K/2 + cnt]: |centroid| by count */
    _Alignas(32) float sq[8];   /* mag[cnt] * mag[cnt] */
    _Alignas(32) float dec0[8]; /* decode tables, see dequant_block */
    _Alignas(32) float dec1[8];
} grp_part;

/* Scratch of one call: registers of eight tokens, lane = token. */
typedef struct {
    __m256 X[TQ_MAX_HEAD_DIM]; /* head vector, channel j */
    __m256 W[TQ_MAX_HEAD_DIM]; /* rotated part */
    __m256 V[TQ_MAX_HEAD_DIM]; /* centroid values, then the residual (prod) */
    __m256 L[32];              /* tree-sum lane partials */
    uint16_t ident[2 * TQ_MAX_HEAD_DIM];
} grp_scratch;

/* @return 1 when the vertical kernels reproduce the reference for this part, else 0. */
static int grp_part_init(const tq__part_ctx *c, grp_part *g)
{
    memset(g, 0, sizeof(*g));
    g->n = c->n;
    g->m = c->m;
    if (c->m == 0) return 1;
    if (c->m > 4) return 0;
    const uint32_t K = 1u << c->m, H = K / 2;
    for (uint32_t i = 0; i < K; i++)
        if (tq__f32_bits(c->cent[i]) != (tq__f32_bits(c->cent[K - 1 - i]) ^ 0x80000000u)) return 0;
    if (tq__f32_bits(c->bnd[H - 1]) != 0) return 0;
    for (uint32_t i = 0; i + 1 < H; i++) {
        float b = c->bnd[H + i];
        if (!(b > 0.0f) || tq__f32_bits(c->bnd[H - 2 - i]) != (tq__f32_bits(b) ^ 0x80000000u))
            return 0;
        g->pb[i] = (int32_t)(tq__f32_bits(b) - 1);
    }
    g->npos = H - 1;
    if (c->m == 4)
        for (uint32_t i = 0; i < 8; i++) {
            g->pbl2[i] = g->pb[(i & 4) + 1]; /* i = 0 or 4 */
            g->pbl3[i] = g->pb[i & 6];       /* i = 0, 2, 4 or 6 */
        }
    if (c->m == 3)
        for (uint32_t i = 0; i < 8; i++)
            g->pbl3[i] = g->pb[i & 2]; /* i = 0 or 2 */
    for (uint32_t i = 0; i < H; i++) {
        g->mag[i] = c->cent[H + i];
        g->sq[i] = c->cent[H + i] * c->cent[H + i];
    }
    for (uint32_t i = 0; i < 8; i++) {
        switch (c->m) {
        case 4:
            g->dec0[i] = c->cent[i];
            g->dec1[i] = c->cent[8 + i];
            break;
        case 3: /* the index carries a stray bit 2: tables repeat */
            g->dec0[i] = c->cent[i & 3];
            g->dec1[i] = c->cent[4 + (i & 3)];
            break;
        case 2:
            g->dec0[i] = c->cent[i & 3];
            break;
        default:
            g->dec0[i] = c->cent[0];
            g->dec1[i] = c->cent[1];
            break;
        }
    }
    return 1;
}

static inline int64_t view_index(const tq_kv_view *v, uint32_t t, uint32_t h)
{
    if (!v->pages) return (int64_t)t * v->token_stride + (int64_t)h * v->head_stride;
    uint64_t pt = (uint64_t)t + v->page_offset;
    return (int64_t)v->pages[pt / v->page_size] * v->page_stride +
           (int64_t)(pt % v->page_size) * v->token_stride + (int64_t)h * v->head_stride;
}

/* ---- Transposes ------------------------------------------------------------------------- */

/* 8x8 transpose of 16-bit elements inside each 128-bit lane: r[i] element e -> r[e] element i. */
TQ_AVX2_INL void tr8x8_epi16(__m256i r[8])
{
    __m256i a0 = _mm256_unpacklo_epi16(r[0], r[1]), a1 = _mm256_unpackhi_epi16(r[0], r[1]);
    __m256i a2 = _mm256_unpacklo_epi16(r[2], r[3]), a3 = _mm256_unpackhi_epi16(r[2], r[3]);
    __m256i a4 = _mm256_unpacklo_epi16(r[4], r[5]), a5 = _mm256_unpackhi_epi16(r[4], r[5]);
    __m256i a6 = _mm256_unpacklo_epi16(r[6], r[7]), a7 = _mm256_unpackhi_epi16(r[6], r[7]);
    __m256i b0 = _mm256_unpacklo_epi32(a0, a2), b1 = _mm256_unpackhi_epi32(a0, a2);
    __m256i b2 = _mm256_unpacklo_epi32(a1, a3), b3 = _mm256_unpackhi_epi32(a1, a3);
    __m256i b4 = _mm256_unpacklo_epi32(a4, a6), b5 = _mm256_unpackhi_epi32(a4, a6);
    __m256i b6 = _mm256_unpacklo_epi32(a5, a7), b7 = _mm256_unpackhi_epi32(a5, a7);
    r[0] = _mm256_unpacklo_epi64(b0, b4);
    r[1] = _mm256_unpackhi_epi64(b0, b4);
    r[2] = _mm256_unpacklo_epi64(b1, b5);
    r[3] = _mm256_unpackhi_epi64(b1, b5);
    r[4] = _mm256_unpacklo_epi64(b2, b6);
    r[5] = _mm256_unpackhi_epi64(b2, b6);
    r[6] = _mm256_unpacklo_epi64(b3, b7);
    r[7] = _mm256_unpackhi_epi64(b3, b7);
}

/* 8x8 transpose of floats. */
TQ_AVX2_INL void tr8x8_ps(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* 8 halves (fp16 or bf16) -> 8 floats. */
TQ_AVX2_INL __m256 half8_to_ps(__m128i h, int bf16)
{
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

#define BFLY(a, b)                                                                                 \
    do {                                                                                           \
        __m256 s_ = _mm256_add_ps(a, b), d_ = _mm256_sub_ps(a, b);                                 \
        a = s_;                                                                                    \
        b = d_;                                                                                    \
    } while (0)

/* The encoder's first pass over eight consecutive coordinates k..k+7 of a part (x in a[]): the
 * ||x||^2 lane partials, the sign flip, and FWHT stages 1, 2, 4; into W[k..k+7]. */
TQ_AVX2_INL void first8(__m256 *a, uint32_t k, const uint32_t *dsign, __m256 *L, __m256 *W)
{
#pragma GCC unroll 8
    for (uint32_t i = 0; i < 8; i++) {
        L[(k + i) & 31] = _mm256_add_ps(L[(k + i) & 31], _mm256_mul_ps(a[i], a[i]));
        a[i] = _mm256_xor_ps(a[i], _mm256_castsi256_ps(_mm256_set1_epi32((int)dsign[k + i])));
    }
    BFLY(a[0], a[1]);
    BFLY(a[2], a[3]);
    BFLY(a[4], a[5]);
    BFLY(a[6], a[7]);
    BFLY(a[0], a[2]);
    BFLY(a[1], a[3]);
    BFLY(a[4], a[6]);
    BFLY(a[5], a[7]);
    BFLY(a[0], a[4]);
    BFLY(a[1], a[5]);
    BFLY(a[2], a[6]);
    BFLY(a[3], a[7]);
#pragma GCC unroll 8
    for (uint32_t i = 0; i < 8; i++)
        W[k + i] = a[i];
}

/* Eight channels j..j+7 (a[e] = channel j + e) of the head vector: into X, or (FIRST, a part
 * that is the whole head) straight through the encoder's first pass. */
TQ_AVX2_INL void put8(__m256 *a, uint32_t j, __m256 *X, const uint32_t *dsign, __m256 *L, __m256 *W,
                      const int FIRST)
{
    if (FIRST) {
        first8(a, j, dsign, L, W);
        return;
    }
#pragma GCC unroll 8
    for (uint32_t e = 0; e < 8; e++)
        X[j + e] = a[e];
}

/* Channel j of tokens t0..t0+7 of head h for j < P, non-finite read as +0, channels
 * head_dim..P-1 zero (FORMAT.md, "Input"); see put8. head_dim is a multiple of 8, DT the
 * source dtype. */
TQ_AVX2_INL void load_rows(const tq_kv_view *v, uint32_t v_tokens, uint32_t t0, uint32_t h,
                           uint32_t head_dim, uint32_t P, __m256 *X, const uint32_t *dsign,
                           __m256 *L, __m256 *W, const int DT, const int FIRST)
{
    const size_t es = DT == TQ_DTYPE_F32 ? 4 : 2;
    const uint8_t *rows[8];
#pragma GCC unroll 8
    for (uint32_t i = 0; i < 8; i++)
        rows[i] = (const uint8_t *)v->data + view_index(v, t0 + i, h) * (int64_t)es;
    if (t0 + 16 <= v_tokens) /* the next group's rows of this head, into L2 */
#pragma GCC unroll 8
        for (uint32_t i = 0; i < 8; i++) {
            const char *r = (const char *)v->data + view_index(v, t0 + 8 + i, h) * (int64_t)es;
            for (uint32_t b = 0; b < head_dim * es; b += 64)
                _mm_prefetch(r + b, _MM_HINT_T1);
        }
    uint32_t j = 0;
    if (DT == TQ_DTYPE_F32) {
        const __m256i expm = _mm256_set1_epi32(0x7f800000);
        for (; j < head_dim; j += 8) {
            __m256 r[8];
#pragma GCC unroll 8
            for (uint32_t i = 0; i < 8; i++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(rows[i] + 4 * (size_t)j));
                __m256i bad = _mm256_cmpeq_epi32(_mm256_and_si256(x, expm), expm);
                r[i] = _mm256_castsi256_ps(_mm256_andnot_si256(bad, x));
            }
            tr8x8_ps(r);
            put8(r, j, X, dsign, L, W, FIRST);
        }
    } else {
        const int bf = DT == TQ_DTYPE_BF16;
        const __m256i expm = _mm256_set1_epi16(bf ? 0x7f80 : 0x7c00);
        for (; j + 16 <= head_dim; j += 16) {
            __m256i r[8];
#pragma GCC unroll 8
            for (uint32_t i = 0; i < 8; i++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(rows[i] + 2 * (size_t)j));
                __m256i bad = _mm256_cmpeq_epi16(_mm256_and_si256(x, expm), expm);
                r[i] = _mm256_andnot_si256(bad, x);
            }
            tr8x8_epi16(r);
            __m256 a[8];
#pragma GCC unroll 8
            for (uint32_t e = 0; e < 8; e++)
                a[e] = half8_to_ps(_mm256_castsi256_si128(r[e]), bf);
            put8(a, j, X, dsign, L, W, FIRST);
#pragma GCC unroll 8
            for (uint32_t e = 0; e < 8; e++)
                a[e] = half8_to_ps(_mm256_extracti128_si256(r[e], 1), bf);
            put8(a, j + 8, X, dsign, L, W, FIRST);
        }
        if (j < head_dim) { /* one block of 8 channels left */
            __m256i r[8];
#pragma GCC unroll 8
            for (uint32_t i = 0; i < 8; i++) {
                __m256i x = _mm256_castsi128_si256(
                    _mm_loadu_si128((const __m128i *)(rows[i] + 2 * (size_t)j)));
                __m256i bad = _mm256_cmpeq_epi16(_mm256_and_si256(x, expm), expm);
                r[i] = _mm256_andnot_si256(bad, x);
            }
            tr8x8_epi16(r);
            __m256 a[8];
#pragma GCC unroll 8
            for (uint32_t e = 0; e < 8; e++)
                a[e] = half8_to_ps(_mm256_castsi256_si128(r[e]), bf);
            put8(a, j, X, dsign, L, W, FIRST);
        }
    }
    for (j = head_dim; j < P; j += 8) {
        __m256 a[8];
#pragma GCC unroll 8
        for (uint32_t e = 0; e < 8; e++)
            a[e] = _mm256_setzero_ps();
        put8(a, j, X, dsign, L, W, FIRST);
    }
}

/* load_rows for the view's dtype; with dsign (a part that is the whole head), the first pass
 * of the encoder too. */
TQ_AVX2 static void load_group(const tq_kv_view *v, uint32_t v_tokens, uint32_t t0, uint32_t h,
                               uint32_t head_dim, uint32_t P, __m256 *X, const uint32_t *dsign,
                               __m256 *L, __m256 *W)
{
    if (dsign) {
        if (v->dtype == TQ_DTYPE_F16)
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_F16, 1);
        else if (v->dtype == TQ_DTYPE_BF16)
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_BF16, 1);
        else
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_F32, 1);
    } else {
        if (v->dtype == TQ_DTYPE_F16)
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_F16, 0);
        else if (v->dtype == TQ_DTYPE_BF16)
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_BF16, 0);
        else
            load_rows(v, v_tokens, t0, h, head_dim, P, X, dsign, L, W, TQ_DTYPE_F32, 0);
    }
}

/* float -> bf16 in the low 16 bits of each 32-bit lane (as tq__f32_to_bf16). */
TQ_AVX2_INL __m256i ps_to_bf16(__m256 f)
{
    __m256i x = _mm256_castps_si256(f);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, q, nan);
}

/* Two channels' eight 16-bit values: low lane a, high lane b. */
TQ_AVX2_INL __m256i half_pair(__m256 a, __m256 b, int dt)
{
    if (dt == TQ_DTYPE_BF16)
        return _mm256_permute4x64_epi64(_mm256_packus_epi32(ps_to_bf16(a), ps_to_bf16(b)), 0xD8);
    return _mm256_set_m128i(_mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT),
                            _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
}

/* Stores X[0..head_dim) of tokens t0..t0+7 as [token][head][dim] rows of dtype dt. */
/* The decoder's last step x_k = D_k (z_k * (1/n)) when dsign is given (else X is final). */
TQ_AVX2_INL __m256 out_val(const __m256 *X, uint32_t k, const uint32_t *dsign, __m256 f)
{
    if (!dsign) return X[k];
    return _mm256_xor_ps(_mm256_mul_ps(X[k], f),
                         _mm256_castsi256_ps(_mm256_set1_epi32((int)dsign[k])));
}

TQ_AVX2 static void store_group(const __m256 *X, const uint32_t *dsign, __m256 f, uint32_t head_dim,
                                tq_dtype dt, void *dst, size_t first, size_t row_stride)
{
    uint32_t j = 0;
    if (dt == TQ_DTYPE_F32) {
        float *o = (float *)dst + first;
        for (; j < head_dim; j += 8) {
            __m256 r[8];
#pragma GCC unroll 8
            for (uint32_t e = 0; e < 8; e++)
                r[e] = out_val(X, j + e, dsign, f);
            tr8x8_ps(r);
#pragma GCC unroll 8
            for (uint32_t i = 0; i < 8; i++)
                _mm256_storeu_ps(o + i * row_stride + j, r[i]);
        }
        return;
    }
    uint16_t *o = (uint16_t *)dst + first;
    for (; j + 16 <= head_dim; j += 16) {
        __m256i r[8];
#pragma GCC unroll 8
        for (uint32_t e = 0; e < 8; e++)
            r[e] = half_pair(out_val(X, j + e, dsign, f), out_val(X, j + 8 + e, dsign, f), dt);
        tr8x8_epi16(r);
#pragma GCC unroll 8
        for (uint32_t i = 0; i < 8; i++)
            _mm256_storeu_si256((__m256i *)(o + i * row_stride + j), r[i]);
    }
    if (j < head_dim) {
        __m256i r[8];
#pragma GCC unroll 8
        for (uint32_t e = 0; e < 8; e++) {
            __m256 x = out_val(X, j + e, dsign, f);
            r[e] = half_pair(x, x, dt);
        }
        tr8x8_epi16(r);
#pragma GCC unroll 8
        for (uint32_t i = 0; i < 8; i++)
            _mm_storeu_si128((__m128i *)(o + i * row_stride + j), _mm256_castsi256_si128(r[i]));
    }
}

/* ---- FWHT and tree sums ----------------------------------------------------------------- */

/* Stages h, 2h, 4h (in this order) over v[0..n). */
TQ_AVX2 static void fwht_pass8(__m256 *v, uint32_t n, uint32_t h)
{
    for (uint32_t b = 0; b < n; b += 8 * h)
        for (uint32_t o = 0; o < h; o++) {
            __m256 *p = v + b + o;
            __m256 a0 = p[0], a1 = p[h], a2 = p[2 * h], a3 = p[3 * h], a4 = p[4 * h], a5 = p[5 * h],
                   a6 = p[6 * h], a7 = p[7 * h];
            BFLY(a0, a1);
            BFLY(a2, a3);
            BFLY(a4, a5);
            BFLY(a6, a7);
            BFLY(a0, a2);
            BFLY(a1, a3);
            BFLY(a4, a6);
            BFLY(a5, a7);
            BFLY(a0, a4);
            BFLY(a1, a5);
            BFLY(a2, a6);
            BFLY(a3, a7);
            p[0] = a0;
            p[h] = a1;
            p[2 * h] = a2;
            p[3 * h] = a3;
            p[4 * h] = a4;
            p[5 * h] = a5;
            p[6 * h] = a6;
            p[7 * h] = a7;
        }
}

/* Stages h, 2h. */
TQ_AVX2 static void fwht_pass4(__m256 *v, uint32_t n, uint32_t h)
{
    for (uint32_t b = 0; b < n; b += 4 * h)
        for (uint32_t o = 0; o < h; o++) {
            __m256 *p = v + b + o;
            __m256 a0 = p[0], a1 = p[h], a2 = p[2 * h], a3 = p[3 * h];
            BFLY(a0, a1);
            BFLY(a2, a3);
            BFLY(a0, a2);
            BFLY(a1, a3);
            p[0] = a0;
            p[h] = a1;
            p[2 * h] = a2;
            p[3 * h] = a3;
        }
}

/* Stage h. */
TQ_AVX2 static void fwht_pass2(__m256 *v, uint32_t n, uint32_t h)
{
    for (uint32_t b = 0; b < n; b += 2 * h)
        for (uint32_t o = 0; o < h; o++)
            BFLY(v[b + o], v[b + o + h]);
}

/* The stages from h = 8 on (stages 1, 2, 4 were done by the caller's first pass). */
TQ_AVX2 static void fwht_rest(__m256 *v, uint32_t n)
{
    uint32_t h = 8;
    for (; 8 * h <= n; h *= 8)
        fwht_pass8(v, n, h);
    if (4 * h <= n)
        fwht_pass4(v, n, h);
    else if (2 * h <= n)
        fwht_pass2(v, n, h);
}

/* The five pairwise steps of the tree sum over 32 lane partials. */
TQ_AVX2_INL __m256 tree_finish(__m256 *L)
{
#pragma GCC unroll 5
    for (uint32_t d = 16; d >= 1; d >>= 1)
#pragma GCC unroll 16
        for (uint32_t l = 0; l < d; l++)
            L[l] = _mm256_add_ps(L[l], L[l + d]);
    return L[0];
}

TQ_AVX2_INL void tree_zero(__m256 *L)
{
#pragma GCC unroll 32
    for (uint32_t l = 0; l < 32; l++)
        L[l] = _mm256_setzero_ps();
}

/* TS(a_k * b_k) over k < n. */
TQ_AVX2_INL __m256 tree_prod(const __m256 *a, const __m256 *b, uint32_t n, __m256 *L)
{
    tree_zero(L);
    for (uint32_t k = 0; k < n; k++)
        L[k & 31] = _mm256_add_ps(L[k & 31], _mm256_mul_ps(a[k], b[k]));
    return tree_finish(L);
}

/* ---- Encode ----------------------------------------------------------------------------- */

static inline uint8_t *plane_ptr(uint8_t *rec, size_t off, uint32_t T, uint32_t i, uint32_t t0)
{
    return rec + off + 4 * ((size_t)i * T + t0);
}

/* Quantises t = W[k] * inv for k in [k0, k0 + nb) (nb = 16 or 32, one block of plane words),
 * stores the plane words, and feeds the corrected norm's tree (want_sq) or stores the centroid
 * values (want_v). M and FAST are constants after inlining. FAST: every t is known to be finite
 * (the group's sums of squares are), so t >= 0 is exactly !(t < 0) and the code is
 * (cnt ^ neg) + K/2 mod K: the K/2 is one xor of the whole word. Otherwise NaN needs its own
 * compare (it takes code 0). */
TQ_AVX2_INL void quant_block(const grp_part *g, const tq__part_layout *pl, const __m256 *W,
                             __m256 inv, uint32_t k0, uint32_t nb, uint8_t *rec, uint32_t T,
                             uint32_t t0, __m256 *L, __m256 *V, int want_sq, int want_v,
                             const uint32_t M, const int FAST)
{
    const __m256i absm = _mm256_set1_epi32(0x7fffffff);
    const __m256 zero = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi32((int)((1u << M) - 1));
    const __m256i base = _mm256_set1_epi32((int)((1u << (M - 1)) - 1));
    const __m256i three = _mm256_set1_epi32(3);
    const __m256 sgn = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000));
    /* the K/2 of every code of a word, and the 1-bit planes' complement */
    const __m256i half4 = _mm256_set1_epi32((int)0x88888888u);
    const __m256i half2 = _mm256_set1_epi32((int)0xAAAAAAAAu);
    const __m256i ones = _mm256_set1_epi32(nb == 32 ? -1 : 0xffff);
    __m256i pb[7];
    for (uint32_t i = 0; i + 1 < (1u << (M - 1)); i++)
        pb[i] = _mm256_set1_epi32(g->pb[i]);
    const __m256i two = _mm256_set1_epi32(2), four = _mm256_set1_epi32(4);
    const __m256i pbl2 = _mm256_load_si256((const __m256i *)g->pbl2);
    const __m256i pbl3 = _mm256_load_si256((const __m256i *)g->pbl3);
    const __m256 magt = _mm256_load_ps(g->mag), sqt = _mm256_load_ps(g->sq);
    __m256i w0 = _mm256_setzero_si256(), w1 = _mm256_setzero_si256();
#pragma GCC unroll 32
    for (uint32_t s = 0; s < 32; s++) {
        if (s == 16 && nb == 16) break; /* n = 16: half a block */
        const uint32_t k = k0 + s;
        __m256 t = _mm256_mul_ps(W[k], inv);
        __m256 negf = _mm256_cmp_ps(t, zero, _CMP_LT_OQ);
        __m256i neg = _mm256_castps_si256(negf);
        __m256i key = _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(t), absm), neg);
        __m256i cnt;
        if (M == 4) { /* binary search over the 7 positive boundaries */
            cnt = _mm256_and_si256(_mm256_cmpgt_epi32(key, pb[3]), four);
            __m256i m2 = _mm256_cmpgt_epi32(key, _mm256_permutevar8x32_epi32(pbl2, cnt));
            cnt = _mm256_or_si256(cnt, _mm256_and_si256(m2, two));
            cnt = _mm256_sub_epi32(cnt,
                                   _mm256_cmpgt_epi32(key, _mm256_permutevar8x32_epi32(pbl3, cnt)));
        } else if (M == 3) { /* over the 3 */
            cnt = _mm256_and_si256(_mm256_cmpgt_epi32(key, pb[1]), two);
            cnt = _mm256_sub_epi32(cnt,
                                   _mm256_cmpgt_epi32(key, _mm256_permutevar8x32_epi32(pbl3, cnt)));
        } else {
            cnt = _mm256_setzero_si256();
            for (uint32_t i = 0; i + 1 < (1u << (M - 1)); i++)
                cnt = _mm256_sub_epi32(cnt, _mm256_cmpgt_epi32(key, pb[i]));
        }
        __m256i pos = neg; /* unused when FAST */
        if (!FAST) pos = _mm256_castps_si256(_mm256_cmp_ps(t, zero, _CMP_GE_OQ));
        if (want_sq) L[k & 31] = _mm256_add_ps(L[k & 31], _mm256_permutevar8x32_ps(sqt, cnt));
        if (want_v)
            V[k] = _mm256_xor_ps(_mm256_permutevar8x32_ps(magt, cnt),
                                 FAST ? _mm256_and_ps(negf, sgn)
                                      : _mm256_andnot_ps(_mm256_castsi256_ps(pos), sgn));
        /* FAST: low bits of the code before the K/2 xor; else the code */
        __m256i c;
        if (FAST)
            c = _mm256_and_si256(_mm256_xor_si256(cnt, neg), M == 3 ? three : flip);
        else if (M == 3)
            c = _mm256_xor_si256(cnt, _mm256_andnot_si256(pos, three));
        else
            c = _mm256_xor_si256(cnt, _mm256_xor_si256(_mm256_and_si256(pos, flip), base));
        switch (M) {
        case 4:
            w0 = _mm256_or_si256(w0, _mm256_slli_epi32(c, 4 * (s & 7)));
            if ((s & 7) == 7) {
                if (FAST) w0 = _mm256_xor_si256(w0, half4);
                _mm256_storeu_si256((__m256i *)plane_ptr(rec, pl->plane_off[0], T, k / 8, t0), w0);
                w0 = _mm256_setzero_si256();
            }
            break;
        case 3:
        case 2:
            w0 = _mm256_or_si256(w0, _mm256_slli_epi32(c, 2 * (s & 15)));
            if ((s & 15) == 15) {
                if (FAST && M == 2) w0 = _mm256_xor_si256(w0, half2);
                _mm256_storeu_si256((__m256i *)plane_ptr(rec, pl->plane_off[0], T, k / 16, t0), w0);
                w0 = _mm256_setzero_si256();
            }
            if (M == 3) /* FAST: the sign bits, complemented at the end */
                w1 = _mm256_or_si256(
                    w1, _mm256_and_si256(FAST ? neg : pos, _mm256_set1_epi32((int)(1u << s))));
            break;
        default:
            w0 = _mm256_or_si256(
                w0, _mm256_and_si256(FAST ? neg : pos, _mm256_set1_epi32((int)(1u << s))));
            break;
        }
    }
    /* the words of 1-bit planes cover the whole block (n = 16: high half 0) */
    if (M == 3)
        _mm256_storeu_si256((__m256i *)plane_ptr(rec, pl->plane_off[1], T, k0 / 32, t0),
                            FAST ? _mm256_xor_si256(w1, ones) : w1);
    if (M == 1)
        _mm256_storeu_si256((__m256i *)plane_ptr(rec, pl->plane_off[0], T, k0 / 32, t0),
                            FAST ? _mm256_xor_si256(w0, ones) : w0);
}

/* Every (M, FAST, want_sq, want_v) as its own unrolled body: no test is left in the loop. */
#define QUANT_CASE(M_, F_, SQ_, V_)                                                                \
    case ((M_)-1) * 8 + (F_)*4 + (SQ_)*2 + (V_):                                                   \
        for (uint32_t k0 = 0; k0 < n; k0 += 32)                                                    \
            quant_block(g, pl, W, inv, k0, nb, rec, T, t0, L, V, SQ_, V_, M_, F_);                 \
        break;
#define QUANT_CASES(M_)                                                                            \
    QUANT_CASE(M_, 0, 0, 0)                                                                        \
    QUANT_CASE(M_, 0, 0, 1)                                                                        \
    QUANT_CASE(M_, 0, 1, 0)                                                                        \
    QUANT_CASE(M_, 0, 1, 1)                                                                        \
    QUANT_CASE(M_, 1, 0, 0)                                                                        \
    QUANT_CASE(M_, 1, 0, 1)                                                                        \
    QUANT_CASE(M_, 1, 1, 0)                                                                        \
    QUANT_CASE(M_, 1, 1, 1)

TQ_AVX2 static void quant_all(const grp_part *g, const tq__part_layout *pl, const __m256 *W,
                              __m256 inv, uint8_t *rec, uint32_t T, uint32_t t0, __m256 *L,
                              __m256 *V, int want_sq, int want_v, int fast)
{
    const uint32_t n = g->n, nb = n < 32 ? n : 32;
    switch ((g->m - 1) * 8 + (fast ? 4 : 0) + (want_sq ? 2 : 0) + (want_v ? 1 : 0)) {
        QUANT_CASES(1)
        QUANT_CASES(2)
        QUANT_CASES(3)
        QUANT_CASES(4)
    }
}

/* sigma_k = sum_j S[k][j] * rho_j (j increasing), sign bit k = sigma_k >= 0. */
TQ_AVX2 static void qjl_signs(const float *S, uint32_t n, const __m256 *R, uint8_t *rec, size_t off,
                              uint32_t T, uint32_t t0)
{
    const __m256 zero = _mm256_setzero_ps();
    for (uint32_t k0 = 0; k0 < n; k0 += 32) {
        __m256i word = _mm256_setzero_si256();
        for (uint32_t kb = k0; kb < k0 + 32 && kb < n; kb += 8) {
            __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero,
                   a7 = zero;
            const float *s = S + (size_t)kb * n;
            for (uint32_t j = 0; j < n; j++) {
                const __m256 r = R[j];
                a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_broadcast_ss(s + j), r));
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_broadcast_ss(s + n + j), r));
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_broadcast_ss(s + 2 * n + j), r));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_broadcast_ss(s + 3 * n + j), r));
                a4 = _mm256_add_ps(a4, _mm256_mul_ps(_mm256_broadcast_ss(s + 4 * n + j), r));
                a5 = _mm256_add_ps(a5, _mm256_mul_ps(_mm256_broadcast_ss(s + 5 * n + j), r));
                a6 = _mm256_add_ps(a6, _mm256_mul_ps(_mm256_broadcast_ss(s + 6 * n + j), r));
                a7 = _mm256_add_ps(a7, _mm256_mul_ps(_mm256_broadcast_ss(s + 7 * n + j), r));
            }
            const __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
#pragma GCC unroll 8
            for (uint32_t u = 0; u < 8; u++) {
                __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(acc[u], zero, _CMP_GE_OQ));
                word = _mm256_or_si256(
                    word, _mm256_and_si256(ge, _mm256_set1_epi32((int)(1u << ((kb + u) & 31)))));
            }
        }
        _mm256_storeu_si256((__m256i *)plane_ptr(rec, off, T, k0 / 32, t0), word);
    }
}

/* Encodes one part of eight tokens whose head vectors are in s->X. */
TQ_AVX2 static void encode_part(const tq__part_ctx *c, const grp_part *g, const tq__part_layout *pl,
                                const uint16_t *ch, grp_scratch *s, uint8_t *rec, uint32_t T,
                                uint32_t t0, int first_done)
{
    const uint32_t n = c->n;
    __m256 *W = s->W, *L = s->L, *V = s->V;
    /* gather, ||x||^2 lane partials, sign flip and FWHT stages 1, 2, 4 (unless load_group
     * did it on the way) */
    if (!first_done) tree_zero(L);
    for (uint32_t k = 0; k < n && !first_done; k += 8) {
        __m256 a[8];
#pragma GCC unroll 8
        for (uint32_t i = 0; i < 8; i++) {
            __m256 x = s->X[ch[k + i]];
            L[(k + i) & 31] = _mm256_add_ps(L[(k + i) & 31], _mm256_mul_ps(x, x));
            a[i] = _mm256_xor_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32((int)c->dsign[k + i])));
        }
        BFLY(a[0], a[1]);
        BFLY(a[2], a[3]);
        BFLY(a[4], a[5]);
        BFLY(a[6], a[7]);
        BFLY(a[0], a[2]);
        BFLY(a[1], a[3]);
        BFLY(a[4], a[6]);
        BFLY(a[5], a[7]);
        BFLY(a[0], a[4]);
        BFLY(a[1], a[5]);
        BFLY(a[2], a[6]);
        BFLY(a[3], a[7]);
#pragma GCC unroll 8
        for (uint32_t i = 0; i < 8; i++)
            W[k + i] = a[i];
    }
    const __m256 ss = tree_finish(L);
    fwht_rest(W, n);
    const __m256 zero = _mm256_setzero_ps();
    const __m256 norm = _mm256_sqrt_ps(ss);
    const __m256 inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), norm),
                                     _mm256_cmp_ps(norm, zero, _CMP_GT_OQ));
    const float fn = (float)n, rn = 1.0f / (float)n;
    __m256 sc = norm;
    if (c->m) {
        const int corrected = c->norm == TQ_NORM_CORRECTED;
        const int want_v = c->prod || c->norm == TQ_NORM_UNBIASED;
        if (corrected) tree_zero(L);
        const int fast =
            _mm256_movemask_ps(_mm256_cmp_ps(ss, _mm256_set1_ps(INFINITY), _CMP_LT_OQ)) == 0xff;
        quant_all(g, pl, W, inv, rec, T, t0, L, V, corrected, want_v, fast);
        if (corrected) {
            __m256 q = tree_finish(L);
            sc = _mm256_div_ps(norm, _mm256_sqrt_ps(_mm256_mul_ps(q, _mm256_set1_ps(rn))));
        } else if (c->norm == TQ_NORM_UNBIASED) {
            __m256 dot = tree_prod(W, V, n, L);
            __m256 u = _mm256_div_ps(_mm256_mul_ps(ss, _mm256_set1_ps(fn)), dot);
            sc = _mm256_blendv_ps(norm, u, _mm256_cmp_ps(dot, zero, _CMP_GT_OQ));
        }
    }
    const __m128i sc16 = _mm256_cvtps_ph(sc, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(rec + pl->scale_off + 2 * (size_t)t0), sc16);
    if (!c->prod) return;
    /* residual into V */
    if (c->m) {
        const __m256 s16 = _mm256_cvtph_ps(sc16);
        for (uint32_t k = 0; k < n; k++)
            V[k] = _mm256_sub_ps(W[k], _mm256_mul_ps(s16, V[k]));
    } else {
        for (uint32_t k = 0; k < n; k++)
            V[k] = W[k];
    }
    __m256 g2 = tree_prod(V, V, n, L);
    __m256 gam = _mm256_sqrt_ps(_mm256_mul_ps(g2, _mm256_set1_ps(rn)));
    _mm_storeu_si128((__m128i *)(rec + pl->gamma_off + 2 * (size_t)t0),
                     _mm256_cvtps_ph(gam, _MM_FROUND_TO_NEAREST_INT));
    qjl_signs(c->S, n, V, rec, pl->signs_off, T, t0);
}

TQ_AVX2 static void quant_test(const grp_part *g, const tq__part_layout *pl, const float *t,
                               uint8_t *rec, grp_scratch *s)
{
    for (uint32_t k = 0; k < g->n; k++)
        s->W[k] = _mm256_loadu_ps(t + 8 * (size_t)k);
    int fast = 1;
    for (uint32_t i = 0; i < 8 * g->n; i++)
        fast &= isfinite(t[i]) != 0;
    quant_all(g, pl, s->W, _mm256_set1_ps(1.0f), rec, 8, 0, s->L, s->V, 0, 0, fast);
}

/* Identity channel lists (parts without outliers). */
static void identity_channels(grp_scratch *s)
{
    for (uint32_t p = 0; p < 2; p++)
        for (uint32_t j = 0; j < TQ_MAX_HEAD_DIM; j++)
            s->ident[p * TQ_MAX_HEAD_DIM + j] = (uint16_t)j;
}

/* The kernels' tables of every part and the scratch. @return NULL when not supported. */
static grp_scratch *group_begin(const tq__part_ctx *ctx, const tq__layout *L, uint32_t head_dim,
                                grp_part *g)
{
    if (head_dim % 8 || L->T < 8) return NULL;
    for (uint32_t p = 0; p < L->n_parts; p++)
        if (!grp_part_init(&ctx[p], &g[p])) return NULL;
    grp_scratch *s = tqkv_aligned_alloc(64, sizeof(*s));
    if (s) identity_channels(s);
    return s;
}

TQ_AVX2 uint32_t tqkv__encode_section_avx2(const tq__part_ctx *ctx, const tq__layout *L,
                                           const uint16_t *chs, const tq_kv_view *src,
                                           uint32_t n_kv_heads, uint32_t head_dim, uint8_t *dst)
{
    grp_part g[2];
    grp_scratch *s = group_begin(ctx, L, head_dim, g);
    if (!s) return 0;
    const uint32_t T = L->T, T8 = T & ~7u;
    for (uint32_t t0 = 0; t0 < T8; t0 += 8)
        for (uint32_t h = 0; h < n_kv_heads; h++) {
            uint8_t *rec = dst + (size_t)h * L->record_size;
            const uint16_t *ch = chs ? chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM : s->ident;
            if (!chs) /* one part: its first pass on the way in */
                tree_zero(s->L);
            load_group(src, T, t0, h, head_dim, L->P, s->X, chs ? NULL : ctx[0].dsign, s->L, s->W);
            for (uint32_t p = 0; p < L->n_parts; p++)
                encode_part(&ctx[p], &g[p], &L->part[p], ch + p * TQ_MAX_HEAD_DIM, s, rec, T, t0,
                            !chs);
        }
    tqkv_aligned_free(s);
    return T8;
}

/* ---- Decode ----------------------------------------------------------------------------- */

TQ_AVX2_INL __m256i plane_load(const uint8_t *rec, size_t off, uint32_t T, uint32_t i, uint32_t t0)
{
    return _mm256_loadu_si256((const __m256i *)(rec + off + 4 * ((size_t)i * T + t0)));
}

/* Centroid values of coordinates [k0, k0 + nb) into Z (M constant after inlining). */
TQ_AVX2_INL void dequant_block(const grp_part *g, const tq__part_layout *pl, const uint8_t *rec,
                               uint32_t T, uint32_t t0, uint32_t k0, uint32_t nb, __m256 sc,
                               __m256 *Z, const uint32_t M, const int FW)
{
    __m256 a[8];
    const __m256 d0 = _mm256_load_ps(g->dec0), d1 = _mm256_load_ps(g->dec1);
    __m256i w0 = _mm256_setzero_si256(), w1 = _mm256_setzero_si256();
    if (M == 3) w1 = plane_load(rec, pl->plane_off[1], T, k0 / 32, t0);
    if (M == 1) w1 = plane_load(rec, pl->plane_off[0], T, k0 / 32, t0);
#pragma GCC unroll 32
    for (uint32_t s = 0; s < 32; s++) {
        if (s == 16 && nb == 16) break;
        const uint32_t k = k0 + s;
        __m256 v;
        switch (M) {
        case 4: {
            if ((s & 7) == 0) w0 = plane_load(rec, pl->plane_off[0], T, k / 8, t0);
            __m256i idx = _mm256_srli_epi32(w0, 4 * (s & 7));
            __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 28 - 4 * (s & 7)));
            v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(d0, idx),
                                 _mm256_permutevar8x32_ps(d1, idx), sel);
            break;
        }
        case 3: {
            if ((s & 15) == 0) w0 = plane_load(rec, pl->plane_off[0], T, k / 16, t0);
            __m256i idx = _mm256_srli_epi32(w0, 2 * (s & 15));
            __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 31 - s));
            v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(d0, idx),
                                 _mm256_permutevar8x32_ps(d1, idx), sel);
            break;
        }
        case 2: {
            if ((s & 15) == 0) w0 = plane_load(rec, pl->plane_off[0], T, k / 16, t0);
            v = _mm256_permutevar8x32_ps(d0, _mm256_srli_epi32(w0, 2 * (s & 15)));
            break;
        }
        default: {
            __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 31 - s));
            v = _mm256_blendv_ps(d0, d1, sel);
            break;
        }
        }
        a[s & 7] = _mm256_mul_ps(sc, v);
        if ((s & 7) == 7) { /* FW: the FWHT's stages 1, 2, 4 on the way */
            if (FW) {
                BFLY(a[0], a[1]);
                BFLY(a[2], a[3]);
                BFLY(a[4], a[5]);
                BFLY(a[6], a[7]);
                BFLY(a[0], a[2]);
                BFLY(a[1], a[3]);
                BFLY(a[4], a[6]);
                BFLY(a[5], a[7]);
                BFLY(a[0], a[4]);
                BFLY(a[1], a[5]);
                BFLY(a[2], a[6]);
                BFLY(a[3], a[7]);
            }
#pragma GCC unroll 8
            for (uint32_t i = 0; i < 8; i++)
                Z[k - 7 + i] = a[i];
        }
    }
}

/* acc_k = sum_j (+-1)_j * S[j][k] (j increasing); Z[k] += coef * acc_k. F holds the sign flips. */
TQ_AVX2 static void qjl_add(const float *S, uint32_t n, const uint8_t *rec, size_t off, uint32_t T,
                            uint32_t t0, __m256 coef, __m256 *F, __m256 *Z)
{
    const __m256i sgn = _mm256_set1_epi32((int)0x80000000);
    for (uint32_t j0 = 0; j0 < n; j0 += 32) {
        __m256i w = plane_load(rec, off, T, j0 / 32, t0);
#pragma GCC unroll 32
        for (uint32_t s = 0; s < 32; s++) { /* bit clear: -1, flip the sign */
            if (j0 + s >= n) break;
            F[j0 + s] =
                _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_slli_epi32(w, (int)(31 - s)), sgn));
        }
    }
    const __m256 zero = _mm256_setzero_ps();
    for (uint32_t kb = 0; kb < n; kb += 8) {
        __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero,
               a7 = zero;
        for (uint32_t j = 0; j < n; j++) {
            const float *row = S + (size_t)j * n + kb;
            const __m256 f = F[j];
            a0 = _mm256_add_ps(a0, _mm256_xor_ps(_mm256_broadcast_ss(row + 0), f));
            a1 = _mm256_add_ps(a1, _mm256_xor_ps(_mm256_broadcast_ss(row + 1), f));
            a2 = _mm256_add_ps(a2, _mm256_xor_ps(_mm256_broadcast_ss(row + 2), f));
            a3 = _mm256_add_ps(a3, _mm256_xor_ps(_mm256_broadcast_ss(row + 3), f));
            a4 = _mm256_add_ps(a4, _mm256_xor_ps(_mm256_broadcast_ss(row + 4), f));
            a5 = _mm256_add_ps(a5, _mm256_xor_ps(_mm256_broadcast_ss(row + 5), f));
            a6 = _mm256_add_ps(a6, _mm256_xor_ps(_mm256_broadcast_ss(row + 6), f));
            a7 = _mm256_add_ps(a7, _mm256_xor_ps(_mm256_broadcast_ss(row + 7), f));
        }
        const __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
#pragma GCC unroll 8
        for (uint32_t u = 0; u < 8; u++)
            Z[kb + u] = _mm256_add_ps(Z[kb + u], _mm256_mul_ps(coef, acc[u]));
    }
}

/* Decodes one part of eight tokens into s->X (scattered to the part's channels). */
TQ_AVX2 static void decode_part(const tq__part_ctx *c, const grp_part *g, const tq__part_layout *pl,
                                const uint16_t *ch, grp_scratch *s, const uint8_t *rec, uint32_t T,
                                uint32_t t0)
{
    const uint32_t n = c->n, nb = n < 32 ? n : 32;
    __m256 *Z = s->W;
    const __m256 sc =
        _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + pl->scale_off + 2 * (size_t)t0)));
    const int fw = !c->prod; /* prod adds the QJL term before the FWHT */
    for (uint32_t k0 = 0; k0 < n; k0 += 32) {
        switch (c->m * 2 + fw) {
        case 9:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 4, 1);
            break;
        case 8:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 4, 0);
            break;
        case 7:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 3, 1);
            break;
        case 6:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 3, 0);
            break;
        case 5:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 2, 1);
            break;
        case 4:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 2, 0);
            break;
        case 3:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 1, 1);
            break;
        case 2:
            dequant_block(g, pl, rec, T, t0, k0, nb, sc, Z, 1, 0);
            break;
        default: /* m = 0 is prod only */
            for (uint32_t k = k0; k < k0 + nb; k++)
                Z[k] = _mm256_setzero_ps();
            break;
        }
    }
    if (c->prod) {
        const __m256 gam = _mm256_cvtph_ps(
            _mm_loadu_si128((const __m128i *)(rec + pl->gamma_off + 2 * (size_t)t0)));
        const __m256 coef =
            _mm256_mul_ps(gam, _mm256_set1_ps((float)(1.2533141373155002512 / sqrt((double)n))));
        qjl_add(c->S, n, rec, pl->signs_off, T, t0, coef, s->V, Z);
        fwht_pass8(Z, n, 1);
    }
    fwht_rest(Z, n);
    if (ch == s->ident) return; /* store_group scales and flips on its way out */
    const __m256 f = _mm256_set1_ps(1.0f / (float)n);
    for (uint32_t k = 0; k < n; k++)
        s->X[ch[k]] = _mm256_xor_ps(_mm256_mul_ps(Z[k], f),
                                    _mm256_castsi256_ps(_mm256_set1_epi32((int)c->dsign[k])));
}

/* Prefetches (into L2) the plane words, scales and gammas of tokens t..t+15 of a part: one
 * cache line per word row, so every other group of eight asks. */
TQ_AVX2 static void prefetch_part(const uint8_t *rec, const tq__part_layout *pl, uint32_t T,
                                  uint32_t t)
{
    for (uint32_t q = 0; q < pl->n_planes; q++)
        for (uint32_t i = 0; i < pl->plane_words[q]; i++)
            _mm_prefetch((const char *)rec + pl->plane_off[q] + 4 * ((size_t)i * T + t),
                         _MM_HINT_T1);
    for (uint32_t i = 0; pl->prod && i < pl->sign_words; i++)
        _mm_prefetch((const char *)rec + pl->signs_off + 4 * ((size_t)i * T + t), _MM_HINT_T1);
    _mm_prefetch((const char *)rec + pl->scale_off + 2 * (size_t)t, _MM_HINT_T1);
    if (pl->prod) _mm_prefetch((const char *)rec + pl->gamma_off + 2 * (size_t)t, _MM_HINT_T1);
}

TQ_AVX2 uint32_t tqkv__decode_section_avx2(const tq__part_ctx *ctx, const tq__layout *L,
                                           const uint16_t *chs, const uint8_t *sec,
                                           uint32_t n_kv_heads, uint32_t head_dim,
                                           tq_dtype out_dtype, void *dst)
{
    grp_part g[2];
    grp_scratch *s = group_begin(ctx, L, head_dim, g);
    if (!s) return 0;
    const uint32_t T = L->T, T8 = T & ~7u;
    const size_t row = (size_t)n_kv_heads * head_dim;
    for (uint32_t t0 = 0; t0 < T8; t0 += 8)
        for (uint32_t h = 0; h < n_kv_heads; h++) {
            const uint8_t *rec = sec + (size_t)h * L->record_size;
            const uint16_t *ch = chs ? chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM : s->ident;
            if (t0 % 16 == 0 && t0 + 32 <= T8)
                for (uint32_t p = 0; p < L->n_parts; p++)
                    prefetch_part(rec, &L->part[p], T, t0 + 16);
            for (uint32_t p = 0; p < L->n_parts; p++)
                decode_part(&ctx[p], &g[p], &L->part[p], ch + p * TQ_MAX_HEAD_DIM, s, rec, T, t0);
            if (chs)
                store_group(s->X, NULL, _mm256_setzero_ps(), head_dim, out_dtype, dst,
                            (size_t)t0 * row + (size_t)h * head_dim, row);
            else
                store_group(s->W, ctx[0].dsign, _mm256_set1_ps(1.0f / (float)ctx[0].n), head_dim,
                            out_dtype, dst, (size_t)t0 * row + (size_t)h * head_dim, row);
        }
    tqkv_aligned_free(s);
    return T8;
}

/* E[j] = E[j] + x[j] * x[j] for head h of token t, j < head_dim (a multiple of 8), non-finite
 * x read as 0: the outlier energies, vertically over channels, each channel's sum still
 * sequential over tokens. */
TQ_AVX2 void tqkv__energy_add_avx2(const tq_kv_view *v, uint32_t t, uint32_t h, uint32_t head_dim,
                                   float *E)
{
    const size_t es = tq_dtype_size((tq_dtype)v->dtype);
    const uint8_t *row = (const uint8_t *)v->data + view_index(v, t, h) * (int64_t)es;
    const __m256i expm = _mm256_set1_epi32(0x7f800000);
    for (uint32_t j = 0; j < head_dim; j += 8) {
        __m256 x;
        if (v->dtype == TQ_DTYPE_F32)
            x = _mm256_loadu_ps((const float *)(const void *)row + j);
        else
            x = half8_to_ps(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)j)),
                            v->dtype == TQ_DTYPE_BF16);
        __m256i bad = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x), expm), expm);
        x = _mm256_andnot_ps(_mm256_castsi256_ps(bad), x);
        _mm256_storeu_ps(E + j, _mm256_add_ps(_mm256_loadu_ps(E + j), _mm256_mul_ps(x, x)));
    }
}

/* float row -> bf16 (as tq__f32_to_bf16), n a multiple of 8. */
TQ_AVX2 void tqkv__bf16_store_avx2(const float *src, uint32_t n, uint16_t *dst)
{
    for (uint32_t j = 0; j < n; j += 8) {
        __m256i b = ps_to_bf16(_mm256_loadu_ps(src + j));
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);
        _mm_storeu_si128((__m128i *)(dst + j), _mm256_castsi256_si128(p));
    }
}

TQ_AVX2 void tqkv__bf16_widen_avx2(const uint16_t *src, uint32_t n, tq_dtype out_dtype,
                                   uint8_t *dst)
{
    for (uint32_t j = 0; j < n; j += 8) {
        __m256 f = half8_to_ps(_mm_loadu_si128((const __m128i *)(src + j)), 1);
        if (out_dtype == TQ_DTYPE_F32)
            _mm256_storeu_ps((float *)(void *)dst + j, f);
        else
            _mm_storeu_si128((__m128i *)(void *)(dst + 2 * (size_t)j),
                             _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
    }
}

/* Test hook: codes of t[k * 8 + lane] (k < n, eight lanes) through the encoder's quantiser,
 * written as the plane words of a record of T = 8 tokens. @return 0, or TQKV_ENOTSUP. */
int tqkv__quant_group_avx2(const tq__part_ctx *c, const tq__part_layout *pl, const float *t,
                           uint8_t *rec)
{
    grp_part g;
    if (!c->m || !grp_part_init(c, &g)) return TQKV_ENOTSUP;
    grp_scratch *s = tqkv_aligned_alloc(64, sizeof(*s));
    if (!s) return TQKV_ENOMEM;
    quant_test(&g, pl, t, rec, s);
    tqkv_aligned_free(s);
    return 0;
}

#endif
