/* Recipes and presets: what each named preset means, which recipes are legal, and the exact byte
 * layout and size of a head record and a section (FORMAT.md, "Section"). Also the KV source
 * views (strided or paged) that the encoders read from. */
#include <math.h>
#include <string.h>

#include "tq_internal.h"

size_t tq_dtype_size(tq_dtype dtype)
{
    switch (dtype) {
    case TQ_DTYPE_F16:
    case TQ_DTYPE_BF16:
        return 2;
    case TQ_DTYPE_F32:
        return 4;
    }
    return 0;
}

uint32_t tq_head_dim_padded(uint32_t head_dim)
{
    if (head_dim == 0 || head_dim > TQ_MAX_HEAD_DIM)
        return 0;
    uint32_t p = 32;
    while (p < head_dim)
        p <<= 1;
    return p;
}

/* Default norms, chosen by measured attention error (tq_quality, docs/BENCHMARKS.md): the
 * corrected norm ||x||/||c^|| removes the shrinkage of the MSE codebook (its inner-product slope
 * is below 1, 0.965 at 3 bits), which otherwise scales every score down and flattens softmax;
 * the unbiased (EDEN) scale fixes the slope too but through a noisier per-vector ratio. For prod
 * keys the norm only shapes the MSE part; the QJL term makes the estimate unbiased anyway, and the
 * corrected scale leaves the smaller residual. */
#define TQ_DEFAULT_NORM TQ_NORM_CORRECTED

static const char *const g_names[] = {"tq4",      "tq3.5",      "tq3",      "tq2.5",
                                      "tq4-prod", "tq3.5-prod", "tq3-prod", "tq2.5-prod",
                                      "fp16",     "bf16",       NULL};

const char *const *tq_preset_names(void) { return g_names; }

int tq_preset(const char *name, uint32_t head_dim, tq_recipe *k, tq_recipe *v)
{
    uint32_t P = tq_head_dim_padded(head_dim);
    if (!name || !k || !v)
        return TQKV_EINVAL;
    if (!P)
        return TQKV_EINVAL;
    memset(k, 0, sizeof(*k));
    memset(v, 0, sizeof(*v));
    if (!strcmp(name, "fp16") || !strcmp(name, "bf16")) {
        k->mode = TQ_MODE_RAW;
        k->bits = 16;
        k->raw_dtype = name[0] == 'f' ? TQ_DTYPE_F16 : TQ_DTYPE_BF16;
        *v = *k;
        return 0;
    }
    static const struct {
        const char *base;
        uint8_t bits, out_bits;
    } bases[] = {{"tq4", 4, 0}, {"tq3.5", 3, 4}, {"tq3", 3, 0}, {"tq2.5", 2, 3}};
    size_t len = strlen(name);
    int prod = 0;
    if (len > 5 && !strcmp(name + len - 5, "-prod")) {
        prod = 1;
        len -= 5;
    }
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++) {
        if (strlen(bases[i].base) != len || strncmp(bases[i].base, name, len) != 0)
            continue;
        v->mode = TQ_MODE_MSE;
        v->bits = bases[i].bits;
        v->out_bits = bases[i].out_bits;
        v->n_out = bases[i].out_bits ? (uint16_t)(P / 2) : 0;
        v->norm = TQ_DEFAULT_NORM;
        *k = *v;
        if (prod)
            k->mode = TQ_MODE_PROD; /* same total bits: one of them becomes the QJL sign */
        return 0;
    }
    return TQKV_ENOENT;
}

static int bits_ok(uint8_t mode, uint8_t bits)
{
    if (mode == TQ_MODE_MSE)
        return (bits >= 1 && bits <= 4) || bits == 8;
    if (mode == TQ_MODE_PROD)
        return bits >= 1 && bits <= 5;
    return 0;
}

int tq_recipe_validate(const tq_recipe *r, uint32_t head_dim)
{
    uint32_t P = tq_head_dim_padded(head_dim);
    if (!r || !P)
        return TQKV_EBADCODEC;
    if (r->mode == TQ_MODE_RAW) {
        if (r->bits != 16 || r->out_bits || r->n_out || r->norm ||
            (r->raw_dtype != TQ_DTYPE_F16 && r->raw_dtype != TQ_DTYPE_BF16))
            return TQKV_EBADCODEC;
        return 0;
    }
    if (r->mode != TQ_MODE_MSE && r->mode != TQ_MODE_PROD)
        return TQKV_EBADCODEC;
    if (!bits_ok(r->mode, r->bits) || r->norm > TQ_NORM_UNBIASED || r->raw_dtype)
        return TQKV_EBADCODEC;
    if (r->n_out == 0)
        return r->out_bits ? TQKV_EBADCODEC : 0;
    if (r->n_out != P / 2 || !bits_ok(r->mode, r->out_bits))
        return TQKV_EBADCODEC;
    return 0;
}

static uint32_t words_per_token(uint32_t n, uint32_t w) { return (n * w + 31) / 32; }

