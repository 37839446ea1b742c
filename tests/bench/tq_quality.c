/* Quality of the TurboQuant codec, one JSON object per line:
 *   - per (mode, bits, d): D_mse, d*D_prod, the MSE inner-product slope, on random unit vectors
 *     (plain norm, exact codebook; the expected values from numerical integration alongside);
 *   - per preset: exact bytes per token per head (side information included, T = 256) and the
 *     ratio against fp16, and attention fidelity on structured synthetic KV: T = 4096 tokens in
 *     16 chunks, 32 query / 8 KV heads, d = 128, keys with a few channels 10-20x larger and
 *     rotary position embedding, Gaussian values; cosine similarity and relative L2 error of
 *     tq_attention_cpu's output against fp32 attention over the original KV;
 *     Queries are Gaussian with per-channel std 0.3*sqrt(gain) of their KV head; the figures are
 *     sensitive to that choice (unit-variance queries make softmax far peakier and every lossy
 *     preset much worse), so they compare presets, they do not predict a model;
 *   - the same attention figures for each norm variant of tq3 / tq3-prod keys and values
 *     (the measurement behind the default norm).
 * Usage: tq_quality [samples]   (default 10000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_internal.h"
#include "tq_test_util.h"

enum { AT = 4096, CH = 256, NQ = 32, NKV = 8, AD = 128 };

static int roundtrip(const tq_recipe *r, uint32_t d, uint32_t T, uint64_t seed, const float *x,
                     float *y)
{
    size_t sz = tq_section_size(r, d, 1, T);
    uint8_t *sec = malloc(sz);
    tq_kv_view v = tq_kv_view_contiguous(x, TQ_DTYPE_F32, 1, d);
    int rc = tq_encode_section(r, d, 1, T, seed, TQ_CODEBOOK_EXACT, &v, sec, sz);
    if (!rc)
        rc = tq_decode_section(r, d, 1, T, seed, TQ_CODEBOOK_EXACT, sec, sz, TQ_DTYPE_F32, y,
                               sizeof(float) * d * T);
    free(sec);
    return rc;
}

static void distortion(uint32_t ns)
{
    static const uint32_t dims[] = {64, 128, 256};
    const uint32_t groups = 50;
    ns -= ns % groups;
    for (int di = 0; di < 3; di++) {
        uint32_t d = dims[di];
        float *x = malloc(sizeof(float) * d * ns), *y = malloc(sizeof(float) * d * ns);
        float *xh = malloc(sizeof(float) * d * ns), z[256];
        tq_rng rng = {.s = d};
        const double rho = 0.6;
        for (uint32_t t = 0; t < ns; t++) { /* pairs with <x,y> = rho, random orientation */
            float *xt = x + (size_t)t * d, *yt = y + (size_t)t * d;
            tq_rng_sphere(&rng, xt, d);
            tq_rng_sphere(&rng, z, d);
            double p = 0, nn = 0;
            for (uint32_t k = 0; k < d; k++)
                p += (double)z[k] * xt[k];
            for (uint32_t k = 0; k < d; k++) {
                z[k] = (float)(z[k] - p * xt[k]);
                nn += (double)z[k] * z[k];
            }
            for (uint32_t k = 0; k < d; k++)
                yt[k] = (float)(rho * xt[k] + sqrt(1 - rho * rho) * z[k] / sqrt(nn));
        }
        for (int mode = 0; mode < 2; mode++)
            for (uint32_t b = 1; b <= 4; b++) {
                tq_recipe r = {.mode = (uint8_t)mode, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
                for (uint32_t g = 0; g < groups; g++)
                    roundtrip(&r, d, ns / groups, 1 + g, x + (size_t)g * d * (ns / groups),
                              xh + (size_t)g * d * (ns / groups));
                double dm = 0, e1 = 0, e2 = 0;
                for (uint32_t t = 0; t < ns; t++) {
                    double ip = 0, ipx = 0;
                    for (uint32_t k = 0; k < d; k++) {
                        size_t i = (size_t)t * d + k;
                        dm += (double)(x[i] - xh[i]) * (x[i] - xh[i]);
                        ip += (double)y[i] * xh[i];
                        ipx += (double)y[i] * x[i];
                    }
                    e1 += ip - ipx;
                    e2 += (ip - ipx) * (ip - ipx);
                }
                double mean = e1 / ns;
                double se = sqrt((e2 / ns - mean * mean) / (ns - 1));
                uint32_t mb = mode ? b - 1 : b;
                double expect = mb ? tqkv__codebook_distortion(TQ_CODEBOOK_EXACT, d, mb,
                                                               TQ_CODEBOOK_EXACT)
                                   : 1.0;
                char ex[32] = "null"; /* D_mse of a prod code is not the codebook's */
                if (!mode)
                    snprintf(ex, sizeof(ex), "%.5f", expect);
                printf("{\"bench\":\"tq_quality\",\"kind\":\"distortion\",\"mode\":\"%s\","
                       "\"bits\":%u,\"d\":%u,\"samples\":%u,\"d_mse\":%.5f,"
                       "\"d_mse_expected\":%s,\"d_prod_times_d\":%.4f,"
                       "\"ip_slope\":%.4f,\"ip_mean_error\":%.6f,\"ip_mean_error_se\":%.6f}\n",
                       mode ? "prod" : "mse", b, d, ns, dm / ns, ex,
                       d * e2 / ns, (rho + mean) / rho, mean, se);
                fflush(stdout);
            }
        free(x);
        free(y);
        free(xh);
    }
}

