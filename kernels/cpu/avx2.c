/* AVX2 versions of the per-vector kernels, chosen at run time when the CPU has AVX2 and F16C.
 * They perform the very operations of the scalar reference (codec.c) in the same order -- the
 * FWHT stage by stage, the 32-lane tree sums as four 8-lane accumulators, compare-and-count
 * against the boundaries, the QJL products accumulated over j in increasing order -- so that
 * they produce identical bytes; tests/unit/test_tq_codec.c checks it. Only additions,
 * subtractions and multiplications appear (never a fused multiply-add), and the file is
 * compiled with -ffp-contract=off like the rest of the library. */
#include "tq_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <pthread.h>

#define TQ_AVX2 __attribute__((target("avx2,f16c,bmi2")))

static int has_avx2;
static pthread_once_t has_avx2_once = PTHREAD_ONCE_INIT;

static void detect_avx2(void)
{
    __builtin_cpu_init();
    has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
               __builtin_cpu_supports("bmi2");
}

/* Encoders on several worker threads ask at once: pthread_once makes the first answer visible
 * to all of them (a plain cached int was a data race). */
int tqkv__cpu_has_avx2(void)
{
    pthread_once(&has_avx2_once, detect_avx2);
    return has_avx2;
}

/* Stages h = 1, 2, 4 of the FWHT inside one register: lane l gets a + b where l is the lower
 * index of its pair and a - b where it is the upper one (x + (-y) equals x - y exactly). */
TQ_AVX2 static inline __m256 fwht8(__m256 v)
{
    const __m256 s1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, (int)0x80000000, 0, (int)0x80000000,
                                                            0, (int)0x80000000, 0, (int)0x80000000));
    const __m256 s2 = _mm256_castsi256_ps(
        _mm256_setr_epi32(0, 0, (int)0x80000000, (int)0x80000000, 0, 0, (int)0x80000000,
                          (int)0x80000000));
    const __m256 s4 = _mm256_castsi256_ps(_mm256_setr_epi32(
        0, 0, 0, 0, (int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000));
    v = _mm256_add_ps(_mm256_permute_ps(v, 0xB1), _mm256_xor_ps(v, s1));
    v = _mm256_add_ps(_mm256_permute_ps(v, 0x4E), _mm256_xor_ps(v, s2));
    v = _mm256_add_ps(_mm256_permute2f128_ps(v, v, 0x01), _mm256_xor_ps(v, s4));
    return v;
}

TQ_AVX2 static inline void fwht(__m256 *v, uint32_t nr)
{
    for (uint32_t r = 0; r < nr; r++)
        v[r] = fwht8(v[r]);
    for (uint32_t hr = 1; hr < nr; hr <<= 1)
        for (uint32_t i = 0; i < nr; i += 2 * hr)
            for (uint32_t j = i; j < i + hr; j++) {
                __m256 a = v[j], b = v[j + hr];
                v[j] = _mm256_add_ps(a, b);
                v[j + hr] = _mm256_sub_ps(a, b);
            }
}

/* The 32-lane tree of FORMAT.md over products a[r] * b[r] (register r holds k = 8r .. 8r+7, so
 * lane group r & 3 is k mod 32). */
TQ_AVX2 static inline float tree_prod(const __m256 *a, const __m256 *b, uint32_t nr)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (uint32_t r = 0; r < nr; r++)
        acc[r & 3] = _mm256_add_ps(acc[r & 3], _mm256_mul_ps(a[r], b[r]));
    __m256 c = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    c = _mm256_add_ps(c, _mm256_permute2f128_ps(c, c, 0x01));
    c = _mm256_add_ps(c, _mm256_permute_ps(c, 0x4E));
    c = _mm256_add_ps(c, _mm256_permute_ps(c, 0xB1));
    return _mm_cvtss_f32(_mm256_castps256_ps128(c));
}