void tqkv__layout(const tq_recipe *r, uint32_t P, uint32_t T, tq__layout *L)
{
    memset(L, 0, sizeof(*L));
    L->P = P;
    L->T = T;
    if (r->mode == TQ_MODE_RAW) {
        L->raw = 1;
        L->record_size = (size_t)T * P * 2;
        return;
    }
    size_t off = 0;
    size_t half_words = ((size_t)T + 1) / 2 * 4; /* T fp16 values padded to 4 bytes */
    L->n_parts = r->n_out ? 2 : 1;
    if (r->n_out) {
        L->mask_words = P / 32;
        off += (size_t)L->mask_words * 4;
    }
    for (uint32_t p = 0; p < L->n_parts; p++) {
        tq__part_layout *pl = &L->part[p];
        pl->n = L->n_parts == 2 ? P / 2 : P;
        pl->bits = (L->n_parts == 2 && p == 0) ? r->out_bits : r->bits;
        pl->prod = r->mode == TQ_MODE_PROD;
        pl->m = pl->prod ? pl->bits - 1 : pl->bits;
        pl->scale_off = off;
        off += half_words;
        if (pl->prod) {
            pl->gamma_off = off;
            off += half_words;
        }
        switch (pl->m) {
        case 0:
            pl->n_planes = 0;
            break;
        case 3:
            pl->n_planes = 2;
            pl->plane_w[0] = 2;
            pl->plane_w[1] = 1;
            break;
        default:
            pl->n_planes = 1;
            pl->plane_w[0] = pl->m;
            break;
        }
        for (uint32_t q = 0; q < pl->n_planes; q++) {
            pl->plane_words[q] = words_per_token(pl->n, pl->plane_w[q]);
            pl->plane_off[q] = off;
            off += (size_t)pl->plane_words[q] * 4 * T;
        }
        if (pl->prod) {
            pl->sign_words = words_per_token(pl->n, 1);
            pl->signs_off = off;
            off += (size_t)pl->sign_words * 4 * T;
        }
    }
    L->record_size = off;
}

size_t tq_section_size(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                       uint32_t n_tokens)
{
    if (tq_recipe_validate(r, head_dim) || n_kv_heads == 0 || n_kv_heads > TQ_MAX_KV_HEADS ||
        n_tokens == 0 || n_tokens > TQ_MAX_TOKENS)
        return 0;
    tq__layout L;
    tqkv__layout(r, tq_head_dim_padded(head_dim), n_tokens, &L);
    size_t s = L.record_size * n_kv_heads;
    if (s > UINT32_MAX) /* the layer table stores section sizes in 32 bits */
        return 0;
    return s;
}

tq_kv_view tq_kv_view_contiguous(const void *data, tq_dtype dtype, uint32_t n_kv_heads,
                                 uint32_t head_dim)
{
    tq_kv_view v;
    memset(&v, 0, sizeof(v));
    v.data = data;
    v.dtype = (uint8_t)dtype;
    v.token_stride = (int64_t)n_kv_heads * head_dim;
    v.head_stride = head_dim;
    return v;
}

static inline int64_t view_index(const tq_kv_view *v, uint32_t t, uint32_t h)
{
    if (!v->pages)
        return (int64_t)t * v->token_stride + (int64_t)h * v->head_stride;
    uint64_t pt = (uint64_t)t + v->page_offset;
    return (int64_t)v->pages[pt / v->page_size] * v->page_stride +
           (int64_t)(pt % v->page_size) * v->token_stride + (int64_t)h * v->head_stride;
}

static inline float finite_or_zero(float f) { return isfinite(f) ? f : 0.0f; }

void tqkv__view_read_head(const tq_kv_view *v, uint32_t t, uint32_t h, uint32_t head_dim,
                          float *out)
{
    int64_t base = view_index(v, t, h);
    switch (v->dtype) {
    case TQ_DTYPE_F16: {
        const uint16_t *p = (const uint16_t *)v->data + base;
        for (uint32_t j = 0; j < head_dim; j++)
            out[j] = finite_or_zero(tq__f16_to_f32(p[j]));
        break;
    }
    case TQ_DTYPE_BF16: {
        const uint16_t *p = (const uint16_t *)v->data + base;
        for (uint32_t j = 0; j < head_dim; j++)
            out[j] = finite_or_zero(tq__bf16_to_f32(p[j]));
        break;
    }
    default: {
        const float *p = (const float *)v->data + base;
        for (uint32_t j = 0; j < head_dim; j++)
            out[j] = finite_or_zero(p[j]);
        break;
    }
    }
}

void tqkv__view_read_head_k(const tq__kernels *k, const tq_kv_view *v, uint32_t t, uint32_t h,
                            uint32_t head_dim, float *out)
{
#if defined(__x86_64__)
    if (k->avx2 && v->dtype == TQ_DTYPE_F16) {
        tqkv__f16_row_avx2((const uint16_t *)v->data + view_index(v, t, h), head_dim, out);
        return;
    }
#endif
    tqkv__view_read_head(v, t, h, head_dim, out);
}
