/* Codec mechanics: number conversions, codebooks (values, symmetry, thread-safe first use),
 * presets and their exact sizes, determinism, scalar vs AVX2 byte identity, round trips of every
 * preset from every input dtype, head_dim padding, and the reference arithmetic of FORMAT.md
 * re-derived independently here for one vector (so the spec and the code cannot drift apart). */
#include <pthread.h>

#include "tq_internal.h"
#include "tq_test_util.h"
#include "tqkv_endian.h"
#include "tqkv_test.h"

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}
#endif

static void test_f16_conversions(void)
{
    /* every fp16 value survives fp16 -> float -> fp16 (NaNs keep their payload, made quiet) */
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = tq__f32_to_f16(tq__f16_to_f32((uint16_t)h));
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            ASSERT_EQ_INT(back, h | 0x200);
        else
            ASSERT_EQ_INT(back, h);
    }
    /* ties round to even, overflow to infinity, subnormals */
    ASSERT_EQ_INT(tq__f32_to_f16(1.0f + 0x1.0p-11f), 0x3c00);
    ASSERT_EQ_INT(tq__f32_to_f16(1.0f + 0x1.8p-10f), 0x3c02);
    ASSERT_EQ_INT(tq__f32_to_f16(65520.0f), 0x7c00);
    ASSERT_EQ_INT(tq__f32_to_f16(65519.0f), 0x7bff);
    ASSERT_EQ_INT(tq__f32_to_f16(0x1.0p-25f), 0x0000);
    ASSERT_EQ_INT(tq__f32_to_f16(0x1.8p-25f), 0x0001);
    ASSERT_EQ_INT(tq__f32_to_f16(-0x1.0p-24f), 0x8001);
    ASSERT_EQ_INT(tq__f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80);
    ASSERT_EQ_INT(tq__f32_to_bf16(1.0f + 0x1.8p-7f), 0x3f82);
    /* random floats against the hardware converter where there is one */
#if defined(__x86_64__)
    if (tqkv__cpu_has_avx2()) {
        tq_rng rng = {.s = 11};
        for (int i = 0; i < 200000; i++) {
            uint32_t u = (uint32_t)tq_rng_u64(&rng);
            if (i & 1) /* bias towards the fp16 range */
                u = (u & 0x80ffffffu) | ((uint32_t)(96 + (i >> 1) % 48) << 23);
            float f = tq__bits_f32(u);
            uint16_t hw = hw_f32_to_f16(f);
            ASSERT_EQ_INT(tq__f32_to_f16(f), hw);
        }
    }
#endif
}

static void test_codebooks(void)
{
    static const float g3[4] = {0.245094f, 0.756005f, 1.343909f, 2.151946f};
    static const float g4[8] = {0.128395f, 0.388048f, 0.656759f, 0.942340f,
                                1.256231f, 1.618046f, 2.069017f, 2.732590f};
    const float *c = tq_codebook(TQ_CODEBOOK_GAUSSIAN, 128, 3);
    ASSERT_TRUE(c != NULL);
    for (int i = 0; i < 4; i++)
        ASSERT_NEAR(c[4 + i], g3[i], 2e-6);
    c = tq_codebook(TQ_CODEBOOK_GAUSSIAN, 64, 4);
    for (int i = 0; i < 8; i++)
        ASSERT_NEAR(c[8 + i], g4[i], 2e-6);
    ASSERT_NEAR(tq_codebook(TQ_CODEBOOK_GAUSSIAN, 16, 1)[1], 0.797885, 2e-6);
    ASSERT_NEAR(tq_codebook(TQ_CODEBOOK_GAUSSIAN, 16, 2)[3], 1.510418, 2e-6);
    static const uint32_t bits[] = {1, 2, 3, 4, 8};
    for (int kind = 0; kind < 2; kind++)
        for (uint32_t n = 16; n <= 256; n *= 2)
            for (int bi = 0; bi < 5; bi++) {
                const float *b = tq_codebook((tq_codebook_kind)kind, n, bits[bi]);
                ASSERT_TRUE(b != NULL);
                uint32_t K = 1u << bits[bi];
                for (uint32_t i = 0; i < K; i++) {
                    ASSERT_EQ_U64(tq__f32_bits(b[i]), tq__f32_bits(-b[K - 1 - i]));
                    if (i)
                        ASSERT_TRUE(b[i] > b[i - 1]);
                }
                if (kind == TQ_CODEBOOK_EXACT) /* inside the support [-sqrt(n), sqrt(n)] */
                    ASSERT_TRUE(b[K - 1] < sqrtf((float)n));
            }
    ASSERT_TRUE(tq_codebook(TQ_CODEBOOK_EXACT, 48, 3) == NULL);
    ASSERT_TRUE(tq_codebook(TQ_CODEBOOK_EXACT, 128, 5) == NULL);
    ASSERT_TRUE(tq_codebook((tq_codebook_kind)7, 128, 3) == NULL);
    /* the exact-density codebook differs from the Gaussian one at small n, not at large n */
    ASSERT_TRUE(fabsf(tq_codebook(TQ_CODEBOOK_EXACT, 16, 4)[15] -
                      tq_codebook(TQ_CODEBOOK_GAUSSIAN, 16, 4)[15]) > 0.05f);
    ASSERT_NEAR(tq_codebook(TQ_CODEBOOK_EXACT, 256, 2)[3],
                tq_codebook(TQ_CODEBOOK_GAUSSIAN, 256, 2)[3], 0.01);
}

static void *qjl_thread(void *arg)
{
    return (void *)tq_qjl_matrix(0xabcdef, 64, (uint32_t)(uintptr_t)arg & 1);
}