/* Centroid values for 8 codes. */
TQ_AVX2 static inline __m256 lookup(const tq__part_ctx *c, __m256i idx, __m256 t0, __m256 t1)
{
    if (c->m <= 3)
        return _mm256_permutevar8x32_ps(t0, idx);
    if (c->m == 4) {
        __m256 lo = _mm256_permutevar8x32_ps(t0, idx), hi = _mm256_permutevar8x32_ps(t1, idx);
        return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    }
    return _mm256_i32gather_ps(c->cent, idx, 4);
}

TQ_AVX2 static inline void load_tables(const tq__part_ctx *c, __m256 *t0, __m256 *t1)
{
    float tab[16] = {0};
    if (c->m >= 1 && c->m <= 4)
        for (uint32_t i = 0; i < (1u << c->m); i++)
            tab[i] = c->cent[i];
    *t0 = _mm256_loadu_ps(tab);
    *t1 = _mm256_loadu_ps(tab + 8);
}

/* Stores 8 int32 codes (0..255) of register r as bytes. */
TQ_AVX2 static inline void store_codes(uint8_t *dst, __m256i c)
{
    __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
    __m128i w = _mm_packus_epi32(lo, hi);
    __m128i b = _mm_packus_epi16(w, w);
    _mm_storel_epi64((__m128i *)dst, b);
}

TQ_AVX2 void tqkv__encode_vec_avx2(const tq__part_ctx *c, const float *x, uint8_t *codes,
                                   uint16_t *scale, uint16_t *gamma, uint32_t *signs)
{
    const uint32_t n = c->n, m = c->m, nr = n / 8;
    __m256 v[TQ_MAX_HEAD_DIM / 8], xs[TQ_MAX_HEAD_DIM / 8], cv[TQ_MAX_HEAD_DIM / 8];
    for (uint32_t r = 0; r < nr; r++) {
        xs[r] = _mm256_loadu_ps(x + 8 * r);
        v[r] = _mm256_xor_ps(xs[r], _mm256_loadu_ps((const float *)(c->dsign + 8 * r)));
    }
    fwht(v, nr);
    float ss = tree_prod(xs, xs, nr);
    float norm = sqrtf(ss);
    float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
    float sc = norm;
    if (m) {
        const __m256 vinv = _mm256_set1_ps(inv);
        const uint32_t nb = (1u << m) - 1;
        __m256 t0, t1;
        load_tables(c, &t0, &t1);
        /* four registers at a time, boundaries in the outer loop: four independent count
         * chains instead of one long dependent chain per register */
        for (uint32_t r = 0; r < nr; r += 4) {
            __m256 t[4];
            __m256i cnt[4];
            for (uint32_t q = 0; q < 4; q++) {
                /* n = 16 has two registers: the other two lanes compute on zeros, unused */
                t[q] = r + q < nr ? _mm256_mul_ps(v[r + q], vinv) : _mm256_setzero_ps();
                cnt[q] = _mm256_setzero_si256();
            }
            for (uint32_t j = 0; j < nb; j++) {
                const __m256 bj = _mm256_broadcast_ss(&c->bnd[j]);
                for (uint32_t q = 0; q < 4; q++)
                    cnt[q] = _mm256_sub_epi32(
                        cnt[q], _mm256_castps_si256(_mm256_cmp_ps(t[q], bj, _CMP_GE_OQ)));
            }
            for (uint32_t q = 0; q < 4 && r + q < nr; q++) {
                store_codes(codes + 8 * (r + q), cnt[q]);
                cv[r + q] = lookup(c, cnt[q], t0, t1);
            }
        }
        if (c->norm == TQ_NORM_CORRECTED) {
            float q = tree_prod(cv, cv, nr);
            sc = norm / sqrtf(q * (1.0f / (float)n));
        } else if (c->norm == TQ_NORM_UNBIASED) {
            float dot = tree_prod(v, cv, nr);
            if (dot > 0.0f)
                sc = (ss * (float)n) / dot;
        }
    } else {
        memset(codes, 0, n);
    }
    *scale = tq__f32_to_f16(sc);
    if (!c->prod)
        return;
    const __m256 s16 = _mm256_set1_ps(tq__f16_to_f32(*scale));
    _Alignas(32) float rho[TQ_MAX_HEAD_DIM];
    __m256 rv[TQ_MAX_HEAD_DIM / 8];
    for (uint32_t r = 0; r < nr; r++) {
        rv[r] = m ? _mm256_sub_ps(v[r], _mm256_mul_ps(s16, cv[r])) : v[r];
        _mm256_store_ps(rho + 8 * r, rv[r]);
    }
    *gamma = tq__f32_to_f16(sqrtf(tree_prod(rv, rv, nr) * (1.0f / (float)n)));
    for (uint32_t i = 0; i < (n + 31) / 32; i++)
        signs[i] = 0;
    for (uint32_t r = 0; r < nr; r += 4) {
        /* four output registers at a time: 32 rows of S, j in increasing order */
        uint32_t nq = nr - r < 4 ? nr - r : 4;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (uint32_t j = 0; j < n; j++) {
            const __m256 rj = _mm256_set1_ps(rho[j]);
            const float *col = c->St + (size_t)j * n + 8 * r;
            for (uint32_t q = 0; q < nq; q++)
                acc[q] = _mm256_add_ps(acc[q], _mm256_mul_ps(_mm256_loadu_ps(col + 8 * q), rj));
        }
        for (uint32_t q = 0; q < nq; q++) {
            uint32_t bits = (uint32_t)_mm256_movemask_ps(
                _mm256_cmp_ps(acc[q], _mm256_setzero_ps(), _CMP_GE_OQ));
            uint32_t k = 8 * (r + q);
            signs[k >> 5] |= bits << (k & 31);
        }
    }
}

