/* The section codec of libtq on the CPU: the scalar reference of the per-vector kernels (the
 * arithmetic of FORMAT.md, "Reference arithmetic", in exactly that order), code packing into the
 * word-major bit planes, outlier selection, and tq_encode_section / tq_decode_section over all
 * heads and tokens of one tensor of one layer. With AVX2, whole groups of eight tokens go
 * through the vertical section kernels (avx2_group.c) and the remaining tokens through the AVX2
 * per-vector kernels (avx2.c), drop-in replacements of the two scalar functions; all of them
 * must produce identical bytes. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "tq_internal.h"
#include "tqkv_alloc.h"
#include "tqkv_endian.h"

/* ---- Reference arithmetic ------------------------------------------------------------------ */

void tqkv__fwht_scalar(float *v, uint32_t n)
{
    for (uint32_t h = 1; h < n; h <<= 1)
        for (uint32_t i = 0; i < n; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

static float tree_finish(float *a)
{
    for (uint32_t off = 16; off >= 1; off >>= 1)
        for (uint32_t l = 0; l < off; l++)
            a[l] = a[l] + a[l + off];
    return a[0];
}

float tqkv__tree_sum_sq(const float *v, uint32_t n)
{
    float a[32] = {0};
    for (uint32_t k = 0; k < n; k++) {
        float p = v[k] * v[k];
        a[k & 31] = a[k & 31] + p;
    }
    return tree_finish(a);
}

float tqkv__tree_sum_prod(const float *x, const float *y, uint32_t n)
{
    float a[32] = {0};
    for (uint32_t k = 0; k < n; k++) {
        float p = x[k] * y[k];
        a[k & 31] = a[k & 31] + p;
    }
    return tree_finish(a);
}

void tqkv__encode_vec_scalar(const tq__part_ctx *c, const float *x, uint8_t *codes,
                             uint16_t *scale, uint16_t *gamma, uint32_t *signs)
{
    const uint32_t n = c->n, m = c->m;
    float w[TQ_MAX_HEAD_DIM], cv[TQ_MAX_HEAD_DIM];
    for (uint32_t k = 0; k < n; k++)
        w[k] = tq__bits_f32(tq__f32_bits(x[k]) ^ c->dsign[k]);
    tqkv__fwht_scalar(w, n);
    float ss = tqkv__tree_sum_sq(x, n);
    float norm = sqrtf(ss);
    float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
    float sc = norm;
    if (m) {
        uint32_t nb = (1u << m) - 1;
        for (uint32_t k = 0; k < n; k++) {
            float t = w[k] * inv;
            uint32_t code = 0;
            for (uint32_t j = 0; j < nb; j++)
                code += t >= c->bnd[j];
            codes[k] = (uint8_t)code;
            cv[k] = c->cent[code];
        }
        if (c->norm == TQ_NORM_CORRECTED) {
            float q = tqkv__tree_sum_sq(cv, n);
            sc = norm / sqrtf(q * (1.0f / (float)n));
        } else if (c->norm == TQ_NORM_UNBIASED) {
            float dot = tqkv__tree_sum_prod(w, cv, n);
            if (dot > 0.0f)
                sc = (ss * (float)n) / dot;
        }
    } else {
        memset(codes, 0, n);
    }
    *scale = tq__f32_to_f16(sc);
    if (!c->prod)
        return;
    float s16 = tq__f16_to_f32(*scale), rho[TQ_MAX_HEAD_DIM];
    for (uint32_t k = 0; k < n; k++) {
        if (m) {
            float p = s16 * cv[k];
            rho[k] = w[k] - p;
        } else {
            rho[k] = w[k];
        }
    }
    *gamma = tq__f32_to_f16(sqrtf(tqkv__tree_sum_sq(rho, n) * (1.0f / (float)n)));
    for (uint32_t i = 0; i < (n + 31) / 32; i++)
        signs[i] = 0;
    for (uint32_t k = 0; k < n; k++) {
        const float *row = c->S + (size_t)k * n;
        float acc = 0.0f;
        for (uint32_t j = 0; j < n; j++) {
            float p = row[j] * rho[j];
            acc = acc + p;
        }
        if (acc >= 0.0f)
            signs[k >> 5] |= 1u << (k & 31);
    }
}

/* sqrt(pi/2) */
#define TQ_SQRT_HALF_PI 1.2533141373155002512

void tqkv__decode_vec_scalar(const tq__part_ctx *c, const uint8_t *codes, uint16_t scale,
                             uint16_t gamma, const uint32_t *signs, float *out)
{
    const uint32_t n = c->n;
    float z[TQ_MAX_HEAD_DIM];
    float s = tq__f16_to_f32(scale);
    for (uint32_t k = 0; k < n; k++)
        z[k] = c->m ? s * c->cent[codes[k]] : 0.0f;
    if (c->prod) {
        float coef = tq__f16_to_f32(gamma) * (float)(TQ_SQRT_HALF_PI / sqrt((double)n));
        float acc[TQ_MAX_HEAD_DIM] = {0};
        for (uint32_t j = 0; j < n; j++) {
            float sg = (signs[j >> 5] >> (j & 31)) & 1 ? 1.0f : -1.0f;
            const float *row = c->S + (size_t)j * n;
            for (uint32_t k = 0; k < n; k++)
                acc[k] += sg * row[k];
        }
        for (uint32_t k = 0; k < n; k++)
            z[k] = z[k] + coef * acc[k];
    }
    tqkv__fwht_scalar(z, n);
    float f = 1.0f / (float)n;
    for (uint32_t k = 0; k < n; k++)
        out[k] = tq__bits_f32(tq__f32_bits(z[k] * f) ^ c->dsign[k]);
}

/* ---- Planes ----------------------------------------------------------------------------- */

static void pack_plane(const uint8_t *codes, uint32_t n, uint32_t w, uint32_t shift,
                       uint32_t *words)
{
    uint32_t nw = (n * w + 31) / 32, mask = (1u << w) - 1;
    for (uint32_t i = 0; i < nw; i++)
        words[i] = 0;
    for (uint32_t k = 0; k < n; k++)
        words[(k * w) >> 5] |= (uint32_t)((codes[k] >> shift) & mask) << ((k * w) & 31);
}

void tqkv__pack_codes(const uint8_t *codes, uint32_t n, uint32_t m, uint32_t *w0, uint32_t *w1)
{
    if (m == 3) {
        pack_plane(codes, n, 2, 0, w0);
        pack_plane(codes, n, 1, 2, w1);
    } else if (m) {
        pack_plane(codes, n, m, 0, w0);
    }
}

void tqkv__unpack_codes(const uint32_t *w0, const uint32_t *w1, uint32_t n, uint32_t m,
                        uint8_t *codes)
{
    if (m == 3) {
        for (uint32_t k = 0; k < n; k++)
            codes[k] = (uint8_t)(((w0[k >> 4] >> ((k & 15) * 2)) & 3) |
                                 (((w1[k >> 5] >> (k & 31)) & 1) << 2));
    } else if (m) {
        uint32_t mask = (1u << m) - 1;
        for (uint32_t k = 0; k < n; k++)
            codes[k] = (uint8_t)((w0[(k * m) >> 5] >> ((k * m) & 31)) & mask);
    }
}

/* ---- Implementation selection ----------------------------------------------------------- */

static atomic_int g_impl = TQ_IMPL_AUTO;

int tq_set_cpu_impl(tq_impl impl)
{
    switch (impl) {
    case TQ_IMPL_AUTO:
    case TQ_IMPL_SCALAR:
        break;
    case TQ_IMPL_AVX2:
#if defined(__x86_64__)
        if (!tqkv__cpu_has_avx2())
            return TQKV_ENOTSUP;
        break;
#else
        return TQKV_ENOTSUP;
#endif
    default:
        return TQKV_EINVAL;
    }
    atomic_store(&g_impl, impl);
    return 0;
}

tq_impl tq_get_cpu_impl(void)
{
    tq_impl i = (tq_impl)atomic_load(&g_impl);
#if defined(__x86_64__)
    if (i == TQ_IMPL_AUTO)
        return tqkv__cpu_has_avx2() ? TQ_IMPL_AVX2 : TQ_IMPL_SCALAR;
    return i;
#else
    return TQ_IMPL_SCALAR;
#endif
}

tq__encode_vec_fn tqkv__encode_vec(void)
{
#if defined(__x86_64__)
    if (tq_get_cpu_impl() == TQ_IMPL_AVX2)
        return tqkv__encode_vec_avx2;
#endif
    return tqkv__encode_vec_scalar;
}

tq__decode_vec_fn tqkv__decode_vec(void)
{
#if defined(__x86_64__)
    if (tq_get_cpu_impl() == TQ_IMPL_AVX2)
        return tqkv__decode_vec_avx2;
#endif
    return tqkv__decode_vec_scalar;
}

void tqkv__kernels(tq__kernels *k)
{
    k->avx2 = 0;
    k->encode_vec = tqkv__encode_vec_scalar;
    k->decode_vec = tqkv__decode_vec_scalar;
    k->pack = tqkv__pack_codes;
    k->unpack = tqkv__unpack_codes;
#if defined(__x86_64__)
    if (tq_get_cpu_impl() == TQ_IMPL_AVX2) {
        k->avx2 = 1;
        k->encode_vec = tqkv__encode_vec_avx2;
        k->decode_vec = tqkv__decode_vec_avx2;
        k->pack = tqkv__pack_codes_bmi2;
        k->unpack = tqkv__unpack_codes_bmi2;
    }
#endif
}

/* ---- Part contexts ---------------------------------------------------------------------- */

int tqkv__part_ctx_init(tq__part_ctx *c, const tq__part_layout *pl, uint32_t part_index,
                        uint32_t norm, uint64_t seed, tq_codebook_kind cb)
{
    c->n = pl->n;
    c->m = pl->m;
    c->prod = pl->prod;
    c->norm = norm;
    c->cent = NULL;
    c->S = c->St = NULL;
    if (c->m) {
        c->cent = tq_codebook(cb, c->n, c->m);
        if (!c->cent)
            return TQKV_EINVAL;
        for (uint32_t j = 0; j + 1 < (1u << c->m); j++)
            c->bnd[j] = (c->cent[j] + c->cent[j + 1]) * 0.5f;
    }
    tqkv__rotation_signs(seed, c->n, part_index, c->dsign);
    if (c->prod) {
        tq__qjl q;
        int rc = tqkv__qjl_get(seed, c->n, part_index, &q);
        if (rc)
            return rc;
        c->S = q.S;
        c->St = q.St;
    }
    return 0;
}

/* ---- Outliers --------------------------------------------------------------------------- */

typedef struct {
    float e;
    uint32_t j;
} tq__energy;

/* Larger energy first, then lower index: the order of the rule below. */
static int energy_cmp(const void *a, const void *b)
{
    const tq__energy *x = a, *y = b;
    if (x->e != y->e)
        return x->e > y->e ? -1 : 1;
    return x->j < y->j ? -1 : x->j > y->j;
}

/* Marks the n_out channels of largest energy (ties: lower index) in mask[P/32]. */
static void choose_outliers(const float *E, uint32_t P, uint32_t n_out, uint32_t *mask)
{
    for (uint32_t i = 0; i < P / 32; i++)
        mask[i] = 0;
    /* the first n_out of the channels sorted by (E descending, index ascending); sums of squares
     * of finite values are never NaN, so the order is total (the rank loop is kept for NaN) */
    tq__energy order[TQ_MAX_HEAD_DIM];
    int nan = 0;
    for (uint32_t j = 0; j < P; j++) {
        order[j].e = E[j];
        order[j].j = j;
        nan |= E[j] != E[j];
    }
    if (!nan) {
        qsort(order, P, sizeof(order[0]), energy_cmp);
        for (uint32_t i = 0; i < n_out; i++)
            mask[order[i].j >> 5] |= 1u << (order[i].j & 31);
        return;
    }
    for (uint32_t j = 0; j < P; j++) {
        uint32_t rank = 0;
        for (uint32_t i = 0; i < P; i++)
            rank += E[i] > E[j] || (E[i] == E[j] && i < j);
        if (rank < n_out)
            mask[j >> 5] |= 1u << (j & 31);
    }
}

/* Channel lists of the parts from a mask; @return 0, or TQKV_EBADMASK if the mask does not
 * have exactly n_out bits (a malicious block). */
static int split_channels(const uint32_t *mask, uint32_t P, uint32_t n_out, uint16_t *ch0,
                          uint16_t *ch1)
{
    uint32_t a = 0, b = 0;
    for (uint32_t j = 0; j < P; j++) {
        if ((mask[j >> 5] >> (j & 31)) & 1) {
            if (a == n_out)
                return TQKV_EBADMASK;
            ch0[a++] = (uint16_t)j;
        } else {
            if (b == P - n_out)
                return TQKV_EBADMASK;
            ch1[b++] = (uint16_t)j;
        }
    }
    return a == n_out ? 0 : TQKV_EBADMASK;
}

/* ---- Sections --------------------------------------------------------------------------- */

static inline void store_plane_word(uint8_t *rec, size_t off, uint32_t T, uint32_t i,
                                    uint32_t t, uint32_t v)
{
    tqkv_store_le32(rec + off + 4 * ((size_t)i * T + t), v);
}

static inline uint32_t load_plane_word(const uint8_t *rec, size_t off, uint32_t T, uint32_t i,
                                       uint32_t t)
{
    return tqkv_load_le32(rec + off + 4 * ((size_t)i * T + t));
}

static int check_common(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                        uint32_t n_tokens, tq_codebook_kind cb, size_t *sec_size)
{
    if (cb != TQ_CODEBOOK_EXACT && cb != TQ_CODEBOOK_GAUSSIAN)
        return TQKV_EBADCODEC;
    if (tq_recipe_validate(r, head_dim))
        return TQKV_EBADCODEC;
    *sec_size = tq_section_size(r, head_dim, n_kv_heads, n_tokens);
    if (!*sec_size)
        return TQKV_EBADGEOMETRY;
    return 0;
}

/* Whether 16-bit values may be copied as bytes (the format is little-endian). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define TQ_LE_HOST 1
#else
#define TQ_LE_HOST 0
#endif

static int encode_raw(const tq__kernels *kern, const tq__layout *L, uint32_t head_dim,
                      uint32_t n_kv_heads, uint8_t raw_dtype, const tq_kv_view *src,
                      uint8_t *dst)
{
    _Alignas(32) float x[TQ_MAX_HEAD_DIM];
    /* token-major: the source is [token][head][dim] */
    for (uint32_t t = 0; t < L->T; t++)
        for (uint32_t h = 0; h < n_kv_heads; h++) {
            uint8_t *row = dst + (size_t)h * L->record_size + (size_t)t * L->P * 2;
            if (src->dtype == raw_dtype) {
                /* lossless: copy the 16-bit patterns as they are (NaN and Inf included) */
                const uint16_t *p = (const uint16_t *)src->data;
                int64_t base;
                if (!src->pages)
                    base = (int64_t)t * src->token_stride + (int64_t)h * src->head_stride;
                else {
                    uint64_t pt = (uint64_t)t + src->page_offset;
                    base = (int64_t)src->pages[pt / src->page_size] * src->page_stride +
                           (int64_t)(pt % src->page_size) * src->token_stride +
                           (int64_t)h * src->head_stride;
                }
                if (TQ_LE_HOST)
                    memcpy(row, p + base, (size_t)head_dim * 2);
                else
                    for (uint32_t j = 0; j < head_dim; j++)
                        tqkv_store_le16(row + 2 * j, p[base + j]);
                continue;
            }
            tqkv__view_read_head_k(kern, src, t, h, head_dim, x);
#if defined(__x86_64__)
            if (kern->avx2 && TQ_LE_HOST && head_dim % 8 == 0) {
                if (raw_dtype == TQ_DTYPE_F16) /* x is finite: vcvtps2ph rounds as the scalar */
                    tqkv__f16_store_avx2(x, head_dim, (uint16_t *)(void *)row);
                else
                    tqkv__bf16_store_avx2(x, head_dim, (uint16_t *)(void *)row);
                continue;
            }
#endif
            for (uint32_t j = 0; j < head_dim; j++)
                tqkv_store_le16(row + 2 * j, raw_dtype == TQ_DTYPE_F16 ? tq__f32_to_f16(x[j])
                                                                      : tq__f32_to_bf16(x[j]));
        }
    return 0;
}

/* Zeroes the bytes of a section that the encoder does not write: the fp16 padding of scale and
 * gamma rows when T is odd, and raw rows' channels head_dim..P-1. Everything else (masks,
 * scales, gammas, every plane word of every token) is written by the encoder, so the section is
 * not cleared as a whole first (that wrote every byte twice). test_tq_codec checks it. */
static void zero_unwritten(const tq__layout *L, uint32_t head_dim, uint32_t n_kv_heads,
                           uint8_t *dst)
{
    for (uint32_t h = 0; h < n_kv_heads; h++) {
        uint8_t *rec = dst + (size_t)h * L->record_size;
        if (L->raw) {
            if (head_dim < L->P)
                for (uint32_t t = 0; t < L->T; t++)
                    memset(rec + ((size_t)t * L->P + head_dim) * 2, 0,
                           (size_t)(L->P - head_dim) * 2);
            continue;
        }
        if (!(L->T & 1)) continue;
        for (uint32_t p = 0; p < L->n_parts; p++) {
            tqkv_store_le16(rec + L->part[p].scale_off + 2 * (size_t)L->T, 0);
            if (L->part[p].prod) tqkv_store_le16(rec + L->part[p].gamma_off + 2 * (size_t)L->T, 0);
        }
    }
}

/* Outlier masks of every head (written to the records) and the part channel lists chs
 * ([n_kv_heads][2][TQ_MAX_HEAD_DIM]). The energies are summed token by token over all heads, so
 * that the input is read in its own order; each channel's sum is still sequential over tokens
 * (FORMAT.md). @return 0 or TQKV_ENOMEM. */
static int encode_masks(const tq__kernels *kern, const tq_recipe *r, const tq__layout *L,
                        uint32_t head_dim, uint32_t n_kv_heads, const tq_kv_view *src,
                        uint8_t *dst, uint16_t *chs)
{
    const uint32_t P = L->P;
    float *E = tqkv_calloc((size_t)n_kv_heads * P, sizeof(float));
    if (!E)
        return TQKV_ENOMEM;
    _Alignas(32) float x[TQ_MAX_HEAD_DIM];
    for (uint32_t t = 0; t < L->T; t++)
        for (uint32_t h = 0; h < n_kv_heads; h++) {
            float *Eh = E + (size_t)h * P;
#if defined(__x86_64__)
            if (kern->avx2 && head_dim % 8 == 0) {
                tqkv__energy_add_avx2(src, t, h, head_dim, Eh);
                continue;
            }
#endif
            tqkv__view_read_head(src, t, h, head_dim, x);
            for (uint32_t j = 0; j < head_dim; j++) {
                float e = x[j] * x[j];
                Eh[j] = Eh[j] + e;
            }
        }
    for (uint32_t h = 0; h < n_kv_heads; h++) {
        uint8_t *rec = dst + (size_t)h * L->record_size;
        uint16_t *ch = chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM;
        uint32_t mask[TQ_MAX_HEAD_DIM / 32];
        choose_outliers(E + (size_t)h * P, P, r->n_out, mask);
        for (uint32_t i = 0; i < L->mask_words; i++)
            tqkv_store_le32(rec + 4 * i, mask[i]);
        split_channels(mask, P, r->n_out, ch, ch + TQ_MAX_HEAD_DIM);
    }
    tqkv_free(E);
    return 0;
}

int tq_encode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb, const tq_kv_view *src,
                      void *dst, size_t dst_cap)
{
    size_t sec_size;
    if (!src || !dst || !src->data)
        return TQKV_EINVAL;
    if (!tq_dtype_size((tq_dtype)src->dtype))
        return TQKV_EBADDTYPE;
    if (src->pages && src->page_size == 0)
        return TQKV_EINVAL;
    int rc = check_common(r, head_dim, n_kv_heads, n_tokens, cb, &sec_size);
    if (rc)
        return rc;
    if (dst_cap < sec_size)
        return TQKV_ENOSPC;
    tq__layout L;
    uint32_t P = tq_head_dim_padded(head_dim);
    tqkv__layout(r, P, n_tokens, &L);
    zero_unwritten(&L, head_dim, n_kv_heads, dst);
    tq__kernels kern;
    tqkv__kernels(&kern);
    if (L.raw)
        return encode_raw(&kern, &L, head_dim, n_kv_heads, r->raw_dtype, src, dst);

    uint16_t *chs = NULL; /* [n_kv_heads][2][TQ_MAX_HEAD_DIM] part channels, split only */
    tq__part_ctx *ctx = tqkv_aligned_alloc(64, 2 * sizeof(tq__part_ctx));
    if (!ctx)
        return TQKV_ENOMEM;
    for (uint32_t p = 0; p < L.n_parts; p++) {
        rc = tqkv__part_ctx_init(&ctx[p], &L.part[p], L.n_parts == 2 ? p : 0, r->norm, seed, cb);
        if (rc)
            goto out;
    }
    tq__encode_vec_fn enc = kern.encode_vec;
    if (L.n_parts == 2) {
        chs = tqkv_mallocarray((size_t)n_kv_heads * 2 * TQ_MAX_HEAD_DIM, sizeof(uint16_t));
        rc = chs ? encode_masks(&kern, r, &L, head_dim, n_kv_heads, src, dst, chs) : TQKV_ENOMEM;
        if (rc)
            goto out;
    }
    uint32_t t_first = 0;
#if defined(__x86_64__)
    if (kern.avx2) /* groups of eight tokens, all heads; the tails token by token below */
        t_first = tqkv__encode_section_avx2(ctx, &L, chs, src, n_kv_heads, head_dim, dst);
#endif
    _Alignas(32) float x[TQ_MAX_HEAD_DIM], xp[TQ_MAX_HEAD_DIM];
    uint8_t codes[TQ_MAX_HEAD_DIM];
    uint32_t w0[TQ_MAX_HEAD_DIM / 4], w1[TQ_MAX_HEAD_DIM / 4], sg[TQ_MAX_HEAD_DIM / 32];
    for (uint32_t h = 0; h < n_kv_heads && t_first < n_tokens; h++) {
        uint8_t *rec = (uint8_t *)dst + (size_t)h * L.record_size;
        const uint16_t *ch = chs ? chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM : NULL;
        memset(x, 0, sizeof(x));
        for (uint32_t t = t_first; t < n_tokens; t++) {
            tqkv__view_read_head_k(&kern, src, t, h, head_dim, x);
            for (uint32_t p = 0; p < L.n_parts; p++) {
                const tq__part_layout *pl = &L.part[p];
                const float *in = x;
                if (ch) {
                    for (uint32_t k = 0; k < pl->n; k++)
                        xp[k] = x[ch[p * TQ_MAX_HEAD_DIM + k]];
                    in = xp;
                }
                uint16_t sc = 0, ga = 0;
                enc(&ctx[p], in, codes, &sc, &ga, sg);
                tqkv_store_le16(rec + pl->scale_off + 2 * (size_t)t, sc);
                if (pl->prod) {
                    tqkv_store_le16(rec + pl->gamma_off + 2 * (size_t)t, ga);
                    for (uint32_t i = 0; i < pl->sign_words; i++)
                        store_plane_word(rec, pl->signs_off, n_tokens, i, t, sg[i]);
                }
                if (pl->n_planes) {
                    kern.pack(codes, pl->n, pl->m, w0, w1);
                    for (uint32_t i = 0; i < pl->plane_words[0]; i++)
                        store_plane_word(rec, pl->plane_off[0], n_tokens, i, t, w0[i]);
                    if (pl->n_planes == 2)
                        for (uint32_t i = 0; i < pl->plane_words[1]; i++)
                            store_plane_word(rec, pl->plane_off[1], n_tokens, i, t, w1[i]);
                }
            }
        }
    }
out:
    tqkv_free(chs);
    tqkv_aligned_free(ctx);
    return rc;
}