static void test_tables_thread_safe(void)
{
    pthread_t th[8];
    void *res[8];
    for (uintptr_t i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, qjl_thread, (void *)(uintptr_t)(i & 1 ? 1 : 2));
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], &res[i]);
    for (int i = 2; i < 8; i++)
        ASSERT_TRUE(res[i] == res[i & 1]);
    ASSERT_TRUE(res[0] != res[1]);
    /* the matrix looks standard normal */
    const float *S = res[0];
    double m = 0, v = 0;
    for (int i = 0; i < 64 * 64; i++) {
        m += S[i];
        v += (double)S[i] * S[i];
    }
    ASSERT_NEAR(m / 4096, 0.0, 0.05);
    ASSERT_NEAR(v / 4096, 1.0, 0.06);
}

static void test_presets(void)
{
    tq_recipe k, v;
    const char *const *names = tq_preset_names();
    int count = 0;
    for (; *names; names++, count++) {
        ASSERT_OK(tq_preset(*names, 128, &k, &v));
        ASSERT_OK(tq_recipe_validate(&k, 128));
        ASSERT_OK(tq_recipe_validate(&v, 128));
    }
    ASSERT_EQ_INT(count, 10);
    /* a preset named tqX spends exactly X code bits per coordinate averaged over K and V (QJL
     * bit included, side information not): counted here in quarter bits */
    for (names = tq_preset_names(); *names; names++) {
        if (strncmp(*names, "tq", 2) != 0)
            continue;
        ASSERT_OK(tq_preset(*names, 128, &k, &v));
        int quarters = (k.n_out ? k.out_bits + k.bits : 2 * k.bits) +
                       (v.n_out ? v.out_bits + v.bits : 2 * v.bits);
        ASSERT_EQ_INT(quarters, (int)lround(4.0 * strtod(*names + 2, NULL)));
    }
    ASSERT_ERR(tq_preset("tq7", 128, &k, &v), TQKV_ENOENT);
    ASSERT_ERR(tq_preset("tq3", 0, &k, &v), TQKV_EINVAL);
    ASSERT_ERR(tq_preset("tq3", 257, &k, &v), TQKV_EINVAL);
    /* bytes per token per head, even T: scales + codes (+ mask / T) */
    static const struct {
        const char *name;
        uint32_t d, T;
        size_t bytes_k, bytes_v;
    } sz[] = {
        {"tq4", 128, 256, 256 * 66, 256 * 66},
        {"tq3", 128, 256, 256 * 50, 256 * 50},
        /* K: outliers 4 bits, the rest 2; V: 4 bits */
        {"tq3.5", 128, 256, 16 + 256 * (2 + 32 + 2 + 16), 256 * 66},
        /* K: outliers 4 bits, the rest 1; V: outliers 3 bits, the rest 2 */
        {"tq2.5", 128, 256, 16 + 256 * (2 + 32 + 2 + 8), 16 + 256 * (2 + 24 + 2 + 16)},
        {"tq3-prod", 128, 256, 256 * (2 + 2 + 32 + 16), 256 * 50},
        {"tq4-prod", 128, 256, 256 * (2 + 2 + 48 + 16), 256 * 66},
        /* K prod: outliers 4 + 1 QJL bits, the rest 1 + 1; V: outliers 4 bits, the rest 3 */
        {"tq3.5-prod", 128, 256, 16 + 256 * ((2 + 2 + 32 + 8) + (2 + 2 + 8 + 8)),
         16 + 256 * (2 + 32 + 2 + 24)},
        /* K prod: outliers 4 + 1 QJL bits, the rest QJL signs only (no codes); V: 2 bits */
        {"tq2.5-prod", 128, 256, 16 + 256 * ((2 + 2 + 32 + 8) + (2 + 2 + 8)), 256 * 34},
        {"fp16", 128, 256, 256 * 256, 256 * 256},
        {"tq3", 96, 3, 4 * 2 + 3 * 48, 4 * 2 + 3 * 48}, /* padded to 128, odd T */
        /* P = 32, parts of 16: K mask + (scale + 2 words of 4-bit codes) + (scale + 1 word) */
        {"tq3.5", 32, 2, 4 + 4 + 2 * 8 + 4 + 2 * 4, 4 + 2 * 16},
    };
    for (size_t i = 0; i < sizeof(sz) / sizeof(sz[0]); i++) {
        ASSERT_OK(tq_preset(sz[i].name, sz[i].d, &k, &v));
        ASSERT_EQ_U64(tq_section_size(&k, sz[i].d, 1, sz[i].T), sz[i].bytes_k);
        ASSERT_EQ_U64(tq_section_size(&v, sz[i].d, 1, sz[i].T), sz[i].bytes_v);
        ASSERT_EQ_U64(tq_section_size(&k, sz[i].d, 8, sz[i].T), 8 * sz[i].bytes_k);
    }
    /* invalid recipes */
    tq_recipe bad[] = {
        {.mode = TQ_MODE_MSE, .bits = 5},
        {.mode = TQ_MODE_MSE, .bits = 0},
        {.mode = TQ_MODE_PROD, .bits = 6},
        {.mode = TQ_MODE_MSE, .bits = 3, .n_out = 32, .out_bits = 4},
        {.mode = TQ_MODE_MSE, .bits = 3, .out_bits = 4},
        {.mode = TQ_MODE_MSE, .bits = 3, .norm = 3},
        {.mode = TQ_MODE_RAW, .bits = 16, .raw_dtype = TQ_DTYPE_F32},
        {.mode = TQ_MODE_RAW, .bits = 8, .raw_dtype = TQ_DTYPE_F16},
        {.mode = 3, .bits = 3},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ASSERT_ERR(tq_recipe_validate(&bad[i], 128), TQKV_EBADCODEC);
        ASSERT_EQ_U64(tq_section_size(&bad[i], 128, 1, 16), 0);
    }
    ASSERT_EQ_U64(tq_section_size(&k, 128, 1, 65536), 0);
    ASSERT_EQ_U64(tq_section_size(&k, 128, 0, 16), 0);
    ASSERT_EQ_INT(tq_head_dim_padded(1), 32);
    ASSERT_EQ_INT(tq_head_dim_padded(33), 64);
    ASSERT_EQ_INT(tq_head_dim_padded(256), 256);
    ASSERT_EQ_INT(tq_head_dim_padded(257), 0);
}

