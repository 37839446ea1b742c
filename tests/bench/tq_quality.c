/* Quality of the TurboQuant codec, one JSON object per line:
 *   - per (mode, bits, d): D_mse, d*D_prod, the MSE inner-product slope, on random unit vectors
 *     (plain norm, exact codebook; the expected values from numerical integration alongside);
 *   - per preset and scenario: its recipes and code bits per coordinate, exact bytes per token
 *     per head (side information included, T = 256) and the ratio against fp16, and attention
 *     fidelity on structured synthetic KV: T = 4096 tokens in 16 chunks, 32 query / 8 KV heads,
 *     d = 128, keys with a few channels 10-20x larger and rotary position embedding, Gaussian
 *     values; cosine similarity and relative L2 error of tq_attention_cpu's output against fp32
 *     attention over the original KV. The same cosine with only K quantized and with only V
 *     quantized (the other tensor stored as fp16, whose own error is ~1e-4) shows where the error
 *     comes from. `v_cos` is the cosine between the decoded and the original V over all tokens:
 *     with iid zero-mean values it predicts the V-only attention cosine whatever the attention
 *     weights (the errors of different tokens are independent, so the output keeps the
 *     per-vector signal-to-error ratio);
 *   - "alloc" lines: candidate (K, V) recipe pairs at each bit budget, the measurement behind
 *     the presets' allocations (kernels/cpu/recipe.c), and one "alloc_summary" line per pair
 *     (worst and mean over the scenarios);
 *   - "norm" lines: every (K norm, V norm) pair of each preset's recipes (the default norms).
 * Scenarios: "base" (seed 2025, queries with per-channel std 0.3*sqrt(gain) of their KV head:
 * the figures of docs/BENCHMARKS.md), "seed2" (another draw of outlier channels, KV and
 * queries), "q0.6" and "q1.0" (queries 2x and 3.3x larger: peakier softmax), and "qiso", a
 * second query model, labelled as such: isotropic queries (same std on every channel), so the
 * keys' regular channels matter more. The figures are sensitive to the query scale and model,
 * so they compare presets, they do not predict a model.
 * Recipes are written m<bits> / p<bits> (mse / prod, all channels), m<out>/<bits> (outlier
 * split: the half of the channels with the most energy at <out> bits, the rest at <bits>), f16
 * (raw), with :p :c :u for the plain / corrected / unbiased norm (corrected when omitted).
 * Usage: tq_quality [samples] [sections]
 *   samples: random vectors of the distortion section (default 10000; 0 skips it)
 *   sections: comma-separated subset of presets,alloc,norm,distortion (default all) */
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

typedef struct {
    const char *name;
    uint64_t seed;
    float q_scale;
    int q_iso; /* queries isotropic instead of following the keys' channel gains */
} scenario;

static const scenario g_scen[] = {{"base", 2025, 0.3f, 0},
                                  {"seed2", 4242, 0.3f, 0},
                                  {"q0.6", 2025, 0.6f, 0},
                                  {"q1.0", 2025, 1.0f, 0},
                                  {"qiso", 2025, 0.3f, 1}};
enum { NSCEN = sizeof(g_scen) / sizeof(g_scen[0]) };

/* One scenario's data: original KV of one layer [AT][NKV][AD], queries [NQ][AD], and the fp32
 * attention over them. */
typedef struct {
    float *K, *V;
    float Q[NQ * AD], ref[NQ * AD];
} kvset;

/* Synthetic KV and queries. The base scenario (seed 2025, q_scale 0.3) is the generator the
 * earlier figures were measured on, unchanged. With q_iso, every query channel has the same std
 * (q_scale times the root of the head's mean channel gain), so the keys' regular channels weigh
 * more in the scores than when queries follow the keys' gains: a check that an allocation
 * starving the regular key channels does not win only because of the query model. */
