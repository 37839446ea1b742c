/* Reference decode attention: for every preset it must equal plain fp32 attention over the
 * decoded KV (the rotated-domain score and value paths are exact rewrites of it), with GQA,
 * several chunks per sequence, a padded head_dim and a layer other than 0. For prod keys, the
 * estimator path (tq_scores) must agree with its definition: <q, decoded key>, where the decode
 * adds gamma*sqrt(pi/2)/n * S^T sign to the MSE part. */
#include "tq_internal.h"
#include "tq_test_util.h"
#include "tqkv_test.h"

enum { NL = 2, H = 2, D = 96, NQ = 8, LAYER = 1 };
static const uint32_t g_tok[3] = {17, 9, 30}; /* seq 0: chunks 0, 1; seq 1: chunk 2 */

static uint8_t *encode_chunk(const tq_codec_params *p, uint32_t T, uint64_t seed, size_t *len)
{
    size_t n = (size_t)NL * 2 * T * H * D;
    float *kv = malloc(n * 4);
    tq_rng rng = {.s = seed};
    for (size_t i = 0; i < n; i++)
        kv[i] = (float)tq_rng_gauss(&rng) * ((i % D) == 3 ? 8.0f : 1.0f);
    size_t cap = tq_block_size(p, T, 0, NL);
    uint8_t *b = malloc(cap);
    int rc = tq_block_encode_packed(p, (const uint8_t *)"0123456789abcdef0123456789abcdef", T,
                                    kv, n * 4, b, cap, len);
    free(kv);
    return rc ? (free(b), NULL) : b;
}

/* fp32 attention over decoded KV of the chunks of one sequence. */
static void reference(const tq_block_view *blk, uint32_t c0, uint32_t c1, const float *q,
                      float scale, float *out)
{
    uint32_t total = 0;
    for (uint32_t c = c0; c < c1; c++)
        total += blk[c].n_tokens;
    float *K = malloc((size_t)total * H * D * 4), *V = malloc((size_t)total * H * D * 4);
    uint32_t at = 0;
    for (uint32_t c = c0; c < c1; c++) {
        size_t per = (size_t)blk[c].n_tokens * H * D;
        float *tmp = malloc(per * 2 * 4);
        tq_block_decode(&blk[c], LAYER, 1, TQ_DTYPE_F32, tmp, per * 2 * 4);
        memcpy(K + (size_t)at * H * D, tmp, per * 4);
        memcpy(V + (size_t)at * H * D, tmp + per, per * 4);
        at += blk[c].n_tokens;
        free(tmp);
    }
    double *s = malloc(sizeof(double) * total);
    for (uint32_t hq = 0; hq < NQ; hq++) {
        uint32_t h = hq / (NQ / H);
        double mx = -INFINITY, sum = 0.0;
        for (uint32_t t = 0; t < total; t++) {
            double d = 0;
            for (uint32_t j = 0; j < D; j++)
                d += (double)q[hq * D + j] * K[((size_t)t * H + h) * D + j];
            s[t] = d * scale;
            if (s[t] > mx)
                mx = s[t];
        }
        for (uint32_t t = 0; t < total; t++)
            sum += (s[t] = exp(s[t] - mx));
        for (uint32_t j = 0; j < D; j++) {
            double o = 0;
            for (uint32_t t = 0; t < total; t++)
                o += s[t] * V[((size_t)t * H + h) * D + j];
            out[hq * D + j] = (float)(o / sum);
        }
    }
    free(s);
    free(K);
    free(V);
}

