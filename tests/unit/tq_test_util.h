/* Helpers shared by the codec unit tests: a seeded Gaussian generator and random unit vectors,
 * so every test is reproducible without depending on the C library's rand(). */
#ifndef TQ_TEST_UTIL_H
#define TQ_TEST_UTIL_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t s;
    int have;
    double spare;
} tq_rng;

static inline uint64_t tq_rng_u64(tq_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline double tq_rng_unit(tq_rng *r) { return (double)(tq_rng_u64(r) >> 11) * 0x1.0p-53; }

static inline double tq_rng_gauss(tq_rng *r)
{
    if (r->have) {
        r->have = 0;
        return r->spare;
    }
    double u1 = ((double)(tq_rng_u64(r) >> 11) + 1.0) * 0x1.0p-53, u2 = tq_rng_unit(r);
    double m = sqrt(-2.0 * log(u1));
    r->spare = m * sin(2.0 * M_PI * u2);
    r->have = 1;
    return m * cos(2.0 * M_PI * u2);
}

/* x[n] uniform on the unit sphere. */
static inline void tq_rng_sphere(tq_rng *r, float *x, uint32_t n)
{
    double ss = 0.0, g[256];
    for (uint32_t k = 0; k < n; k++) {
        g[k] = tq_rng_gauss(r);
        ss += g[k] * g[k];
    }
    double inv = 1.0 / sqrt(ss);
    for (uint32_t k = 0; k < n; k++)
        x[k] = (float)(g[k] * inv);
}

#endif