static void make_kv(uint64_t seed, float q_scale, int q_iso, float *K, float *V, float *Q)
{
    tq_rng rng = {.s = seed};
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
    float mean_gain[NKV];
    for (int h = 0; h < NKV; h++) {
        mean_gain[h] = 0.0f;
        for (int j = 0; j < AD; j++)
            mean_gain[h] += gain[h][j] / AD;
    }
    for (int h = 0; h < NQ; h++)
        for (int j = 0; j < AD; j++) {
            int hk = h / (NQ / NKV);
            float g = q_iso ? mean_gain[hk] : gain[hk][j];
            Q[h * AD + j] = (float)tq_rng_gauss(&rng) * q_scale * sqrtf(g);
        }
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

/* ---- recipes as short strings ----------------------------------------------------------- */

static int parse_recipe(const char *s, tq_recipe *r)
{
    memset(r, 0, sizeof(*r));
    if (!strcmp(s, "f16")) {
        r->mode = TQ_MODE_RAW;
        r->bits = 16;
        r->raw_dtype = TQ_DTYPE_F16;
        return tq_recipe_validate(r, AD);
    }
    unsigned a = 0, b = 0;
    char m = 0, norm = 'c';
    int n = 0;
    if (sscanf(s, "%c%u/%u%n", &m, &a, &b, &n) == 3) {
        r->out_bits = (uint8_t)a;
        r->bits = (uint8_t)b;
        r->n_out = (uint16_t)(tq_head_dim_padded(AD) / 2);
    } else if (sscanf(s, "%c%u%n", &m, &a, &n) == 2) {
        r->bits = (uint8_t)a;
    } else {
        return TQKV_EINVAL;
    }
    if (s[n] == ':')
        norm = s[n + 1];
    r->mode = m == 'p' ? TQ_MODE_PROD : TQ_MODE_MSE;
    r->norm = norm == 'p' ? TQ_NORM_PLAIN : norm == 'u' ? TQ_NORM_UNBIASED : TQ_NORM_CORRECTED;
    if (m != 'm' && m != 'p')
        return TQKV_EINVAL;
    return tq_recipe_validate(r, AD);
}

static void recipe_str(const tq_recipe *r, char *buf, size_t cap)
{
    static const char norms[] = "pcu";
    if (r->mode == TQ_MODE_RAW) {
        snprintf(buf, cap, "%s", r->raw_dtype == TQ_DTYPE_F16 ? "f16" : "bf16");
        return;
    }
    char m = r->mode == TQ_MODE_PROD ? 'p' : 'm';
    if (r->n_out)
        snprintf(buf, cap, "%c%u/%u:%c", m, r->out_bits, r->bits, norms[r->norm % 3]);
    else
        snprintf(buf, cap, "%c%u:%c", m, r->bits, norms[r->norm % 3]);
}

/* Code bits per coordinate (QJL bit included; side information not). */
static double code_bits(const tq_recipe *r)
{
    if (r->mode == TQ_MODE_RAW)
        return 16.0;
    return r->n_out ? (r->out_bits + r->bits) / 2.0 : r->bits;
}

/* ---- attention fidelity ----------------------------------------------------------------- */

typedef struct {
    int rc;
    double cosine, rel;          /* attention output against fp32 attention */
    double kv_rel, k_rel, v_rel; /* decoded tensors, relative L2 */
    double k_cos, v_cos;         /* decoded tensors, cosine over all tokens and heads */
} fidelity;

static void tensor_stats(const float *x, const float *y, size_t n, double acc[4])
{
    for (size_t i = 0; i < n; i++) {
        acc[0] += (double)x[i] * x[i];
        acc[1] += (double)y[i] * y[i];
        acc[2] += (double)x[i] * y[i];
        acc[3] += (double)(x[i] - y[i]) * (x[i] - y[i]);
    }
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

/* Encodes the scenario's KV with (kr, vr) in chunks of CH tokens, runs tq_attention_cpu over the
 * blocks and compares it with the fp32 reference. */
static fidelity attention_tq(const tq_recipe *kr, const tq_recipe *vr, const kvset *s)
{
    fidelity f;
    memset(&f, 0, sizeof(f));
    tq_codec_params p;
    if ((f.rc = tq_codec_params_init(&p, "tq3", 1, NKV, AD, TQ_DTYPE_F32)))
        return f;
    p.k = *kr;
    p.v = *vr;
    uint8_t key[TQ_KEY_BYTES] = {0};
    uint8_t *bufs[AT / CH] = {NULL};
    tq_block_view blk[AT / CH];
    size_t per = (size_t)CH * NKV * AD;
    float *dec = malloc(per * 2 * 4), out[NQ * AD];
    double ks[4] = {0}, vs[4] = {0};
    for (int c = 0; c < AT / CH && !f.rc; c++) {
        tq_kv_view kv = tq_kv_view_contiguous(s->K + per * c, TQ_DTYPE_F32, NKV, AD);
        tq_kv_view vv = tq_kv_view_contiguous(s->V + per * c, TQ_DTYPE_F32, NKV, AD);
        size_t cap = tq_block_size(&p, CH, 0, 1), len;
        bufs[c] = malloc(cap);
        if ((f.rc = tq_block_encode(&p, key, CH, &kv, &vv, bufs[c], cap, &len)) ||
            (f.rc = tq_block_parse(bufs[c], len, 0, &blk[c])) ||
            (f.rc = tq_block_decode(&blk[c], 0, 1, TQ_DTYPE_F32, dec, per * 2 * 4)))
            break;
        tensor_stats(s->K + per * c, dec, per, ks);
        tensor_stats(s->V + per * c, dec + per, per, vs);
    }
    if (!f.rc) {
        f.kv_rel = sqrt((ks[3] + vs[3]) / (ks[0] + vs[0]));
        f.k_rel = sqrt(ks[3] / ks[0]);
        f.v_rel = sqrt(vs[3] / vs[0]);
        f.k_cos = ks[2] / sqrt(ks[0] * ks[1]);
        f.v_cos = vs[2] / sqrt(vs[0] * vs[1]);
        uint32_t indptr[2] = {0, AT / CH};
        tq_chunk_table tab = {.n_seqs = 1, .chunk_indptr = indptr, .blocks = blk};
        f.rc = tq_attention_cpu(&tab, 0, s->Q, NQ, 1.0f / sqrtf((float)AD), out);
        if (!f.rc)
            compare(s->ref, out, &f.cosine, &f.rel);
    }
    for (int c = 0; c < AT / CH; c++)
        free(bufs[c]);
    free(dec);
    return f;
}

/* Full, K-only and V-only fidelity of a recipe pair. */
static void attention_split(const tq_recipe *kr, const tq_recipe *vr, const kvset *s,
                            fidelity *full, double *k_only, double *v_only)
{
    tq_recipe raw;
    parse_recipe("f16", &raw);
    *full = attention_tq(kr, vr, s);
    fidelity fk = attention_tq(kr, &raw, s), fv = attention_tq(&raw, vr, s);
    *k_only = fk.rc ? NAN : fk.cosine;
    *v_only = fv.rc ? NAN : fv.cosine;
    if (!full->rc)
        full->rc = fk.rc ? fk.rc : fv.rc;
}

static void presets(const kvset *sets)
{
    for (int si = 0; si < NSCEN; si++)
        for (const char *const *pn = tq_preset_names(); *pn; pn++) {
            tq_recipe k, v;
            char ks[32], vs[32];
            tq_preset(*pn, AD, &k, &v);
            recipe_str(&k, ks, sizeof(ks));
            recipe_str(&v, vs, sizeof(vs));
            double bk = (double)tq_section_size(&k, AD, 1, CH) / CH;
            double bv = (double)tq_section_size(&v, AD, 1, CH) / CH;
            fidelity f;
            double ko, vo;
            attention_split(&k, &v, &sets[si], &f, &ko, &vo);
            printf("{\"bench\":\"tq_quality\",\"kind\":\"preset\",\"scenario\":\"%s\","
                   "\"preset\":\"%s\",\"k\":\"%s\",\"v\":\"%s\",\"code_bits_k\":%.2f,"
                   "\"code_bits_v\":%.2f,\"code_bits\":%.2f,\"head_dim\":%d,"
                   "\"chunk_tokens\":%d,\"bytes_per_token_head_k\":%.4f,"
                   "\"bytes_per_token_head_v\":%.4f,\"bytes_per_token_head\":%.4f,"
                   "\"ratio_vs_fp16\":%.3f,\"kv_rel_l2\":%.5f,\"k_rel_l2\":%.5f,"
                   "\"v_rel_l2\":%.5f,\"k_cos\":%.6f,\"v_cos\":%.6f,\"attn_cosine\":%.6f,"
                   "\"attn_rel_l2\":%.5f,\"attn_cosine_k_only\":%.6f,"
                   "\"attn_cosine_v_only\":%.6f,\"rc\":%d}\n",
                   g_scen[si].name, *pn, ks, vs, code_bits(&k), code_bits(&v),
                   (code_bits(&k) + code_bits(&v)) / 2, AD, CH, bk, bv, (bk + bv) / 2,
                   2.0 * AD * 2 / (bk + bv), f.kv_rel, f.k_rel, f.v_rel, f.k_cos, f.v_cos, f.cosine,
                   f.rel, ko, vo, f.rc);
            fflush(stdout);
        }
}

/* Candidate allocations per budget (code bits per coordinate averaged over K and V). Every
 * pair spends exactly its budget; side information comes on top, as for the presets. */
static const struct {
    const char *budget, *k, *v;
} g_alloc[] = {
    {"4", "m4", "m4"},
    {"3.5", "m4/3", "m4/3"},
    {"3.5", "m3", "m4"},
    {"3.5", "m4/2", "m4"},
    {"3.5", "m4", "m3"},
    {"3.5", "m4", "m4/2"},
    {"3.5", "m8/2", "m2"},
    {"3", "m3", "m3"},
    {"3", "m4/2", "m3"},
    {"3", "m2", "m4"},
    {"3", "m3/1", "m4"},
    {"3", "m3/2", "m4/3"},
    {"3", "m4/1", "m4/3"},
    {"2.5", "m3/2", "m3/2"},
    {"2.5", "m4/1", "m4/1"},
    {"2.5", "m2", "m3"},
    {"2.5", "m3/1", "m3"},
    {"2.5", "m4/2", "m2"},
    {"2.5", "m3", "m2"},
    {"2.5", "m2/1", "m4/3"},
    {"2.5", "m1", "m4"},
    {"2.5", "m3/1", "m4/2"},
    {"2.5", "m4/1", "m3/2"},
    {"2.5", "m3/2", "m3/2:p"},
    {"4-prod", "p4", "m4"},
    {"4-prod", "p5/3", "m4"},
    {"3.5-prod", "p4/3", "m4/3"},
    {"3.5-prod", "p3", "m4"},
    {"3.5-prod", "p4/2", "m4"},
    {"3.5-prod", "p5/1", "m4"},
    {"3.5-prod", "p5/2", "m4/3"},
    {"3.5-prod", "p5/3", "m3"},
    {"3-prod", "p3", "m3"},
    {"3-prod", "p4/2", "m3"},
    {"3-prod", "p5/1", "m3"},
    {"2.5-prod", "p3/2", "m3/2"},
    {"2.5-prod", "p2", "m3"},
    {"2.5-prod", "p3/1", "m3"},
    {"2.5-prod", "p4/1", "m4/1"},
    {"2.5-prod", "p4/2", "m2"},
    {"2.5-prod", "p4/1", "m3/2"},
    {"2.5-prod", "p5/1", "m2"},
};
enum { NALLOC = sizeof(g_alloc) / sizeof(g_alloc[0]) };

static void alloc(const kvset *sets)
{
    for (int ai = 0; ai < NALLOC; ai++) {
        tq_recipe k, v;
        if (parse_recipe(g_alloc[ai].k, &k) || parse_recipe(g_alloc[ai].v, &v)) {
            printf("{\"bench\":\"tq_quality\",\"kind\":\"alloc\",\"k\":\"%s\",\"v\":\"%s\","
                   "\"rc\":%d}\n",
                   g_alloc[ai].k, g_alloc[ai].v, TQKV_EINVAL);
            continue;
        }
        char ks[32], vs[32];
        recipe_str(&k, ks, sizeof(ks));
        recipe_str(&v, vs, sizeof(vs));
        double bk = (double)tq_section_size(&k, AD, 1, CH) / CH;
        double bv = (double)tq_section_size(&v, AD, 1, CH) / CH;
        double worst = 2, mean = 0, worst_k = 2, worst_v = 2;
        int rc = 0;
        for (int si = 0; si < NSCEN; si++) {
            fidelity f;
            double ko, vo;
            attention_split(&k, &v, &sets[si], &f, &ko, &vo);
            printf("{\"bench\":\"tq_quality\",\"kind\":\"alloc\",\"scenario\":\"%s\","
                   "\"budget\":\"%s\",\"k\":\"%s\",\"v\":\"%s\",\"code_bits\":%.2f,"
                   "\"bytes_per_token_head\":%.4f,\"k_rel_l2\":%.5f,\"v_rel_l2\":%.5f,"
                   "\"v_cos\":%.6f,\"attn_cosine\":%.6f,\"attn_rel_l2\":%.5f,"
                   "\"attn_cosine_k_only\":%.6f,\"attn_cosine_v_only\":%.6f,\"rc\":%d}\n",
                   g_scen[si].name, g_alloc[ai].budget, ks, vs, (code_bits(&k) + code_bits(&v)) / 2,
                   (bk + bv) / 2, f.k_rel, f.v_rel, f.v_cos, f.cosine, f.rel, ko, vo, f.rc);
            fflush(stdout);
            rc = rc ? rc : f.rc;
            worst = f.cosine < worst ? f.cosine : worst;
            worst_k = ko < worst_k ? ko : worst_k;
            worst_v = vo < worst_v ? vo : worst_v;
            mean += f.cosine / NSCEN;
        }
        printf("{\"bench\":\"tq_quality\",\"kind\":\"alloc_summary\",\"budget\":\"%s\","
               "\"k\":\"%s\",\"v\":\"%s\",\"code_bits\":%.2f,\"bytes_per_token_head\":%.4f,"
               "\"attn_cosine_worst\":%.6f,\"attn_cosine_mean\":%.6f,"
               "\"attn_cosine_k_only_worst\":%.6f,\"attn_cosine_v_only_worst\":%.6f,"
               "\"rc\":%d}\n",
               g_alloc[ai].budget, ks, vs, (code_bits(&k) + code_bits(&v)) / 2, (bk + bv) / 2,
               worst, mean, worst_k, worst_v, rc);
        fflush(stdout);
    }
}

/* Every (K norm, V norm) pair of each lossy preset's recipes. */
static void norms(const kvset *sets)
{
    static const char *names[] = {"plain", "corrected", "unbiased"};
    for (const char *const *pn = tq_preset_names(); *pn; pn++) {
        tq_recipe k0, v0;
        tq_preset(*pn, AD, &k0, &v0);
        if (k0.mode == TQ_MODE_RAW)
            continue;
        for (int nk = 0; nk < 3; nk++)
            for (int nv = 0; nv < 3; nv++) {
                double worst = 2, mean = 0;
                int rc = 0;
                tq_recipe k = k0, v = v0;
                k.norm = (uint8_t)nk;
                v.norm = (uint8_t)nv;
                for (int si = 0; si < NSCEN; si++) {
                    fidelity f = attention_tq(&k, &v, &sets[si]);
                    printf("{\"bench\":\"tq_quality\",\"kind\":\"norm\",\"scenario\":\"%s\","
                           "\"preset\":\"%s\",\"norm_k\":\"%s\",\"norm_v\":\"%s\","
                           "\"kv_rel_l2\":%.5f,\"attn_cosine\":%.6f,\"attn_rel_l2\":%.5f,"
                           "\"rc\":%d}\n",
                           g_scen[si].name, *pn, names[nk], names[nv], f.kv_rel, f.cosine, f.rel,
                           f.rc);
                    rc = rc ? rc : f.rc;
                    worst = f.cosine < worst ? f.cosine : worst;
                    mean += f.cosine / NSCEN;
                }
                printf("{\"bench\":\"tq_quality\",\"kind\":\"norm_summary\",\"preset\":\"%s\","
                       "\"norm_k\":\"%s\",\"norm_v\":\"%s\",\"attn_cosine_worst\":%.6f,"
                       "\"attn_cosine_mean\":%.6f,\"rc\":%d}\n",
                       *pn, names[nk], names[nv], worst, mean, rc);
                fflush(stdout);
            }
    }
}

static int wants(const char *sections, const char *name)
{
    if (!sections)
        return 1;
    size_t n = strlen(name);
    for (const char *p = sections; (p = strstr(p, name)) != NULL; p += n)
        if ((p == sections || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    uint32_t ns = argc > 1 ? (uint32_t)atoi(argv[1]) : 10000;
    const char *sections = argc > 2 ? argv[2] : NULL;
    size_t n = (size_t)AT * NKV * AD;
    kvset sets[NSCEN];
    if (wants(sections, "presets") || wants(sections, "alloc") || wants(sections, "norm")) {
        for (int si = 0; si < NSCEN; si++) {
            sets[si].K = malloc(n * 4);
            sets[si].V = malloc(n * 4);
            if (!sets[si].K || !sets[si].V)
                return 1;
            make_kv(g_scen[si].seed, g_scen[si].q_scale, g_scen[si].q_iso, sets[si].K, sets[si].V,
                    sets[si].Q);
            attention_ref(sets[si].K, sets[si].V, sets[si].Q, sets[si].ref);
        }
        if (wants(sections, "presets"))
            presets(sets);
        if (wants(sections, "alloc"))
            alloc(sets);
        if (wants(sections, "norm"))
            norms(sets);
        for (int si = 0; si < NSCEN; si++) {
            free(sets[si].K);
            free(sets[si].V);
        }
    }
    if (ns >= 50 && wants(sections, "distortion"))
        distortion(ns);
    return 0;
}