static void run_preset(const char *preset, double tol)
{
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, preset, NL, H, D, TQ_DTYPE_F32));
    uint8_t *bufs[3];
    tq_block_view blk[3];
    for (int c = 0; c < 3; c++) {
        size_t len;
        bufs[c] = encode_chunk(&p, g_tok[c], 10 + c, &len);
        ASSERT_TRUE(bufs[c] != NULL);
        ASSERT_OK(tq_block_parse(bufs[c], len, 0, &blk[c]));
    }
    float q[2 * NQ * D], out[2 * NQ * D], ref[NQ * D];
    tq_rng rng = {.s = 3};
    for (int i = 0; i < 2 * NQ * D; i++)
        q[i] = (float)tq_rng_gauss(&rng);
    uint32_t indptr[3] = {0, 2, 3};
    tq_chunk_table tab = {.n_seqs = 2, .chunk_indptr = indptr, .blocks = blk};
    float scale = 1.0f / sqrtf((float)D);
    ASSERT_OK(tq_attention_cpu(&tab, LAYER, q, NQ, scale, out));
    double maxerr = 0;
    for (uint32_t s = 0; s < 2; s++) {
        reference(blk, indptr[s], indptr[s + 1], q + s * NQ * D, scale, ref);
        for (int i = 0; i < NQ * D; i++) {
            double e = fabs(ref[i] - out[s * NQ * D + i]);
            if (e > maxerr)
                maxerr = e;
        }
    }
    fprintf(stderr, "  %s: max |attention - fp32 attention over decoded KV| = %.2e\n", preset,
            maxerr);
    ASSERT_LE(maxerr, tol);
    /* errors */
    ASSERT_ERR(tq_attention_cpu(&tab, NL, q, NQ, scale, out), TQKV_EBADLAYERS);
    ASSERT_ERR(tq_attention_cpu(&tab, LAYER, q, 3, scale, out), TQKV_EBADGEOMETRY);
    for (int c = 0; c < 3; c++)
        free(bufs[c]);
}

static void test_mse_presets(void)
{
    run_preset("tq4", 2e-5);
    run_preset("tq3.5", 2e-5);
    run_preset("tq3", 2e-5);
    run_preset("tq2.5", 2e-5);
    run_preset("fp16", 2e-5);
}

static void test_prod_presets(void)
{
    run_preset("tq3-prod", 2e-5);
    run_preset("tq3.5-prod", 2e-5);
}

static void test_prod_scores_definition(void)
{
    tq_codec_params p;
    ASSERT_OK(tq_codec_params_init(&p, "tq2.5-prod", NL, H, D, TQ_DTYPE_F32));
    size_t len;
    uint8_t *b = encode_chunk(&p, 40, 5, &len);
    ASSERT_TRUE(b != NULL);
    tq_block_view v;
    ASSERT_OK(tq_block_parse(b, len, 0, &v));
    const uint8_t *sec;
    size_t sl;
    tq_recipe r;
    ASSERT_OK(tq_block_section(&v, 0, TQ_K, &sec, &sl, &r));
    float *dec = malloc((size_t)40 * H * D * 4), q[D], sc[40];
    ASSERT_OK(tq_decode_section(&r, D, H, 40, v.seed, TQ_CODEBOOK_EXACT, sec, sl, TQ_DTYPE_F32,
                                dec, (size_t)40 * H * D * 4));
    tq_rng rng = {.s = 8};
    for (int j = 0; j < D; j++)
        q[j] = (float)tq_rng_gauss(&rng);
    tq_query_prep qp;
    for (uint32_t h = 0; h < H; h++) {
        ASSERT_OK(tq_query_prepare(&r, D, H, 40, v.seed, sec, sl, h, q, &qp));
        ASSERT_EQ_INT(qp.n_parts, 2);
        ASSERT_OK(tq_scores(&r, D, H, 40, v.seed, TQ_CODEBOOK_EXACT, sec, sl, h, &qp, sc));
        for (uint32_t t = 0; t < 40; t++) {
            double d = 0, mag = 0;
            for (int j = 0; j < D; j++) {
                d += (double)q[j] * dec[((size_t)t * H + h) * D + j];
                mag += fabs((double)q[j] * dec[((size_t)t * H + h) * D + j]);
            }
            ASSERT_NEAR(sc[t], d, 1e-5 * mag);
        }
    }
    ASSERT_ERR(tq_query_prepare(&r, D, H, 40, v.seed, sec, sl, H, q, &qp), TQKV_EINVAL);
    free(dec);
    free(b);
}

static const tqkv_test_case cases[] = {
    {"mse_presets", test_mse_presets},
    {"prod_presets", test_prod_presets},
    {"prod_scores_definition", test_prod_scores_definition},
    {NULL, NULL},
};

int main(int argc, char **argv) { return tqkv_test_main(argc, argv, cases); }