static void store_out(void *dst, tq_dtype dt, size_t idx, float v)
{
    switch (dt) {
    case TQ_DTYPE_F16:
        ((uint16_t *)dst)[idx] = tq__f32_to_f16(v);
        break;
    case TQ_DTYPE_BF16:
        ((uint16_t *)dst)[idx] = tq__f32_to_bf16(v);
        break;
    default:
        ((float *)dst)[idx] = v;
        break;
    }
}

static void read_part_codes(const tq__kernels *k, const uint8_t *rec, const tq__part_layout *pl,
                            uint32_t T, uint32_t t, uint8_t *codes, uint32_t *sg)
{
    uint32_t w0[TQ_MAX_HEAD_DIM / 4], w1[TQ_MAX_HEAD_DIM / 4];
    for (uint32_t q = 0; q < pl->n_planes; q++)
        for (uint32_t i = 0; i < pl->plane_words[q]; i++)
            (q ? w1 : w0)[i] = load_plane_word(rec, pl->plane_off[q], T, i, t);
    k->unpack(w0, w1, pl->n, pl->m, codes);
    if (pl->prod)
        for (uint32_t i = 0; i < pl->sign_words; i++)
            sg[i] = load_plane_word(rec, pl->signs_off, T, i, t);
}

/* Reads token t's codes (and sign words) of one part from a record. */
int tqkv__read_part_codes(const uint8_t *rec, const tq__part_layout *pl, uint32_t T, uint32_t t,
                          uint8_t *codes, uint32_t *sg)
{
    uint32_t w0[TQ_MAX_HEAD_DIM / 4], w1[TQ_MAX_HEAD_DIM / 4];
    for (uint32_t q = 0; q < pl->n_planes; q++)
        for (uint32_t i = 0; i < pl->plane_words[q]; i++)
            (q ? w1 : w0)[i] = load_plane_word(rec, pl->plane_off[q], T, i, t);
    tqkv__unpack_codes(w0, w1, pl->n, pl->m, codes);
    if (pl->prod)
        for (uint32_t i = 0; i < pl->sign_words; i++)
            sg[i] = load_plane_word(rec, pl->signs_off, T, i, t);
    return 0;
}