TQ_AVX2 void tqkv__decode_vec_avx2(const tq__part_ctx *c, const uint8_t *codes, uint16_t scale,
                                   uint16_t gamma, const uint32_t *signs, float *out)
{
    const uint32_t n = c->n, nr = n / 8;
    __m256 z[TQ_MAX_HEAD_DIM / 8];
    const __m256 s = _mm256_set1_ps(tq__f16_to_f32(scale));
    __m256 t0, t1;
    load_tables(c, &t0, &t1);
    for (uint32_t r = 0; r < nr; r++) {
        if (c->m) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + 8 * r)));
            z[r] = _mm256_mul_ps(s, lookup(c, idx, t0, t1));
        } else {
            z[r] = _mm256_setzero_ps();
        }
    }
    if (c->prod) {
        const __m256 coef = _mm256_set1_ps(tq__f16_to_f32(gamma) *
                                           (float)(1.2533141373155002512 / sqrt((double)n)));
        __m256 acc[TQ_MAX_HEAD_DIM / 8];
        for (uint32_t r = 0; r < nr; r++)
            acc[r] = _mm256_setzero_ps();
        for (uint32_t j = 0; j < n; j++) {
            const __m256 sg = _mm256_set1_ps((signs[j >> 5] >> (j & 31)) & 1 ? 1.0f : -1.0f);
            const float *row = c->S + (size_t)j * n;
            for (uint32_t r = 0; r < nr; r++)
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(sg, _mm256_loadu_ps(row + 8 * r)));
        }
        for (uint32_t r = 0; r < nr; r++)
            z[r] = _mm256_add_ps(z[r], _mm256_mul_ps(coef, acc[r]));
    }
    fwht(z, nr);
    const __m256 f = _mm256_set1_ps(1.0f / (float)n);
    for (uint32_t r = 0; r < nr; r++)
        _mm256_storeu_ps(out + 8 * r,
                         _mm256_xor_ps(_mm256_mul_ps(z[r], f),
                                       _mm256_loadu_ps((const float *)(c->dsign + 8 * r))));
}

/* fp16 row -> float, non-finite values read as 0 (FORMAT.md, "Input"). */
TQ_AVX2 void tqkv__f16_row_avx2(const uint16_t *src, uint32_t n, float *dst)
{
    const __m256i expm = _mm256_set1_epi32(0x7f800000);
    uint32_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j)));
        __m256i e = _mm256_and_si256(_mm256_castps_si256(f), expm);
        __m256 ok = _mm256_castsi256_ps(
            _mm256_xor_si256(_mm256_cmpeq_epi32(e, expm), _mm256_set1_epi32(-1)));
        _mm256_storeu_ps(dst + j, _mm256_and_ps(f, ok));
    }
    for (; j < n; j++) {
        float f = tq__f16_to_f32(src[j]);
        dst[j] = isfinite(f) ? f : 0.0f;
    }
}

