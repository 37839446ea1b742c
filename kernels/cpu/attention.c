/* Reference decode attention over encoded blocks, and the query preparation and score estimator
 * it is built from. Scores use the rotated query against codebook values (the rotation is
 * orthogonal, so <q, x^> = <Pi q, y^>), plus the QJL term for prod keys; values are accumulated
 * in the rotated domain and rotated back once per chunk and query head (sum_t p_t Pi^T y_t =
 * Pi^T sum_t p_t y_t). Chunks are merged with a running log-sum-exp, as a split-KV kernel does.
 * This is the CPU reference the CUDA kernels are compared with: clear rather than fast. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "tq_internal.h"
#include "tqkv_alloc.h"
#include "tqkv_endian.h"

#define SQRT_HALF_PI 1.2533141373155002512

/* Channel lists of a head record's parts (identity without a split). */
static int head_channels(const tq__layout *L, const uint8_t *rec, uint32_t n_out,
                         uint16_t ch[2][TQ_MAX_HEAD_DIM])
{
    if (L->n_parts == 1) {
        for (uint32_t j = 0; j < L->P; j++)
            ch[0][j] = (uint16_t)j;
        return 0;
    }
    uint32_t a = 0, b = 0;
    for (uint32_t j = 0; j < L->P; j++) {
        int bit = (tqkv_load_le32(rec + 4 * (j >> 5)) >> (j & 31)) & 1;
        if (bit ? a == n_out : b == L->P - n_out)
            return TQKV_EBADMASK;
        if (bit)
            ch[0][a++] = (uint16_t)j;
        else
            ch[1][b++] = (uint16_t)j;
    }
    return 0;
}

static int check_section(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                         uint32_t n_tokens, const void *section, size_t section_len,
                         uint32_t head, tq__layout *L)
{
    if (!r || !section)
        return TQKV_EINVAL;
    size_t sz = tq_section_size(r, head_dim, n_kv_heads, n_tokens);
    if (!sz)
        return tq_recipe_validate(r, head_dim) ? TQKV_EBADCODEC : TQKV_EBADGEOMETRY;
    if (section_len < sz)
        return TQKV_ETRUNCATED;
    if (head >= n_kv_heads)
        return TQKV_EINVAL;
    tqkv__layout(r, tq_head_dim_padded(head_dim), n_tokens, L);
    return 0;
}

int tq_query_prepare(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads,
                     uint32_t n_tokens, uint64_t seed, const void *section, size_t section_len,
                     uint32_t head, const float *q, tq_query_prep *out)
{
    tq__layout L;
    if (!q || !out)
        return TQKV_EINVAL;
    int rc = check_section(r, head_dim, n_kv_heads, n_tokens, section, section_len, head, &L);
    if (rc)
        return rc;
    memset(out, 0, sizeof(*out));
    if (L.raw) {
        out->n_parts = 1;
        out->part_dim[0] = head_dim;
        memcpy(out->q_rot[0], q, head_dim * sizeof(float));
        return 0;
    }
    const uint8_t *rec = (const uint8_t *)section + (size_t)head * L.record_size;
    uint16_t ch[2][TQ_MAX_HEAD_DIM];
    if ((rc = head_channels(&L, rec, r->n_out, ch)))
        return rc;
    out->n_parts = L.n_parts;
    for (uint32_t p = 0; p < L.n_parts; p++) {
        uint32_t n = L.part[p].n, dsign[TQ_MAX_HEAD_DIM];
        uint32_t pi = L.n_parts == 2 ? p : 0;
        out->part_dim[p] = n;
        tqkv__rotation_signs(seed, n, pi, dsign);
        float *qr = out->q_rot[p];
        for (uint32_t k = 0; k < n; k++) {
            float v = ch[p][k] < head_dim ? q[ch[p][k]] : 0.0f;
            qr[k] = tq__bits_f32(tq__f32_bits(v) ^ dsign[k]);
        }
        tqkv__fwht_scalar(qr, n);
        float f = (float)(1.0 / sqrt((double)n));
        for (uint32_t k = 0; k < n; k++)
            qr[k] *= f;
        if (L.part[p].prod) {
            tq__qjl qj;
            if ((rc = tqkv__qjl_get(seed, n, pi, &qj)))
                return rc;
            for (uint32_t k = 0; k < n; k++) {
                double acc = 0.0;
                for (uint32_t j = 0; j < n; j++)
                    acc += (double)qj.S[(size_t)k * n + j] * qr[j];
                out->q_sketch[p][k] = (float)acc;
            }
        }
    }
    return 0;
}