/* Synthetic KV of one layer [AT][NKV][AD], K then V, and queries [NQ][AD]. */
static void make_kv(float *K, float *V, float *Q)
{
    tq_rng rng = {.s = 2025};
    float gain[NKV][AD];
    for (int h = 0; h < NKV; h++)
        for (int j = 0; j < AD; j++)
            gain[h][j] = 1.0f;
    for (int h = 0; h < NKV; h++) /* a handful of channels 10-20x larger per head */
        for (int i = 0; i < 5; i++)
            gain[h][tq_rng_u64(&rng) % AD] = 10.0f + 10.0f * (float)tq_rng_unit(&rng);
    for (int t = 0; t < AT; t++)
        for (int h = 0; h < NKV; h++)
            for (int j = 0; j < AD; j++) {
                size_t i = ((size_t)t * NKV + h) * AD + j;
                K[i] = (float)tq_rng_gauss(&rng) * gain[h][j] + 0.5f * gain[h][j];
                V[i] = (float)tq_rng_gauss(&rng);
            }
    for (int h = 0; h < NQ; h++)
        for (int j = 0; j < AD; j++)
            Q[h * AD + j] = (float)tq_rng_gauss(&rng) * 0.3f * sqrtf(gain[h / (NQ / NKV)][j]);
    /* rotary embedding (NeoX pairs j, j + d/2), keys at their positions, queries at AT */
    for (int t = 0; t <= AT; t++) {
        for (int j = 0; j < AD / 2; j++) {
            double th = t * pow(10000.0, -2.0 * j / AD), c = cos(th), s = sin(th);
            int rows = t < AT ? NKV : NQ;
            for (int h = 0; h < rows; h++) {
                float *v = t < AT ? K + ((size_t)t * NKV + h) * AD : Q + (size_t)h * AD;
                float a = v[j], b = v[j + AD / 2];
                v[j] = (float)(a * c - b * s);
                v[j + AD / 2] = (float)(a * s + b * c);
            }
        }
    }
}

static void attention_ref(const float *K, const float *V, const float *Q, float *out)
{
    double *s = malloc(sizeof(double) * AT);
    for (int hq = 0; hq < NQ; hq++) {
        int h = hq / (NQ / NKV);
        double mx = -INFINITY, sum = 0;
        for (int t = 0; t < AT; t++) {
            double d = 0;
            for (int j = 0; j < AD; j++)
                d += (double)Q[hq * AD + j] * K[((size_t)t * NKV + h) * AD + j];
            s[t] = d / sqrt((double)AD);
            if (s[t] > mx)
                mx = s[t];
        }
        for (int t = 0; t < AT; t++)
            sum += (s[t] = exp(s[t] - mx));
        for (int j = 0; j < AD; j++) {
            double o = 0;
            for (int t = 0; t < AT; t++)
                o += s[t] * V[((size_t)t * NKV + h) * AD + j];
            out[hq * AD + j] = (float)(o / sum);
        }
    }
    free(s);
}

