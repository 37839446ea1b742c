/* Lloyd-Max codebooks for the coordinates of a randomly rotated unit vector, scaled to unit
 * variance (t = sqrt(n) * u_k). Two densities: the exact one of dimension n,
 * f(t) ~ (1 - t^2/n)^((n-3)/2) on [-sqrt(n), sqrt(n)], and its Gaussian limit N(0, 1).
 *
 * Procedure (FORMAT.md refers to it; all in double, results rounded to float at the end):
 *   - start from the quantiles (i + 1/2)/2^b of f^(1/3) (compander_init below); the support is
 *     [-12, 12] for the Gaussian (the mass outside is below 1e-32);
 *   - Lloyd iterations: boundaries at midpoints, each centroid the conditional mean of its cell,
 *     until no centroid moves by more than 1e-12, at most 5000 iterations for b <= 4 and 300 for
 *     b = 8 (an 8-bit code is near-lossless; its last digits do not matter, its cost does);
 *   - cell masses: Gaussian through erf(); exact density through a cumulative table on 8192
 *     Simpson cells over [-L, L], L = min(sqrt(n), 40), completed by one Simpson step inside the
 *     last cell; first moments in closed form (d/dt of the antiderivative).
 * The codebook is symmetrised at the end (c[i] = -c[2^b-1-i]) so that boundaries at zero are
 * exactly zero. Computed on first use, cached for the life of the process, thread-safe. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "tq_internal.h"
#include "tqkv_alloc.h"

#define GRID 8192

typedef struct {
    tq_codebook_kind kind;
    double n, L, h;
    double *cum; /* [GRID + 1] cumulative of the unnormalised density from -L */
    double mass;
} density;

static double dens_f(const density *d, double t)
{
    if (d->kind == TQ_CODEBOOK_GAUSSIAN)
        return exp(-0.5 * t * t);
    double u = 1.0 - t * t / d->n;
    if (u <= 0.0)
        return 0.0;
    return pow(u, (d->n - 3.0) / 2.0);
}

/* Antiderivative of t * f(t). */
static double dens_g(const density *d, double t)
{
    if (d->kind == TQ_CODEBOOK_GAUSSIAN)
        return -exp(-0.5 * t * t);
    double u = 1.0 - t * t / d->n;
    if (u <= 0.0)
        return 0.0;
    return -d->n / (d->n - 1.0) * pow(u, (d->n - 1.0) / 2.0);
}

static double simpson(const density *d, double a, double b)
{
    return (b - a) / 6.0 * (dens_f(d, a) + 4.0 * dens_f(d, 0.5 * (a + b)) + dens_f(d, b));
}

/* Unnormalised cumulative mass up to t. */
static double dens_cum(const density *d, double t)
{
    if (d->kind == TQ_CODEBOOK_GAUSSIAN)
        return 0.5 * (1.0 + erf(t / sqrt(2.0)));
    if (t <= -d->L)
        return 0.0;
    if (t >= d->L)
        return d->cum[GRID];
    double pos = (t + d->L) / d->h;
    int i = (int)pos;
    if (i >= GRID)
        i = GRID - 1;
    double a = -d->L + i * d->h;
    return d->cum[i] + simpson(d, a, t);
}

static int density_init(density *d, tq_codebook_kind kind, uint32_t n)
{
    d->kind = kind;
    d->n = n;
    d->cum = NULL;
    if (kind == TQ_CODEBOOK_GAUSSIAN) {
        d->mass = 1.0;
        return 0;
    }
    d->L = sqrt((double)n) < 40.0 ? sqrt((double)n) : 40.0;
    d->h = 2.0 * d->L / GRID;
    d->cum = tqkv_mallocarray(GRID + 1, sizeof(double));
    if (!d->cum)
        return TQKV_ENOMEM;
    d->cum[0] = 0.0;
    for (int i = 0; i < GRID; i++) {
        double a = -d->L + i * d->h;
        d->cum[i + 1] = d->cum[i] + simpson(d, a, a + d->h);
    }
    d->mass = d->cum[GRID];
    return 0;
}

static void density_close(density *d) { tqkv_free(d->cum); }

/* Mass and first moment of the cell [a, b] (normalised). */
static void cell(const density *d, double a, double b, double *m0, double *m1)
{
    *m0 = (dens_cum(d, b) - dens_cum(d, a)) / d->mass;
    double norm = d->kind == TQ_CODEBOOK_GAUSSIAN ? sqrt(2.0 * M_PI) : d->mass;
    *m1 = (dens_g(d, b) - dens_g(d, a)) / norm;
}

static double lo_end(const density *d) { return d->kind == TQ_CODEBOOK_GAUSSIAN ? -12.0 : -d->L; }

/* Start at the asymptotically optimal point density f^(1/3): centroid i at the (i + 1/2)/K
 * quantile of f^(1/3), found on a uniform grid of 8192 cells over [lo, -lo] (midpoint rule,
 * linear interpolation). Without this, Lloyd crawls in the near-empty tail cells. */