/* float row -> fp16 (round to nearest even, as tq__f32_to_f16). */
TQ_AVX2 void tqkv__f16_store_avx2(const float *src, uint32_t n, uint16_t *dst)
{
    uint32_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(dst + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
    for (; j < n; j++)
        dst[j] = tq__f32_to_f16(src[j]);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Plane packing with pext: the same words as tqkv__pack_codes (n is a multiple of 16). */
TQ_AVX2 void tqkv__pack_codes_bmi2(const uint8_t *codes, uint32_t n, uint32_t m, uint32_t *w0,
                                   uint32_t *w1)
{
    switch (m) {
    case 4:
        for (uint32_t i = 0; i < n / 8; i++)
            w0[i] = (uint32_t)_pext_u64(load64(codes + 8 * i), 0x0F0F0F0F0F0F0F0Full);
        return;
    case 8:
        memcpy(w0, codes, n);
        return;
    case 2:
    case 3:
        for (uint32_t i = 0; i < n / 16; i++)
            w0[i] = (uint32_t)_pext_u64(load64(codes + 16 * i), 0x0303030303030303ull) |
                    (uint32_t)_pext_u64(load64(codes + 16 * i + 8), 0x0303030303030303ull) << 16;
        if (m == 2)
            return;
        for (uint32_t i = 0; i < (n + 31) / 32; i++) {
            uint32_t w = 0;
            for (uint32_t q = 0; q < 4 && 32 * i + 8 * q < n; q++)
                w |= (uint32_t)_pext_u64(load64(codes + 32 * i + 8 * q), 0x0404040404040404ull)
                     << (8 * q);
            w1[i] = w;
        }
        return;
    case 1:
        for (uint32_t i = 0; i < (n + 31) / 32; i++) {
            uint32_t w = 0;
            for (uint32_t q = 0; q < 4 && 32 * i + 8 * q < n; q++)
                w |= (uint32_t)_pext_u64(load64(codes + 32 * i + 8 * q), 0x0101010101010101ull)
                     << (8 * q);
            w0[i] = w;
        }
        return;
    }
}

TQ_AVX2 void tqkv__unpack_codes_bmi2(const uint32_t *w0, const uint32_t *w1, uint32_t n,
                                     uint32_t m, uint8_t *codes)
{
    uint64_t v;
    switch (m) {
    case 4:
        for (uint32_t i = 0; i < n / 8; i++) {
            v = _pdep_u64(w0[i], 0x0F0F0F0F0F0F0F0Full);
            memcpy(codes + 8 * i, &v, 8);
        }
        return;
    case 8:
        memcpy(codes, w0, n);
        return;
    case 2:
    case 3:
        for (uint32_t i = 0; i < n / 16; i++) {
            v = _pdep_u64(w0[i] & 0xffff, 0x0303030303030303ull);
            memcpy(codes + 16 * i, &v, 8);
            v = _pdep_u64(w0[i] >> 16, 0x0303030303030303ull);
            memcpy(codes + 16 * i + 8, &v, 8);
        }
        if (m == 2)
            return;
        for (uint32_t k = 0; k < n; k += 8) {
            v = _pdep_u64((w1[k >> 5] >> (k & 31)) & 0xff, 0x0404040404040404ull);
            uint64_t c;
            memcpy(&c, codes + k, 8);
            c |= v;
            memcpy(codes + k, &c, 8);
        }
        return;
    case 1:
        for (uint32_t k = 0; k < n; k += 8) {
            v = _pdep_u64((w0[k >> 5] >> (k & 31)) & 0xff, 0x0101010101010101ull);
            memcpy(codes + k, &v, 8);
        }
        return;
    }
}

#endif