/* KV of T tokens, H heads, dim d: Gaussian with a few large channels, in dtype dt. */
static void *make_kv(tq_dtype dt, uint32_t T, uint32_t H, uint32_t d, uint64_t seed, float *f32)
{
    size_t n = (size_t)T * H * d;
    tq_rng rng = {.s = seed};
    void *buf = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        float x = (float)tq_rng_gauss(&rng) * ((i % d) % 29 == 5 ? 12.0f : 1.0f);
        if (dt == TQ_DTYPE_F16) {
            ((uint16_t *)buf)[i] = tq__f32_to_f16(x);
            x = tq__f16_to_f32(((uint16_t *)buf)[i]);
        } else if (dt == TQ_DTYPE_BF16) {
            ((uint16_t *)buf)[i] = tq__f32_to_bf16(x);
            x = tq__bf16_to_f32(((uint16_t *)buf)[i]);
        } else {
            ((float *)buf)[i] = x;
        }
        if (f32)
            f32[i] = x;
    }
    return buf;
}

static int encode(const tq_recipe *r, uint32_t d, uint32_t H, uint32_t T, uint64_t seed,
                  const void *kv, tq_dtype dt, uint8_t **out, size_t *len)
{
    *len = tq_section_size(r, d, H, T);
    *out = malloc(*len);
    tq_kv_view v = tq_kv_view_contiguous(kv, dt, H, d);
    return tq_encode_section(r, d, H, T, seed, TQ_CODEBOOK_EXACT, &v, *out, *len);
}

static void test_roundtrip_presets(void)
{
    static const struct {
        const char *name;
        double k_max, v_max; /* relative squared error bounds */
    } P[] = {
        {"tq4", 0.012, 0.012},      {"tq3.5", 0.03, 0.012},    {"tq3", 0.04, 0.04},
        {"tq2.5", 0.06, 0.06},      {"tq4-prod", 0.07, 0.012}, {"tq3.5-prod", 0.08, 0.03},
        {"tq3-prod", 0.22, 0.04},   {"tq2.5-prod", 0.2, 0.13}, {"fp16", 1e-6, 1e-6},
        {"bf16", 2e-5, 2e-5},
    };
    const uint32_t d = 128, H = 3, T = 37;
    const size_t n = (size_t)T * H * d;
    float *ref = malloc(n * 4), *out = malloc(n * 4);
    for (size_t pi = 0; pi < sizeof(P) / sizeof(P[0]); pi++)
        for (int dt = TQ_DTYPE_F16; dt <= TQ_DTYPE_F32; dt++) {
            tq_recipe k, v;
            ASSERT_OK(tq_preset(P[pi].name, d, &k, &v));
            void *kv = make_kv((tq_dtype)dt, T, H, d, 100 + pi, ref);
            for (int t = 0; t < 2; t++) {
                const tq_recipe *r = t ? &v : &k;
                uint8_t *sec;
                size_t len;
                ASSERT_OK(encode(r, d, H, T, 5, kv, (tq_dtype)dt, &sec, &len));
                ASSERT_OK(tq_decode_section(r, d, H, T, 5, TQ_CODEBOOK_EXACT, sec, len,
                                            TQ_DTYPE_F32, out, n * 4));
                double e = 0, s = 0;
                for (size_t i = 0; i < n; i++) {
                    e += (double)(out[i] - ref[i]) * (out[i] - ref[i]);
                    s += (double)ref[i] * ref[i];
                }
                double lim = t ? P[pi].v_max : P[pi].k_max;
                if (r->mode == TQ_MODE_RAW && (int)r->raw_dtype == dt)
                    lim = 0.0; /* lossless */
                else if (r->mode == TQ_MODE_RAW)
                    lim = 2e-5;
                if (!(e / s <= lim))
                    fprintf(stderr, "  %s dtype %d %c: rel err %.5f > %.5f\n", P[pi].name, dt,
                            t ? 'V' : 'K', e / s, lim);
                ASSERT_LE(e / s, lim);
                /* decoding to 16-bit dtypes matches rounding the fp32 decode */
                uint16_t *o16 = malloc(n * 2);
                ASSERT_OK(tq_decode_section(r, d, H, T, 5, TQ_CODEBOOK_EXACT, sec, len,
                                            TQ_DTYPE_BF16, o16, n * 2));
                for (size_t i = 0; i < n; i += 7)
                    ASSERT_EQ_INT(o16[i], tq__f32_to_bf16(out[i]));
                ASSERT_ERR(tq_decode_section(r, d, H, T, 5, TQ_CODEBOOK_EXACT, sec, len,
                                             TQ_DTYPE_F16, o16, n * 2 - 1),
                           TQKV_ENOSPC);
                ASSERT_ERR(tq_decode_section(r, d, H, T, 5, TQ_CODEBOOK_EXACT, sec, len - 1,
                                             TQ_DTYPE_F16, o16, n * 2),
                           TQKV_ETRUNCATED);
                free(o16);
                free(sec);
            }
            free(kv);
        }
    free(ref);
    free(out);
}

