/* Statistical tests of the TurboQuant codec against the numbers of TURBOQUANT.md: MSE distortion
 * on random unit vectors (compared with the exact distortion of the codebook used, by numerical
 * integration), prod's inner-product distortion and unbiasedness, the MSE inner-product slope,
 * and structured inputs (constant, one-hot, huge channels). 10^4 samples per configuration. */
#include "tq_internal.h"
#include "tq_test_util.h"
#include "tqkv_test.h"

#define NS 10000

static const double g_paper_dprod[5] = {0, 1.57, 0.56, 0.18, 0.047};
static const double g_slope[5] = {0, 0.637, 0.883, 0.965, 0.990};

/* Encodes T fp32 vectors of dim d as one head with recipe r, decodes to fp32. */
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

static void test_d_mse(void)
{
    static const uint32_t dims[] = {64, 128, 256};
    for (int di = 0; di < 3; di++) {
        uint32_t d = dims[di];
        float *x = malloc(sizeof(float) * d * NS), *y = malloc(sizeof(float) * d * NS);
        tq_rng rng = {.s = 1000 + d};
        for (uint32_t t = 0; t < NS; t++)
            tq_rng_sphere(&rng, x + (size_t)t * d, d);
        for (uint32_t b = 1; b <= 4; b++) {
            tq_recipe r = {.mode = TQ_MODE_MSE, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
            ASSERT_OK(roundtrip(&r, d, NS, 42, x, y));
            double D = 0.0;
            for (size_t i = 0; i < (size_t)d * NS; i++)
                D += (double)(x[i] - y[i]) * (x[i] - y[i]);
            D /= NS;
            double want = tqkv__codebook_distortion(TQ_CODEBOOK_EXACT, d, b, TQ_CODEBOOK_EXACT);
            fprintf(stderr, "  d=%u b=%u D_mse=%.5f expected %.5f\n", d, b, D, want);
            ASSERT_NEAR(D, want, 0.03 * want);
        }
        free(x);
        free(y);
    }
}

/* The published d=128 exact-density distortions (TURBOQUANT.md) against our integration. */
static void test_expected_table(void)
{
    static const double table[5] = {0, 0.3609, 0.1160, 0.0340, 0.0093};
    for (uint32_t b = 1; b <= 4; b++) {
        double D = tqkv__codebook_distortion(TQ_CODEBOOK_EXACT, 128, b, TQ_CODEBOOK_EXACT);
        ASSERT_NEAR(D, table[b], 0.01 * table[b]);
    }
}

/* Pairs (x, y) of unit vectors with <x, y> = rho and a uniformly random common orientation: the
 * randomness of the orientation plays the role of the quantizer's randomness. */
static void make_pairs(tq_rng *rng, uint32_t d, double rho, float *x, float *y)
{
    float z[256];
    for (uint32_t t = 0; t < NS; t++) {
        float *xt = x + (size_t)t * d, *yt = y + (size_t)t * d;
        tq_rng_sphere(rng, xt, d);
        tq_rng_sphere(rng, z, d);
        double p = 0.0, nn = 0.0;
        for (uint32_t k = 0; k < d; k++)
            p += (double)z[k] * xt[k];
        for (uint32_t k = 0; k < d; k++) {
            z[k] = (float)(z[k] - p * xt[k]);
            nn += (double)z[k] * z[k];
        }
        nn = sqrt(nn);
        for (uint32_t k = 0; k < d; k++)
            yt[k] = (float)(rho * xt[k] + sqrt(1.0 - rho * rho) * z[k] / nn);
    }
}

static void inner_stats(const tq_recipe *r, uint32_t d, double rho, double *mean, double *sd,
                        double *msq)
{
    float *x = malloc(sizeof(float) * d * NS), *y = malloc(sizeof(float) * d * NS);
    float *xh = malloc(sizeof(float) * d * NS);
    tq_rng rng = {.s = 77 + d + r->bits};
    make_pairs(&rng, d, rho, x, y);
    *mean = *sd = *msq = NAN;
    /* 100 seeds of 100 vectors: the estimator is unbiased over the QJL matrix, not for one S */
    int rc = 0;
    for (uint32_t g = 0; g < 100 && !rc; g++)
        rc = roundtrip(r, d, NS / 100, 9 + g, x + (size_t)g * d * (NS / 100),
                       xh + (size_t)g * d * (NS / 100));
    if (rc == 0) {
        double s = 0.0, s2 = 0.0;
        for (uint32_t t = 0; t < NS; t++) {
            double ip = 0.0, ipx = 0.0;
            for (uint32_t k = 0; k < d; k++) {
                ip += (double)y[(size_t)t * d + k] * xh[(size_t)t * d + k];
                ipx += (double)y[(size_t)t * d + k] * x[(size_t)t * d + k];
            }
            double e = ip - ipx;
            s += e;
            s2 += e * e;
        }
        *mean = s / NS;
        *msq = s2 / NS;
        *sd = sqrt((s2 / NS - *mean * *mean) / (NS - 1));
    }
    free(x);
    free(y);
    free(xh);
}

static void test_prod(void)
{
    /* d * D_prod: the paper's figures for b = 1..3; at b = 4 the paper's 0.047 is pi/2 times its
     * rounded 3-bit D_mse (0.03), while pi/2 times the exact 0.0340 is 0.0534, so every b is also
     * checked against pi/2 * D_mse(b - 1) of our codebook (the QJL variance). */
    static const uint32_t dims[] = {64, 128, 256};
    for (int di = 0; di < 3; di++) {
        uint32_t d = dims[di];
        for (uint32_t b = 1; b <= 4; b++) {
            tq_recipe r = {.mode = TQ_MODE_PROD, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
            double mean, se, msq;
            inner_stats(&r, d, 0.0, &mean, &se, &msq);
            double dd = d * msq;
            double dm = b == 1 ? 1.0
                               : tqkv__codebook_distortion(TQ_CODEBOOK_EXACT, d, b - 1,
                                                           TQ_CODEBOOK_EXACT);
            double want = M_PI / 2 * dm;
            fprintf(stderr, "  d=%u b=%u d*D_prod=%.4f paper %.3f qjl-variance %.4f\n", d, b, dd,
                    g_paper_dprod[b], want);
            ASSERT_NEAR(dd, want, 0.05 * want);
            if (b <= 3)
                ASSERT_NEAR(dd, g_paper_dprod[b], 0.05 * g_paper_dprod[b]);
        }
    }
}

static void test_prod_unbiased_and_mse_slope(void)
{
    const double rho = 0.6;
    for (uint32_t b = 1; b <= 4; b++) {
        tq_recipe pr = {.mode = TQ_MODE_PROD, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
        double mean, se, msq;
        inner_stats(&pr, 128, rho, &mean, &se, &msq);
        fprintf(stderr, "  prod b=%u mean error %.6f (se %.6f)\n", b, mean, se);
        ASSERT_LE(fabs(mean), 3.0 * se);
        tq_recipe mr = {.mode = TQ_MODE_MSE, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
        inner_stats(&mr, 128, rho, &mean, &se, &msq);
        double slope = (rho + mean) / rho;
        fprintf(stderr, "  mse b=%u slope %.4f table %.3f (mean error %.5f, se %.6f)\n", b, slope,
                g_slope[b], mean, se);
        ASSERT_NEAR(slope, g_slope[b], 0.02 * g_slope[b]);
        /* and the MSE estimate is measurably biased, which is what prod is for */
        ASSERT_TRUE(fabs(mean) > 3.0 * se);
    }
}

static double rel_err(const float *x, const float *y, size_t n)
{
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += (double)(x[i] - y[i]) * (x[i] - y[i]);
        s += (double)x[i] * x[i];
    }
    return e / s;
}

static void test_structured(void)
{
    const uint32_t d = 128, T = 64;
    float x[128 * 64], y[128 * 64];
    for (uint32_t b = 2; b <= 4; b++) {
        double Dr = tqkv__codebook_distortion(TQ_CODEBOOK_EXACT, d, b, TQ_CODEBOOK_EXACT);
        tq_recipe r = {.mode = TQ_MODE_MSE, .bits = (uint8_t)b, .norm = TQ_NORM_PLAIN};
        /* constant vectors of several magnitudes */
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t k = 0; k < d; k++)
                x[t * d + k] = 0.5f + (float)t;
        ASSERT_OK(roundtrip(&r, d, T, 3, x, y));
        double ec = rel_err(x, y, (size_t)d * T);
        /* one-hot vectors at every position t */
        memset(x, 0, sizeof(x));
        for (uint32_t t = 0; t < T; t++)
            x[t * d + (t * 2) % d] = 3.0f;
        ASSERT_OK(roundtrip(&r, d, T, 3, x, y));
        double eo = rel_err(x, y, (size_t)d * T);
        /* Gaussian with a few channels 50x larger */
        tq_rng rng = {.s = 5};
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t k = 0; k < d; k++)
                x[t * d + k] = (float)tq_rng_gauss(&rng) * (k % 37 == 3 ? 50.0f : 1.0f);
        ASSERT_OK(roundtrip(&r, d, T, 3, x, y));
        double eh = rel_err(x, y, (size_t)d * T);
        fprintf(stderr, "  b=%u random %.4f constant %.4f one-hot %.4f huge %.4f\n", b, Dr, ec,
                eo, eh);
        ASSERT_LE(ec, 3.0 * Dr);
        ASSERT_LE(eo, 3.0 * Dr);
        ASSERT_LE(eh, 3.0 * Dr);
    }
}

static const tqkv_test_case cases[] = {
    {"expected_table", test_expected_table},
    {"d_mse", test_d_mse},
    {"prod", test_prod},
    {"prod_unbiased_and_mse_slope", test_prod_unbiased_and_mse_slope},
    {"structured", test_structured},
    {NULL, NULL},
};

int main(int argc, char **argv) { return tqkv_test_main(argc, argv, cases); }