int tq_decode_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                      uint32_t n_tokens, uint64_t seed, tq_codebook_kind cb, const void *section,
                      size_t section_len, tq_dtype out_dtype, void *dst, size_t dst_cap)
{
    size_t sec_size;
    if (!section || !dst)
        return TQKV_EINVAL;
    size_t es = tq_dtype_size(out_dtype);
    if (!es)
        return TQKV_EBADDTYPE;
    int rc = check_common(r, head_dim, n_kv_heads, n_tokens, cb, &sec_size);
    if (rc)
        return rc;
    if (section_len < sec_size)
        return TQKV_ETRUNCATED;
    if (dst_cap / es / head_dim / n_kv_heads < n_tokens)
        return TQKV_ENOSPC;
    tq__layout L;
    uint32_t P = tq_head_dim_padded(head_dim);
    tqkv__layout(r, P, n_tokens, &L);
    const uint8_t *sec = section;
    if (L.raw) { /* token-major: the output is [token][head][dim] */
        for (uint32_t t = 0; t < n_tokens; t++)
            for (uint32_t h = 0; h < n_kv_heads; h++) {
                const uint8_t *row = sec + (size_t)h * L.record_size + (size_t)t * P * 2;
                size_t o = ((size_t)t * n_kv_heads + h) * head_dim;
                if (TQ_LE_HOST && out_dtype == r->raw_dtype) {
                    memcpy((uint16_t *)dst + o, row, (size_t)head_dim * 2);
                    continue;
                }
#if defined(__x86_64__)
                /* bf16 widens by a shift, so NaNs keep their bits as in the scalar path */
                if (TQ_LE_HOST && r->raw_dtype == TQ_DTYPE_BF16 && out_dtype != TQ_DTYPE_BF16 &&
                    head_dim % 8 == 0 && tq_get_cpu_impl() == TQ_IMPL_AVX2) {
                    tqkv__bf16_widen_avx2((const uint16_t *)(const void *)row, head_dim,
                                          out_dtype, (uint8_t *)dst + o * es);
                    continue;
                }
#endif
                for (uint32_t j = 0; j < head_dim; j++) {
                    uint16_t v = tqkv_load_le16(row + 2 * j);
                    if (out_dtype == r->raw_dtype)
                        ((uint16_t *)dst)[o + j] = v; /* lossless path: keep the bits */
                    else
                        store_out(dst, out_dtype, o + j,
                                  r->raw_dtype == TQ_DTYPE_F16 ? tq__f16_to_f32(v)
                                                               : tq__bf16_to_f32(v));
                }
            }
        return 0;
    }
    uint16_t *chs = NULL; /* [n_kv_heads][2][TQ_MAX_HEAD_DIM] part channels, split only */
    tq__part_ctx *ctx = tqkv_aligned_alloc(64, 2 * sizeof(tq__part_ctx));
    if (!ctx)
        return TQKV_ENOMEM;
    for (uint32_t p = 0; p < L.n_parts; p++) {
        rc = tqkv__part_ctx_init(&ctx[p], &L.part[p], L.n_parts == 2 ? p : 0, r->norm, seed, cb);
        if (rc)
            goto out;
    }
    tq__kernels kern;
    tqkv__kernels(&kern);
    tq__decode_vec_fn dec = kern.decode_vec;
    if (L.n_parts == 2) { /* every head's mask first: a bad one fails before any output */
        chs = tqkv_mallocarray((size_t)n_kv_heads * 2 * TQ_MAX_HEAD_DIM, sizeof(uint16_t));
        if (!chs) {
            rc = TQKV_ENOMEM;
            goto out;
        }
        for (uint32_t h = 0; h < n_kv_heads; h++) {
            const uint8_t *rec = sec + (size_t)h * L.record_size;
            uint16_t *ch = chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM;
            uint32_t mask[TQ_MAX_HEAD_DIM / 32];
            for (uint32_t i = 0; i < L.mask_words; i++)
                mask[i] = tqkv_load_le32(rec + 4 * i);
            rc = split_channels(mask, P, r->n_out, ch, ch + TQ_MAX_HEAD_DIM);
            if (rc)
                goto out;
        }
    }
    uint32_t t_first = 0;
#if defined(__x86_64__)
    if (kern.avx2) /* groups of eight tokens, all heads; the tails token by token below */
        t_first = tqkv__decode_section_avx2(ctx, &L, chs, sec, n_kv_heads, head_dim, out_dtype,
                                            dst);
#endif
    _Alignas(32) float x[TQ_MAX_HEAD_DIM], xp[TQ_MAX_HEAD_DIM];
    uint8_t codes[TQ_MAX_HEAD_DIM];
    uint32_t sg[TQ_MAX_HEAD_DIM / 32];
    for (uint32_t h = 0; h < n_kv_heads && t_first < n_tokens; h++) {
        const uint8_t *rec = sec + (size_t)h * L.record_size;
        const uint16_t *ch = chs ? chs + (size_t)h * 2 * TQ_MAX_HEAD_DIM : NULL;
        for (uint32_t t = t_first; t < n_tokens; t++) {
            for (uint32_t p = 0; p < L.n_parts; p++) {
                const tq__part_layout *pl = &L.part[p];
                read_part_codes(&kern, rec, pl, n_tokens, t, codes, sg);
                uint16_t sc = tqkv_load_le16(rec + pl->scale_off + 2 * (size_t)t);
                uint16_t ga = pl->prod ? tqkv_load_le16(rec + pl->gamma_off + 2 * (size_t)t) : 0;
                dec(&ctx[p], codes, sc, ga, sg, ch ? xp : x);
                if (ch)
                    for (uint32_t k = 0; k < pl->n; k++)
                        x[ch[p * TQ_MAX_HEAD_DIM + k]] = xp[k];
            }
            size_t o = ((size_t)t * n_kv_heads + h) * head_dim;
#if defined(__x86_64__)
            if (kern.avx2 && out_dtype == TQ_DTYPE_F16) {
                tqkv__f16_store_avx2(x, head_dim, (uint16_t *)dst + o);
                continue;
            }
#endif
            for (uint32_t j = 0; j < head_dim; j++)
                store_out(dst, out_dtype, o + j, x[j]);
        }
    }
out:
    tqkv_free(chs);
    tqkv_aligned_free(ctx);
    return rc;
}