/* The encoder writes or zeroes every byte of a section: encoding into a buffer full of 0xff
 * gives the same bytes as into one full of zeros (both implementations, odd and even T, split,
 * prod and raw recipes, padded head dims). */
static void test_every_byte_written(void)
{
    static const struct {
        uint32_t d, T;
    } geo[] = {{128, 37}, {96, 16}, {64, 9}, {40, 8}, {20, 3}, {32, 17}};
    for (int impl = TQ_IMPL_SCALAR; impl <= TQ_IMPL_AVX2; impl++) {
        if (tq_set_cpu_impl((tq_impl)impl)) continue; /* no AVX2 */
        for (size_t gi = 0; gi < sizeof(geo) / sizeof(geo[0]); gi++)
            for (const char *const *p = tq_preset_names(); *p; p++) {
                uint32_t d = geo[gi].d, T = geo[gi].T, H = 2;
                tq_recipe k, v;
                ASSERT_OK(tq_preset(*p, d, &k, &v));
                void *kv = make_kv(TQ_DTYPE_F16, T, H, d, 70 + gi, NULL);
                tq_kv_view view = tq_kv_view_contiguous(kv, TQ_DTYPE_F16, H, d);
                for (int t = 0; t < 2; t++) {
                    const tq_recipe *r = t ? &v : &k;
                    size_t len = tq_section_size(r, d, H, T);
                    uint8_t *a = malloc(len), *b = malloc(len);
                    memset(a, 0, len);
                    memset(b, 0xff, len);
                    ASSERT_OK(tq_encode_section(r, d, H, T, 9, TQ_CODEBOOK_EXACT, &view, a, len));
                    ASSERT_OK(tq_encode_section(r, d, H, T, 9, TQ_CODEBOOK_EXACT, &view, b, len));
                    if (memcmp(a, b, len))
                        fprintf(stderr, "  %s %c d=%u T=%u impl %d: unwritten bytes\n", *p,
                                t ? 'V' : 'K', d, T, impl);
                    ASSERT_MEM_EQ(a, b, len);
                    free(a);
                    free(b);
                }
                free(kv);
            }
    }
    ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AUTO));
}

/* Outlier channels with equal energies: the lower index wins (FORMAT.md), checked against the
 * rank rule computed here from energies summed as the format says; all-zero input picks the
 * first n_out channels. Both implementations. */
static void test_outlier_ties(void)
{
    const uint32_t d = 64, T = 9, P = 64, n_out = 32;
    float x[9 * 64];
    for (int pattern = 0; pattern < 2; pattern++) {
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < d; j++) /* pairs (2i, 2i+1) of equal |x|, 5 levels */
                x[t * d + j] = pattern ? 0.0f : (float)((j / 2) % 5) * ((j & 1) ? -0.5f : 0.5f);
        float E[64] = {0};
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < d; j++) {
                float e = x[t * d + j] * x[t * d + j];
                E[j] = E[j] + e;
            }
        uint32_t want[2] = {0, 0};
        for (uint32_t j = 0; j < P; j++) {
            uint32_t rank = 0;
            for (uint32_t i = 0; i < P; i++)
                rank += E[i] > E[j] || (E[i] == E[j] && i < j);
            if (rank < n_out) want[j / 32] |= 1u << (j % 32);
        }
        tq_recipe r = {.mode = TQ_MODE_MSE, .bits = 3, .out_bits = 4, .n_out = (uint16_t)n_out};
        for (int impl = TQ_IMPL_SCALAR; impl <= TQ_IMPL_AVX2; impl++) {
            if (tq_set_cpu_impl((tq_impl)impl)) continue;
            uint8_t *sec;
            size_t len;
            ASSERT_OK(encode(&r, d, 1, T, 2, x, TQ_DTYPE_F32, &sec, &len));
            ASSERT_EQ_U64(tqkv_load_le32(sec), want[0]);
            ASSERT_EQ_U64(tqkv_load_le32(sec + 4), want[1]);
            free(sec);
        }
        ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AUTO));
    }
}

static void test_determinism_and_seed(void)
{
    tq_recipe k, v;
    ASSERT_OK(tq_preset("tq3.5-prod", 128, &k, &v));
    void *kv = make_kv(TQ_DTYPE_F16, 20, 2, 128, 1, NULL);
    uint8_t *a, *b, *c;
    size_t la, lb, lc;
    ASSERT_OK(encode(&k, 128, 2, 20, 77, kv, TQ_DTYPE_F16, &a, &la));
    ASSERT_OK(encode(&k, 128, 2, 20, 77, kv, TQ_DTYPE_F16, &b, &lb));
    ASSERT_OK(encode(&k, 128, 2, 20, 78, kv, TQ_DTYPE_F16, &c, &lc));
    ASSERT_MEM_EQ(a, b, la);
    ASSERT_TRUE(memcmp(a, c, la) != 0);
    free(a);
    free(b);
    free(c);
    free(kv);
}

