/* Seeded tables of the codec: the rotation's ±1 diagonal and the QJL Gaussian matrices, both
 * drawn from splitmix64 exactly as FORMAT.md ("Derived tables") says, so that any implementation
 * derives the same numbers from the block's seed. Signs are cheap and recomputed per call; QJL
 * matrices (n^2 floats) are cached per (seed, n, part) for the life of the process. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "tq_internal.h"
#include "tqkv_alloc.h"

void tqkv__rotation_signs(uint64_t seed, uint32_t n, uint32_t p, uint32_t *dsign)
{
    uint64_t s = seed ^ (0x5349474E00000000ull | ((uint64_t)n << 8) | p);
    for (uint32_t k = 0; k < n; k++)
        dsign[k] = (tq__splitmix64(&s) >> 63) ? 0x80000000u : 0u;
}

typedef struct qjl_entry {
    struct qjl_entry *next;
    uint64_t seed;
    uint32_t n, p;
    float *S, *St;
} qjl_entry;

/* Entries are never freed: callers keep the pointers while they work. Seeds are per namespace,
 * so the list stays short in practice. */
static qjl_entry *g_qjl;
static pthread_mutex_t g_qjl_lock = PTHREAD_MUTEX_INITIALIZER;

static void qjl_fill(uint64_t seed, uint32_t n, uint32_t p, float *S, float *St)
{
    uint64_t s = seed ^ (0x514A4C0000000000ull | ((uint64_t)n << 8) | p);
    const double two_pi = 6.283185307179586476925286766559;
    size_t total = (size_t)n * n;
    for (size_t i = 0; i < total; i += 2) {
        uint64_t a = tq__splitmix64(&s), b = tq__splitmix64(&s);
        double u1 = (double)((a >> 11) + 1) * 0x1.0p-53;
        double u2 = (double)(b >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        S[i] = (float)(r * cos(two_pi * u2));
        S[i + 1] = (float)(r * sin(two_pi * u2));
    }
    for (uint32_t k = 0; k < n; k++)
        for (uint32_t j = 0; j < n; j++)
            St[(size_t)j * n + k] = S[(size_t)k * n + j];
}

int tqkv__qjl_get(uint64_t seed, uint32_t n, uint32_t p, tq__qjl *out)
{
    int rc = 0;
    pthread_mutex_lock(&g_qjl_lock);
    qjl_entry *e;
    for (e = g_qjl; e; e = e->next)
        if (e->seed == seed && e->n == n && e->p == p)
            break;
    if (!e) {
        e = tqkv_calloc(1, sizeof(*e));
        if (!e) {
            rc = TQKV_ENOMEM;
            goto out;
        }
        e->S = tqkv_mallocarray((size_t)n * n, sizeof(float));
        e->St = tqkv_mallocarray((size_t)n * n, sizeof(float));
        if (!e->S || !e->St) {
            tqkv_free(e->S);
            tqkv_free(e->St);
            tqkv_free(e);
            rc = TQKV_ENOMEM;
            goto out;
        }
        e->seed = seed;
        e->n = n;
        e->p = p;
        qjl_fill(seed, n, p, e->S, e->St);
        e->next = g_qjl;
        g_qjl = e;
    }
    out->S = e->S;
    out->St = e->St;
out:
    pthread_mutex_unlock(&g_qjl_lock);
    return rc;
}

const float *tq_qjl_matrix(uint64_t seed, uint32_t n, uint32_t part)
{
    tq__qjl q;
    if (n < 16 || n > TQ_MAX_HEAD_DIM || (n & (n - 1)) || part > 1)
        return NULL;
    return tqkv__qjl_get(seed, n, part, &q) ? NULL : q.S;
}