static int attention_tq(const tq_recipe *kr, const tq_recipe *vr, const float *K, const float *V,
                        const float *Q, float *out, double *kv_rel)
{
    tq_codec_params p;
    int rc = tq_codec_params_init(&p, "tq3", 1, NKV, AD, TQ_DTYPE_F32);
    if (rc)
        return rc;
    p.k = *kr;
    p.v = *vr;
    uint8_t key[TQ_KEY_BYTES] = {0};
    uint8_t *bufs[AT / CH];
    tq_block_view blk[AT / CH];
    size_t per = (size_t)CH * NKV * AD;
    float *dec = malloc(per * 2 * 4);
    double e = 0, s = 0;
    for (int c = 0; c < AT / CH; c++) {
        tq_kv_view kv = tq_kv_view_contiguous(K + per * c, TQ_DTYPE_F32, NKV, AD);
        tq_kv_view vv = tq_kv_view_contiguous(V + per * c, TQ_DTYPE_F32, NKV, AD);
        size_t cap = tq_block_size(&p, CH, 0, 1), len;
        bufs[c] = malloc(cap);
        if ((rc = tq_block_encode(&p, key, CH, &kv, &vv, bufs[c], cap, &len)) ||
            (rc = tq_block_parse(bufs[c], len, 0, &blk[c])) ||
            (rc = tq_block_decode(&blk[c], 0, 1, TQ_DTYPE_F32, dec, per * 2 * 4)))
            return rc;
        for (size_t i = 0; i < per; i++) {
            e += (double)(dec[i] - K[per * c + i]) * (dec[i] - K[per * c + i]) +
                 (double)(dec[per + i] - V[per * c + i]) * (dec[per + i] - V[per * c + i]);
            s += (double)K[per * c + i] * K[per * c + i] + (double)V[per * c + i] * V[per * c + i];
        }
    }
    *kv_rel = sqrt(e / s);
    uint32_t indptr[2] = {0, AT / CH};
    tq_chunk_table tab = {.n_seqs = 1, .chunk_indptr = indptr, .blocks = blk};
    rc = tq_attention_cpu(&tab, 0, Q, NQ, 1.0f / sqrtf((float)AD), out);
    for (int c = 0; c < AT / CH; c++)
        free(bufs[c]);
    free(dec);
    return rc;
}

static void compare(const float *ref, const float *out, double *cosine, double *rel)
{
    double dot = 0, na = 0, nb = 0, e = 0;
    for (int i = 0; i < NQ * AD; i++) {
        dot += (double)ref[i] * out[i];
        na += (double)ref[i] * ref[i];
        nb += (double)out[i] * out[i];
        e += (double)(ref[i] - out[i]) * (ref[i] - out[i]);
    }
    *cosine = dot / sqrt(na * nb);
    *rel = sqrt(e / na);
}

static void presets(void)
{
    size_t n = (size_t)AT * NKV * AD;
    float *K = malloc(n * 4), *V = malloc(n * 4), Q[NQ * AD], ref[NQ * AD], out[NQ * AD];
    make_kv(K, V, Q);
    attention_ref(K, V, Q, ref);
    for (const char *const *pn = tq_preset_names(); *pn; pn++) {
        tq_recipe k, v;
        tq_preset(*pn, AD, &k, &v);
        double bk = (double)tq_section_size(&k, AD, 1, CH) / CH;
        double bv = (double)tq_section_size(&v, AD, 1, CH) / CH;
        double cosine, rel, kv_rel;
        int rc = attention_tq(&k, &v, K, V, Q, out, &kv_rel);
        compare(ref, out, &cosine, &rel);
        printf("{\"bench\":\"tq_quality\",\"kind\":\"preset\",\"preset\":\"%s\",\"head_dim\":%d,"
               "\"chunk_tokens\":%d,\"bytes_per_token_head_k\":%.4f,"
               "\"bytes_per_token_head_v\":%.4f,\"bytes_per_token_head\":%.4f,"
               "\"ratio_vs_fp16\":%.3f,\"kv_rel_l2\":%.5f,\"attn_cosine\":%.6f,"
               "\"attn_rel_l2\":%.5f,\"rc\":%d}\n",
               *pn, AD, CH, bk, bv, (bk + bv) / 2, 2.0 * AD * 2 / (bk + bv), kv_rel, cosine, rel,
               rc);
        fflush(stdout);
    }
    static const char *names[] = {"plain", "corrected", "unbiased"};
    static const char *base[] = {"tq3", "tq3-prod", "tq2.5"};
    for (int bi = 0; bi < 3; bi++)
        for (int nk = 0; nk < 3; nk++) {
            tq_recipe k, v;
            tq_preset(base[bi], AD, &k, &v);
            k.norm = (uint8_t)nk;
            v.norm = (uint8_t)nk;
            double cosine, rel, kv_rel;
            int rc = attention_tq(&k, &v, K, V, Q, out, &kv_rel);
            compare(ref, out, &cosine, &rel);
            printf("{\"bench\":\"tq_quality\",\"kind\":\"norm\",\"preset\":\"%s\","
                   "\"norm\":\"%s\",\"kv_rel_l2\":%.5f,\"attn_cosine\":%.6f,"
                   "\"attn_rel_l2\":%.5f,\"rc\":%d}\n",
                   base[bi], names[nk], kv_rel, cosine, rel, rc);
            fflush(stdout);
        }
    free(K);
    free(V);
}

int main(int argc, char **argv)
{
    uint32_t ns = argc > 1 ? (uint32_t)atoi(argv[1]) : 10000;
    presets();
    distortion(ns);
    return 0;
}