int tq_scores(const tq_recipe *r, uint32_t head_dim, uint32_t n_kv_heads, uint32_t n_tokens,
              uint64_t seed, tq_codebook_kind cb, const void *section, size_t section_len,
              uint32_t head, const tq_query_prep *q, float *scores)
{
    tq__layout L;
    (void)seed;
    if (!q || !scores)
        return TQKV_EINVAL;
    int rc = check_section(r, head_dim, n_kv_heads, n_tokens, section, section_len, head, &L);
    if (rc)
        return rc;
    const uint8_t *rec = (const uint8_t *)section + (size_t)head * L.record_size;
    if (L.raw) {
        for (uint32_t t = 0; t < n_tokens; t++) {
            const uint8_t *row = rec + (size_t)t * L.P * 2;
            double acc = 0.0;
            for (uint32_t j = 0; j < head_dim; j++) {
                uint16_t v = tqkv_load_le16(row + 2 * j);
                float f = r->raw_dtype == TQ_DTYPE_F16 ? tq__f16_to_f32(v) : tq__bf16_to_f32(v);
                acc += (double)q->q_rot[0][j] * f;
            }
            scores[t] = (float)acc;
        }
        return 0;
    }
    if (q->n_parts != L.n_parts)
        return TQKV_EINVAL;
    const float *cent[2] = {NULL, NULL};
    for (uint32_t p = 0; p < L.n_parts; p++)
        if (L.part[p].m && !(cent[p] = tq_codebook(cb, L.part[p].n, L.part[p].m)))
            return TQKV_EBADCODEC;
    uint8_t codes[TQ_MAX_HEAD_DIM];
    uint32_t sg[TQ_MAX_HEAD_DIM / 32];
    for (uint32_t t = 0; t < n_tokens; t++) {
        double total = 0.0;
        for (uint32_t p = 0; p < L.n_parts; p++) {
            const tq__part_layout *pl = &L.part[p];
            uint32_t n = pl->n;
            tqkv__read_part_codes(rec, pl, n_tokens, t, codes, sg);
            float s = tq__f16_to_f32(tqkv_load_le16(rec + pl->scale_off + 2 * (size_t)t));
            double dot = 0.0;
            if (pl->m)
                for (uint32_t k = 0; k < n; k++)
                    dot += (double)q->q_rot[p][k] * cent[p][codes[k]];
            total += dot * s / sqrt((double)n);
            if (pl->prod) {
                float g = tq__f16_to_f32(tqkv_load_le16(rec + pl->gamma_off + 2 * (size_t)t));
                double qs = 0.0;
                for (uint32_t k = 0; k < n; k++)
                    qs += ((sg[k >> 5] >> (k & 31)) & 1) ? q->q_sketch[p][k] : -q->q_sketch[p][k];
                total += (double)g * SQRT_HALF_PI / n * qs;
            }
        }
        scores[t] = (float)total;
    }
    return 0;
}