static void test_scalar_vs_avx2(void)
{
#if defined(__x86_64__)
    if (!tqkv__cpu_has_avx2())
        TEST_SKIP("no AVX2 on this CPU");
    static const uint32_t dims[] = {128, 64, 96, 256, 32, 20};
    static const char *extra[] = {"unbiased", "plain"};
    for (size_t di = 0; di < sizeof(dims) / sizeof(dims[0]); di++) {
        uint32_t d = dims[di], H = 2, T = 33;
        for (int it = 0; tq_preset_names()[it / 3]; it++) {
            const char *const *names = tq_preset_names() + it / 3;
            int e = it % 3 - 1;
            tq_recipe k, v;
            ASSERT_OK(tq_preset(*names, d, &k, &v));
            if (e >= 0) { /* the other norm variants and 8-bit codes too */
                if (k.mode == TQ_MODE_RAW)
                    continue;
                k.norm = e == 0 ? TQ_NORM_UNBIASED : TQ_NORM_PLAIN;
                if (e == 1 && k.mode == TQ_MODE_MSE && !k.n_out)
                    k.bits = 8;
            }
            for (int dt = TQ_DTYPE_F16; dt <= TQ_DTYPE_F32; dt++) {
                void *kv = make_kv((tq_dtype)dt, T, H, d, 9 + d, NULL);
                uint8_t *s1, *s2;
                size_t l1, l2;
                size_t no = (size_t)T * H * d * 4;
                float *o1 = malloc(no), *o2 = malloc(no);
                ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_SCALAR));
                ASSERT_OK(encode(&k, d, H, T, 3, kv, (tq_dtype)dt, &s1, &l1));
                ASSERT_OK(tq_decode_section(&k, d, H, T, 3, TQ_CODEBOOK_EXACT, s1, l1,
                                            TQ_DTYPE_F32, o1, no));
                ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AVX2));
                ASSERT_OK(encode(&k, d, H, T, 3, kv, (tq_dtype)dt, &s2, &l2));
                ASSERT_OK(tq_decode_section(&k, d, H, T, 3, TQ_CODEBOOK_EXACT, s1, l1,
                                            TQ_DTYPE_F32, o2, no));
                ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AUTO));
                if (memcmp(s1, s2, l1))
                    fprintf(stderr, "  %s (%s) d=%u dtype %d differs\n", *names,
                            e >= 0 ? extra[e] : "default", d, dt);
                ASSERT_MEM_EQ(s1, s2, l1);
                ASSERT_MEM_EQ(o1, o2, no);
                free(s1);
                free(s2);
                free(o1);
                free(o2);
                free(kv);
            }
        }
    }
#else
    TEST_SKIP("not x86-64");
#endif
}

#if defined(__x86_64__)
/* Encodes kv (T x H x d, dtype dt) with the scalar and the AVX2 implementation and decodes the
 * scalar section with both, to every output dtype; everything must be identical. */
static void compare_impls(const tq_recipe *r, uint32_t d, uint32_t H, uint32_t T, const void *kv,
                          tq_dtype dt, const char *what)
{
    uint8_t *s1, *s2;
    size_t l1, l2;
    ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_SCALAR));
    ASSERT_OK(encode(r, d, H, T, 3, kv, dt, &s1, &l1));
    ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AVX2));
    ASSERT_OK(encode(r, d, H, T, 3, kv, dt, &s2, &l2));
    if (memcmp(s1, s2, l1))
        fprintf(stderr, "  %s: mode %d bits %d/%d norm %d d=%u T=%u dtype %d: sections differ\n",
                what, r->mode, r->bits, r->out_bits, r->norm, d, T, dt);
    ASSERT_MEM_EQ(s1, s2, l1);
    size_t no = (size_t)T * H * d * 4;
    uint8_t *o1 = malloc(no), *o2 = malloc(no);
    for (int od = TQ_DTYPE_F16; od <= TQ_DTYPE_F32; od++) {
        size_t len = (size_t)T * H * d * tq_dtype_size((tq_dtype)od);
        memset(o1, 0xa5, no);
        memset(o2, 0x5a, no);
        ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_SCALAR));
        ASSERT_OK(
            tq_decode_section(r, d, H, T, 3, TQ_CODEBOOK_EXACT, s1, l1, (tq_dtype)od, o1, len));
        ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AVX2));
        ASSERT_OK(
            tq_decode_section(r, d, H, T, 3, TQ_CODEBOOK_EXACT, s1, l1, (tq_dtype)od, o2, len));
        if (memcmp(o1, o2, len))
            fprintf(stderr, "  %s: mode %d bits %d d=%u T=%u: decode to dtype %d differs\n", what,
                    r->mode, r->bits, d, T, od);
        ASSERT_MEM_EQ(o1, o2, len);
    }
    ASSERT_OK(tq_set_cpu_impl(TQ_IMPL_AUTO));
    free(o1);
    free(o2);
    free(s1);
    free(s2);
}
#endif

/* Token counts around the AVX2 path's groups of eight (whole groups, tails, fewer than eight),
 * head dims with 16- and 8-channel blocks and padding, every preset and input dtype. */
static void test_avx2_token_counts(void)
{
#if defined(__x86_64__)
    if (!tqkv__cpu_has_avx2()) TEST_SKIP("no AVX2 on this CPU");
    static const struct {
        uint32_t d, T;
    } geo[] = {{128, 1}, {128, 7}, {128, 8}, {128, 9}, {128, 255}, {96, 16},
               {40, 23}, {256, 9}, {32, 17}, {64, 8},  {24, 10}};
    for (size_t gi = 0; gi < sizeof(geo) / sizeof(geo[0]); gi++)
        for (const char *const *p = tq_preset_names(); *p; p++)
            for (int dt = TQ_DTYPE_F16; dt <= TQ_DTYPE_F32; dt++) {
                uint32_t d = geo[gi].d, T = geo[gi].T, H = 2;
                if (T == 255 && dt != TQ_DTYPE_F16)
                    continue; /* time: one dtype is enough for the long case */
                tq_recipe k, v;
                ASSERT_OK(tq_preset(*p, d, &k, &v));
                void *kv = make_kv((tq_dtype)dt, T, H, d, 40 + gi, NULL);
                compare_impls(&k, d, H, T, kv, (tq_dtype)dt, *p);
                if (memcmp(&k, &v, sizeof(k))) compare_impls(&v, d, H, T, kv, (tq_dtype)dt, *p);
                free(kv);
            }
#else
    TEST_SKIP("not x86-64");
#endif
}