static void compander_init(const density *d, uint32_t K, double *c)
{
    double lo = lo_end(d), h = -2.0 * lo / GRID, acc = 0.0;
    static _Thread_local double cum[GRID + 1];
    cum[0] = 0.0;
    for (int i = 0; i < GRID; i++) {
        acc += cbrt(dens_f(d, lo + (i + 0.5) * h));
        cum[i + 1] = acc;
    }
    int j = 0;
    for (uint32_t i = 0; i < K; i++) {
        double target = (i + 0.5) / K * acc;
        while (j < GRID - 1 && cum[j + 1] < target)
            j++;
        double span = cum[j + 1] - cum[j];
        double frac = span > 0.0 ? (target - cum[j]) / span : 0.5;
        c[i] = lo + (j + frac) * h;
    }
}

static int lloyd(tq_codebook_kind kind, uint32_t n, uint32_t bits, double *c)
{
    density d;
    int rc = density_init(&d, kind, n);
    if (rc)
        return rc;
    uint32_t K = 1u << bits;
    double lo = lo_end(&d), hi = -lo;
    compander_init(&d, K, c);
    int max_it = bits <= 4 ? 5000 : 300;
    for (int it = 0; it < max_it; it++) {
        double moved = 0.0;
        double a = lo;
        for (uint32_t i = 0; i < K; i++) {
            double b = i + 1 < K ? 0.5 * (c[i] + c[i + 1]) : hi;
            double m0, m1, nc;
            cell(&d, a, b, &m0, &m1);
            if (m0 > 1e-300)
                nc = m1 / m0;
            else
                nc = 0.5 * (fmax(a, lo) + fmin(b, hi));
            if (fabs(nc - c[i]) > moved)
                moved = fabs(nc - c[i]);
            c[i] = nc;
            a = b;
        }
        if (moved < 1e-12)
            break;
    }
    for (uint32_t i = 0; i < K / 2; i++) {
        double v = 0.5 * (c[K - 1 - i] - c[i]);
        c[i] = -v;
        c[K - 1 - i] = v;
    }
    density_close(&d);
    return 0;
}

/* [kind][log2(n) - 4][bits index] ; bits index 0..3 for 1..4, 4 for 8 */
static _Atomic(float *) g_books[2][5][5];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static int book_index(uint32_t n, uint32_t bits, int *ni, int *bi)
{
    if (n < 16 || n > 256 || (n & (n - 1)))
        return -1;
    *ni = __builtin_ctz(n) - 4;
    if (bits >= 1 && bits <= 4)
        *bi = (int)bits - 1;
    else if (bits == 8)
        *bi = 4;
    else
        return -1;
    return 0;
}

const float *tq_codebook(tq_codebook_kind kind, uint32_t n, uint32_t bits)
{
    int ni, bi;
    if ((kind != TQ_CODEBOOK_EXACT && kind != TQ_CODEBOOK_GAUSSIAN) || book_index(n, bits, &ni, &bi))
        return NULL;
    float *b = atomic_load_explicit(&g_books[kind][ni][bi], memory_order_acquire);
    if (b)
        return b;
    pthread_mutex_lock(&g_lock);
    b = atomic_load_explicit(&g_books[kind][ni][bi], memory_order_relaxed);
    if (!b) {
        uint32_t K = 1u << bits;
        double c[256];
        float *nb = tqkv_mallocarray(K, sizeof(float));
        if (nb && lloyd(kind, n, bits, c) == 0) {
            for (uint32_t i = 0; i < K; i++)
                nb[i] = (float)c[i];
            b = nb;
            atomic_store_explicit(&g_books[kind][ni][bi], b, memory_order_release);
        } else {
            tqkv_free(nb);
        }
    }
    pthread_mutex_unlock(&g_lock);
    return b;
}

double tqkv__codebook_distortion(tq_codebook_kind kind, uint32_t n, uint32_t bits,
                                 tq_codebook_kind dkind)
{
    const float *cb = tq_codebook(kind, n, bits);
    if (!cb)
        return -1.0;
    density d;
    if (density_init(&d, dkind, n))
        return -1.0;
    uint32_t K = 1u << bits;
    double lo = lo_end(&d), hi = -lo, a = lo, D = 0.0;
    for (uint32_t i = 0; i < K; i++) {
        /* boundaries as the encoder uses them (float midpoints) */
        double b = i + 1 < K ? (double)((cb[i] + cb[i + 1]) * 0.5f) : hi;
        double c = cb[i];
        /* E[(t - c)^2 ; cell] by composite Simpson on 256 sub-cells */
        int S = 256;
        double aa = fmax(a, lo), bb = fmin(b, hi), hh = (bb - aa) / S, acc = 0.0;
        if (bb > aa) {
            for (int s = 0; s < S; s++) {
                double x0 = aa + s * hh, x1 = x0 + hh, xm = 0.5 * (x0 + x1);
                acc += hh / 6.0 *
                       ((x0 - c) * (x0 - c) * dens_f(&d, x0) +
                        4.0 * (xm - c) * (xm - c) * dens_f(&d, xm) +
                        (x1 - c) * (x1 - c) * dens_f(&d, x1));
            }
        }
        D += acc;
        a = b;
    }
    double norm = dkind == TQ_CODEBOOK_GAUSSIAN ? sqrt(2.0 * M_PI) : d.mass;
    density_close(&d);
    return D / norm;
}