/* Value of token t, rotated part p, scaled by sqrt(n): z[k] (what decode_vec rotates back). */
static void value_rot(const tq__part_ctx *c, const tq__part_layout *pl, const uint8_t *rec,
                      uint32_t T, uint32_t t, float *z)
{
    uint8_t codes[TQ_MAX_HEAD_DIM];
    uint32_t sg[TQ_MAX_HEAD_DIM / 32];
    tqkv__read_part_codes(rec, pl, T, t, codes, sg);
    float s = tq__f16_to_f32(tqkv_load_le16(rec + pl->scale_off + 2 * (size_t)t));
    for (uint32_t k = 0; k < c->n; k++)
        z[k] = c->m ? s * c->cent[codes[k]] : 0.0f;
    if (c->prod) {
        float g = tq__f16_to_f32(tqkv_load_le16(rec + pl->gamma_off + 2 * (size_t)t));
        float coef = g * (float)(SQRT_HALF_PI / sqrt((double)c->n));
        for (uint32_t j = 0; j < c->n; j++) {
            float sgn = (sg[j >> 5] >> (j & 31)) & 1 ? coef : -coef;
            const float *row = c->S + (size_t)j * c->n;
            for (uint32_t k = 0; k < c->n; k++)
                z[k] += sgn * row[k];
        }
    }
}