/* Inputs that take the unusual branches: NaN and Inf (read as 0), all-zero tokens (norm 0),
 * -0, subnormals, fp32 values whose FWHT overflows to Inf and NaN (t = NaN takes code 0), and
 * the unbiased norm's dot <= 0 fallback. Scalar and AVX2 must agree byte for byte. */
static void test_avx2_edge_values(void)
{
#if defined(__x86_64__)
    if (!tqkv__cpu_has_avx2()) TEST_SKIP("no AVX2 on this CPU");
    const uint32_t d = 64, H = 1, T = 24;
    float *x = malloc((size_t)T * d * 4);
    uint16_t *h16 = malloc((size_t)T * d * 2), *b16 = malloc((size_t)T * d * 2);
    tq_rng rng = {.s = 5};
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t j = 0; j < d; j++) {
            float v = (float)tq_rng_gauss(&rng);
            switch (t % 8) {
            case 0:
                v = 0.0f;
                break; /* zero token */
            case 1:
                v = j == 3 ? NAN : j == 9 ? -INFINITY : v;
                break; /* non-finite */
            case 2:
                v = (j & 1) ? -0.0f : 0x1p-140f * (float)j;
                break; /* -0, subnormal */
            case 3:
                v = (j % 5 == 0) ? 3e38f : (j % 7 == 0) ? -3e38f : v;
                break; /* overflow */
            case 4:
                v = j == 0 ? 1.0f : 0.0f;
                break; /* one channel */
            case 5:
                v = (float)(j % 3) - 1.0f;
                break; /* exact small values */
            case 6:
                v = 65504.0f * ((j & 2) ? 1.0f : -1.0f);
                break; /* fp16 max */
            default:
                break;
            }
            x[(size_t)t * d + j] = v;
            h16[(size_t)t * d + j] = tq__f32_to_f16(v);
            b16[(size_t)t * d + j] = tq__f32_to_bf16(v);
        }
    for (const char *const *p = tq_preset_names(); *p; p++)
        for (int norm = 0; norm < 3; norm++) {
            tq_recipe k, v;
            ASSERT_OK(tq_preset(*p, d, &k, &v));
            if (k.mode == TQ_MODE_RAW && norm) continue;
            if (k.mode != TQ_MODE_RAW) k.norm = (uint8_t)norm;
            compare_impls(&k, d, H, T, x, TQ_DTYPE_F32, *p);
            compare_impls(&k, d, H, T, h16, TQ_DTYPE_F16, *p);
            compare_impls(&k, d, H, T, b16, TQ_DTYPE_BF16, *p);
        }
    free(x);
    free(h16);
    free(b16);
#else
    TEST_SKIP("not x86-64");
#endif
}

/* The AVX2 quantiser counts on |t| against the positive boundaries only; values exactly on a
 * boundary (either sign), one ulp either side, +-0, +-Inf, NaN and subnormals must get the
 * reference's compare-and-count code (a value on a boundary takes the upper code, NaN code 0). */
static void test_avx2_boundary_ties(void)
{
#if defined(__x86_64__)
    if (!tqkv__cpu_has_avx2()) TEST_SKIP("no AVX2 on this CPU");
    static const uint32_t ns[] = {16, 32, 128, 256};
    for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
        for (uint32_t m = 1; m <= 4; m++) {
            const uint32_t n = ns[ni], K = 1u << m;
            tq_recipe r = {.mode = TQ_MODE_MSE, .bits = (uint8_t)m};
            tq__layout L;
            tqkv__layout(&r, n, 8, &L);
            tq__part_ctx *c = malloc(sizeof(*c));
            ASSERT_OK(tqkv__part_ctx_init(c, &L.part[0], 0, TQ_NORM_PLAIN, 1, TQ_CODEBOOK_EXACT));
            /* candidate values: every boundary, its neighbours, and the specials */
            float cand[3 * 16 + 10];
            uint32_t nc = 0;
            for (uint32_t j = 0; j + 1 < K; j++) {
                cand[nc++] = c->bnd[j];
                cand[nc++] = nextafterf(c->bnd[j], INFINITY);
                cand[nc++] = nextafterf(c->bnd[j], -INFINITY);
            }
            const float specials[] = {0.0f, -0.0f,     INFINITY,   -INFINITY, NAN,
                                      -NAN, 0x1p-149f, -0x1p-149f, 1e30f,     -1e30f};
            for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
                cand[nc++] = specials[i];
            float *t = malloc((size_t)n * 8 * 4);
            uint8_t *rec = calloc(1, L.record_size);
            for (uint32_t i = 0; i < n * 8; i++) /* every candidate in many lanes and positions */
                t[i] = cand[(i * 7 + i / 8) % nc];
            ASSERT_OK(tqkv__quant_group_avx2(c, &L.part[0], t, rec));
            for (uint32_t lane = 0; lane < 8; lane++) {
                uint8_t got[256], sg[32];
                tqkv__read_part_codes(rec, &L.part[0], 8, lane, got, (uint32_t *)sg);
                for (uint32_t k = 0; k < n; k++) {
                    float tv = t[k * 8 + lane];
                    uint32_t want = 0;
                    for (uint32_t j = 0; j + 1 < K; j++)
                        want += tv >= c->bnd[j];
                    if (got[k] != want)
                        fprintf(stderr, "  n=%u m=%u t=%a: code %u, reference %u\n", n, m, tv,
                                got[k], want);
                    ASSERT_EQ_INT(got[k], want);
                }
            }
            free(t);
            free(rec);
            free(c);
        }
#else
    TEST_SKIP("not x86-64");
#endif
}