int tq_attention_cpu(const tq_chunk_table *tab, uint32_t layer, const float *q,
                     uint32_t n_q_heads, float softmax_scale, float *out)
{
    if (!tab || !q || !out || !tab->chunk_indptr || (tab->n_seqs && !tab->blocks))
        return TQKV_EINVAL;
    uint32_t n_chunks = tab->chunk_indptr[tab->n_seqs];
    if (tab->chunk_indptr[0] != 0)
        return TQKV_EINVAL;
    if (n_chunks == 0) {
        return tab->n_seqs ? TQKV_EINVAL : 0;
    }
    const tq_block_view *b0 = &tab->blocks[0];
    uint32_t H = b0->n_kv_heads, D = b0->head_dim, P = b0->head_dim_padded;
    if (n_q_heads == 0 || n_q_heads % H)
        return TQKV_EBADGEOMETRY;
    for (uint32_t s = 0; s < tab->n_seqs; s++)
        if (tab->chunk_indptr[s + 1] < tab->chunk_indptr[s])
            return TQKV_EINVAL;
    for (uint32_t c = 0; c < n_chunks; c++) {
        const tq_block_view *b = &tab->blocks[c];
        if (b->n_kv_heads != H || b->head_dim != D || b->seed != b0->seed ||
            b->codebook != b0->codebook)
            return TQKV_EBADGEOMETRY;
        if (layer < b->layer_begin || layer >= (uint32_t)b->layer_begin + b->n_layers)
            return TQKV_EBADLAYERS;
    }
    uint32_t group = n_q_heads / H, maxT = 0;
    for (uint32_t c = 0; c < n_chunks; c++)
        if (tab->blocks[c].n_tokens > maxT)
            maxT = tab->blocks[c].n_tokens;
    float *sc = tqkv_mallocarray(maxT, sizeof(float));
    tq_query_prep *qp = tqkv_malloc(sizeof(*qp));
    tq__part_ctx *ctx = tqkv_aligned_alloc(64, 2 * sizeof(tq__part_ctx));
    int rc = 0;
    if (!sc || !qp || !ctx) {
        rc = TQKV_ENOMEM;
        goto out;
    }
    float acc[TQ_MAX_HEAD_DIM], zacc[2][TQ_MAX_HEAD_DIM], z[TQ_MAX_HEAD_DIM];
    float xo[TQ_MAX_HEAD_DIM];
    for (uint32_t s = 0; s < tab->n_seqs; s++) {
        for (uint32_t hq = 0; hq < n_q_heads; hq++) {
            uint32_t h = hq / group;
            const float *qv = q + ((size_t)s * n_q_heads + hq) * D;
            double run_max = -INFINITY, run_sum = 0.0;
            double oacc[TQ_MAX_HEAD_DIM] = {0};
            for (uint32_t c = tab->chunk_indptr[s]; c < tab->chunk_indptr[s + 1]; c++) {
                const tq_block_view *b = &tab->blocks[c];
                const uint8_t *ks, *vs;
                size_t kl, vl;
                tq_recipe kr, vr;
                if ((rc = tq_block_section(b, layer, TQ_K, &ks, &kl, &kr)) ||
                    (rc = tq_block_section(b, layer, TQ_V, &vs, &vl, &vr)))
                    goto out;
                uint32_t T = b->n_tokens;
                if ((rc = tq_query_prepare(&kr, D, H, T, b->seed, ks, kl, h, qv, qp)) ||
                    (rc = tq_scores(&kr, D, H, T, b->seed, (tq_codebook_kind)b->codebook, ks, kl,
                                    h, qp, sc)))
                    goto out;
                double cmax = -INFINITY;
                for (uint32_t t = 0; t < T; t++) {
                    sc[t] *= softmax_scale;
                    if (sc[t] > cmax)
                        cmax = sc[t];
                }
                /* chunk-local softmax numerators and value sum, then a log-sum-exp merge */
                double csum = 0.0;
                tq__layout L;
                tqkv__layout(&vr, P, T, &L);
                const uint8_t *rec = vs + (size_t)h * L.record_size;
                memset(acc, 0, sizeof(acc));
                memset(zacc, 0, sizeof(zacc));
                uint16_t ch[2][TQ_MAX_HEAD_DIM];
                if (!L.raw) {
                    if ((rc = head_channels(&L, rec, vr.n_out, ch)))
                        goto out;
                    for (uint32_t p = 0; p < L.n_parts; p++)
                        if ((rc = tqkv__part_ctx_init(&ctx[p], &L.part[p], L.n_parts == 2 ? p : 0,
                                                      vr.norm, b->seed,
                                                      (tq_codebook_kind)b->codebook)))
                            goto out;
                }
                for (uint32_t t = 0; t < T; t++) {
                    float pt = (float)exp((double)sc[t] - cmax);
                    csum += pt;
                    if (L.raw) {
                        const uint8_t *row = rec + (size_t)t * P * 2;
                        for (uint32_t j = 0; j < D; j++) {
                            uint16_t v = tqkv_load_le16(row + 2 * j);
                            acc[j] += pt * (vr.raw_dtype == TQ_DTYPE_F16 ? tq__f16_to_f32(v)
                                                                          : tq__bf16_to_f32(v));
                        }
                        continue;
                    }
                    for (uint32_t p = 0; p < L.n_parts; p++) {
                        value_rot(&ctx[p], &L.part[p], rec, T, t, z);
                        for (uint32_t k = 0; k < L.part[p].n; k++)
                            zacc[p][k] += pt * z[k];
                    }
                }
                if (!L.raw) {
                    /* rotate back once: x = D (H z) / n per part, scattered to its channels */
                    for (uint32_t p = 0; p < L.n_parts; p++) {
                        uint32_t n = L.part[p].n;
                        tqkv__fwht_scalar(zacc[p], n);
                        for (uint32_t k = 0; k < n; k++)
                            xo[ch[p][k]] = tq__bits_f32(tq__f32_bits(zacc[p][k] / (float)n) ^
                                                        ctx[p].dsign[k]);
                    }
                    memcpy(acc, xo, D * sizeof(float));
                }
                double nm = cmax > run_max ? cmax : run_max;
                double a = run_sum > 0.0 ? exp(run_max - nm) : 0.0, bsc = exp(cmax - nm);
                for (uint32_t j = 0; j < D; j++)
                    oacc[j] = oacc[j] * a + acc[j] * bsc;
                run_sum = run_sum * a + csum * bsc;
                run_max = nm;
            }
            float *o = out + ((size_t)s * n_q_heads + hq) * D;
            for (uint32_t j = 0; j < D; j++)
                o[j] = run_sum > 0.0 ? (float)(oacc[j] / run_sum) : 0.0f;
        }
    }
out:
    tqkv_free(sc);
    tqkv_free(qp);
    tqkv_aligned_free(ctx);
    return rc;
}