/* One vector encoded by following FORMAT.md's "Reference arithmetic" literally, here in the test,
 * must give the library's codes, scale, gamma and signs. */
static void test_reference_arithmetic(void)
{
    const uint32_t n = 128;
    tq_rng rng = {.s = 123};
    float x[128];
    for (uint32_t k = 0; k < n; k++)
        x[k] = (float)tq_rng_gauss(&rng) * (k == 7 ? 9.0f : 1.0f);
    for (int mode = 0; mode < 2; mode++)
        for (int norm = 0; norm < 3; norm++) {
            tq_recipe r = {.mode = (uint8_t)mode, .bits = 3, .norm = (uint8_t)norm};
            uint8_t *sec;
            size_t len;
            ASSERT_OK(encode(&r, n, 1, 1, 99, x, TQ_DTYPE_F32, &sec, &len));
            uint32_t m = mode ? 2 : 3, K = 1u << m;
            const float *cent = tq_codebook(TQ_CODEBOOK_EXACT, n, m);
            uint64_t s = 99 ^ (0x5349474E00000000ull | ((uint64_t)n << 8));
            float w[128], v[128], rho[128];
            for (uint32_t k = 0; k < n; k++)
                w[k] = (tq__splitmix64(&s) >> 63) ? -x[k] : x[k];
            for (uint32_t h = 1; h < n; h *= 2)
                for (uint32_t i = 0; i < n; i++)
                    if (!(i & h)) {
                        float a = w[i], b = w[i + h];
                        w[i] = a + b;
                        w[i + h] = a - b;
                    }
            float sq[128];
            for (uint32_t k = 0; k < n; k++)
                sq[k] = x[k] * x[k];
            float ss = tqkv__tree_sum_sq(x, n), norm_ = sqrtf(ss), inv = 1.0f / norm_;
            uint8_t codes[128];
            for (uint32_t k = 0; k < n; k++) {
                float t = w[k] * inv;
                uint32_t c = 0;
                for (uint32_t j = 0; j + 1 < K; j++)
                    c += t >= (cent[j] + cent[j + 1]) * 0.5f;
                codes[k] = (uint8_t)c;
                v[k] = cent[c];
            }
            /* the tree by hand: lanes, then 16, 8, 4, 2, 1 */
            float lane[32] = {0};
            for (uint32_t k = 0; k < n; k++)
                lane[k % 32] = lane[k % 32] + sq[k];
            for (uint32_t dd = 16; dd; dd /= 2)
                for (uint32_t l = 0; l < dd; l++)
                    lane[l] = lane[l] + lane[l + dd];
            ASSERT_EQ_U64(tq__f32_bits(lane[0]), tq__f32_bits(ss));
            float sc = norm_;
            if (norm == TQ_NORM_CORRECTED)
                sc = norm_ / sqrtf(tqkv__tree_sum_sq(v, n) * (1.0f / n));
            else if (norm == TQ_NORM_UNBIASED && tqkv__tree_sum_prod(w, v, n) > 0)
                sc = (ss * n) / tqkv__tree_sum_prod(w, v, n);
            uint16_t sc16 = tq__f32_to_f16(sc);
            tq__layout L;
            tqkv__layout(&r, n, 1, &L);
            ASSERT_EQ_INT(tqkv_load_le16(sec + L.part[0].scale_off), sc16);
            uint8_t got[128];
            uint32_t sg[4];
            tqkv__read_part_codes(sec, &L.part[0], 1, 0, got, sg);
            ASSERT_MEM_EQ(got, codes, n);
            if (mode == TQ_MODE_PROD) {
                float s16 = tq__f16_to_f32(sc16);
                for (uint32_t k = 0; k < n; k++)
                    rho[k] = w[k] - s16 * v[k];
                uint16_t g16 = tq__f32_to_f16(sqrtf(tqkv__tree_sum_sq(rho, n) * (1.0f / n)));
                ASSERT_EQ_INT(tqkv_load_le16(sec + L.part[0].gamma_off), g16);
                const float *S = tq_qjl_matrix(99, n, 0);
                for (uint32_t k = 0; k < n; k++) {
                    float acc = 0.0f;
                    for (uint32_t j = 0; j < n; j++)
                        acc = acc + S[k * n + j] * rho[j];
                    ASSERT_EQ_INT((sg[k / 32] >> (k % 32)) & 1, acc >= 0.0f);
                }
            }
            free(sec);
        }
}

static void test_paged_view(void)
{
    /* a paged cache [pages, page_size=4, H, d] with a shuffled page table equals the contiguous */
    const uint32_t d = 64, H = 2, T = 10, PS = 4;
    tq_recipe k, v;
    ASSERT_OK(tq_preset("tq3.5", d, &k, &v));
    float *flat = make_kv(TQ_DTYPE_F32, T, H, d, 4, NULL);
    float *paged = calloc((size_t)5 * PS * H * d, 4);
    int32_t pages[4] = {3, 0, 4, 1};
    for (uint32_t t = 0; t < T; t++) {
        uint32_t pt = t + 1; /* page_offset 1 */
        memcpy(paged + ((size_t)pages[pt / PS] * PS + pt % PS) * H * d, flat + (size_t)t * H * d,
               (size_t)H * d * 4);
    }
    tq_kv_view pv = tq_kv_view_contiguous(paged, TQ_DTYPE_F32, H, d);
    pv.pages = pages;
    pv.page_size = PS;
    pv.page_offset = 1;
    pv.page_stride = (int64_t)PS * H * d;
    size_t len = tq_section_size(&k, d, H, T);
    uint8_t *a = malloc(len), *b;
    ASSERT_OK(tq_encode_section(&k, d, H, T, 1, TQ_CODEBOOK_EXACT, &pv, a, len));
    ASSERT_OK(encode(&k, d, H, T, 1, flat, TQ_DTYPE_F32, &b, &len));
    ASSERT_MEM_EQ(a, b, len);
    ASSERT_ERR(tq_encode_section(&k, d, H, T, 1, TQ_CODEBOOK_EXACT, &pv, a, len - 1),
               TQKV_ENOSPC);
    free(a);
    free(b);
    free(flat);
    free(paged);
}

static void test_zero_and_nonfinite(void)
{
    /* zero vectors decode to zero; NaN/Inf inputs are read as 0 (FORMAT.md) */
    const uint32_t d = 128, T = 4;
    float x[4 * 128] = {0}, y[4 * 128];
    x[128 + 5] = NAN;
    x[256 + 9] = INFINITY;
    x[384 + 1] = 2.0f;
    tq_recipe r;
    tq_recipe v;
    ASSERT_OK(tq_preset("tq3-prod", d, &r, &v));
    uint8_t *sec;
    size_t len;
    ASSERT_OK(encode(&r, d, 1, T, 1, x, TQ_DTYPE_F32, &sec, &len));
    ASSERT_OK(tq_decode_section(&r, d, 1, T, 1, TQ_CODEBOOK_EXACT, sec, len, TQ_DTYPE_F32, y,
                                sizeof(y)));
    for (uint32_t i = 0; i < 3 * d; i++)
        ASSERT_NEAR(y[i], 0.0, 0.0);
    ASSERT_NEAR(y[384 + 1], 2.0, 0.6);
    free(sec);
}

/* Regression: the CPU-feature probe behind the implementation choice was a plain cached int,
 * a data race when several daemon workers encoded their first blocks at once. Run as the first
 * codec call of its process (ctest entry test_tq_codec_first_use), every thread encodes the same
 * chunk from scratch and all must produce the bytes a single thread produces. */
enum { FU_THREADS = 6, FU_T = 37, FU_H = 2, FU_D = 128 };
static float fu_kv[FU_T * FU_H * FU_D];

static void *first_use_thread(void *arg)
{
    tq_codec_params p;
    if (tq_codec_params_init(&p, (const char *)arg, 1, FU_H, FU_D, TQ_DTYPE_F32))
        return NULL;
    size_t cap = tq_block_size(&p, FU_T, 0, 1), len = 0;
    uint8_t *out = malloc(cap);
    uint8_t key[TQ_KEY_BYTES] = {7};
    tq_kv_view k = tq_kv_view_contiguous(fu_kv, TQ_DTYPE_F32, FU_H, FU_D);
    if (!out || tq_block_encode(&p, key, FU_T, &k, &k, out, cap, &len) || len != cap) {
        free(out);
        return NULL;
    }
    return out;
}

static void test_first_use_concurrent(void)
{
    static const char *const presets[] = {"tq4", "tq3.5-prod"};
    tq_rng rng = {.s = 99};
    for (size_t i = 0; i < sizeof(fu_kv) / sizeof(fu_kv[0]); i++)
        fu_kv[i] = (float)tq_rng_gauss(&rng);
    for (int pi = 0; pi < 2; pi++) {
        pthread_t th[FU_THREADS];
        void *res[FU_THREADS];
        for (int i = 0; i < FU_THREADS; i++)
            ASSERT_EQ_INT(pthread_create(&th[i], NULL, first_use_thread, (void *)presets[pi]), 0);
        for (int i = 0; i < FU_THREADS; i++)
            pthread_join(th[i], &res[i]);
        void *ref = first_use_thread((void *)presets[pi]);
        tq_codec_params p;
        ASSERT_OK(tq_codec_params_init(&p, presets[pi], 1, FU_H, FU_D, TQ_DTYPE_F32));
        size_t len = tq_block_size(&p, FU_T, 0, 1);
        int bad = ref == NULL;
        for (int i = 0; i < FU_THREADS; i++)
            bad |= res[i] == NULL || (ref && memcmp(res[i], ref, len) != 0);
        for (int i = 0; i < FU_THREADS; i++)
            free(res[i]);
        free(ref);
        ASSERT_EQ_INT(bad, 0);
    }
}

static const tqkv_test_case cases[] = {
    {"f16_conversions", test_f16_conversions},
    {"codebooks", test_codebooks},
    {"tables_thread_safe", test_tables_thread_safe},
    {"presets", test_presets},
    {"roundtrip_presets", test_roundtrip_presets},
    {"every_byte_written", test_every_byte_written},
    {"outlier_ties", test_outlier_ties},
    {"determinism_and_seed", test_determinism_and_seed},
    {"scalar_vs_avx2", test_scalar_vs_avx2},
    {"avx2_token_counts", test_avx2_token_counts},
    {"avx2_edge_values", test_avx2_edge_values},
    {"avx2_boundary_ties", test_avx2_boundary_ties},
    {"reference_arithmetic", test_reference_arithmetic},
    {"paged_view", test_paged_view},
    {"zero_and_nonfinite", test_zero_and_nonfinite},
    {"first_use_concurrent", test_first_use_concurrent},
    {NULL, NULL},
};

int main(int argc, char **argv) { return tqkv_test_main(argc, argv, cases); }
