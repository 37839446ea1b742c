/* Host side of libtq's CUDA path: device discovery, CUDA error mapping, and the per-device cache
 * of derived tables (codebooks with their boundaries, rotation signs, QJL matrices). The tables
 * are computed by the CPU library (tq_codebook, tqkv__rotation_signs, tqkv__qjl_get), so the
 * GPU uses exactly the numbers the reference uses; each is uploaded once per device and never
 * freed (a namespace's tables live as long as the process, like the CPU caches). The upload is a
 * synchronous cudaMemcpy so that a table is complete before any stream can read it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tqc.cuh"

extern "C" {
#include "tqkv_log.h"
}

int tqkv__cuda_err(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return TQKV_ENODEVICE;
    TQKV_LOGE("cuda", "msg=\"%s failed\" error=%s", what, cudaGetErrorString(e));
    if (e == cudaErrorMemoryAllocation)
        return TQKV_ENOMEM;
    if (e == cudaErrorInvalidValue)
        return TQKV_EINVAL;
    return TQKV_ECUDA;
}

extern "C" int tq_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

enum { TAB_CODEBOOK = 1, TAB_SIGNS = 2, TAB_QJL = 3 };

typedef struct tab_entry {
    struct tab_entry *next;
    int device, type;
    uint64_t a;
    uint32_t b, c;
    void *dev; /* device copy */
} tab_entry;

static tab_entry *g_tabs;
static pthread_mutex_t g_tabs_lock = PTHREAD_MUTEX_INITIALIZER;

/* Finds or uploads a table. `fill` writes `bytes` bytes of the host image. */
static int tab_get(int device, int type, uint64_t a, uint32_t b, uint32_t c, size_t bytes,
                   int (*fill)(void *host, uint64_t a, uint32_t b, uint32_t c), void **out)
{
    int rc = 0;
    void *host = NULL;
    tab_entry *e;
    pthread_mutex_lock(&g_tabs_lock);
    for (e = g_tabs; e; e = e->next)
        if (e->device == device && e->type == type && e->a == a && e->b == b && e->c == c)
            break;
    if (e) {
        *out = e->dev;
        goto out;
    }
    host = malloc(bytes);
    e = (tab_entry *)calloc(1, sizeof(*e));
    if (!host || !e) {
        rc = TQKV_ENOMEM;
        goto fail;
    }
    rc = fill(host, a, b, c);
    if (rc)
        goto fail;
    rc = tqkv__cuda_err(cudaMalloc(&e->dev, bytes), "cudaMalloc(table)");
    if (rc)
        goto fail;
    rc = tqkv__cuda_err(cudaMemcpy(e->dev, host, bytes, cudaMemcpyHostToDevice), "table upload");
    if (rc) {
        cudaFree(e->dev);
        goto fail;
    }
    e->device = device;
    e->type = type;
    e->a = a;
    e->b = b;
    e->c = c;
    e->next = g_tabs;
    g_tabs = e;
    *out = e->dev;
    e = NULL;
fail:
    free(e);
    free(host);
out:
    pthread_mutex_unlock(&g_tabs_lock);
    return rc;
}

/* Codebook (kind a, n b, m c): 2^m centroids then 2^m - 1 boundaries, as tqkv__part_ctx_init
 * computes them: bnd[j] = (cent[j] + cent[j+1]) * 0.5f. */
static int fill_codebook(void *host, uint64_t a, uint32_t n, uint32_t m)
{
    const float *cent = tq_codebook((tq_codebook_kind)a, n, m);
    if (!cent)
        return TQKV_EBADCODEC;
    float *h = (float *)host;
    uint32_t k = 1u << m;
    for (uint32_t j = 0; j < k; j++)
        h[j] = cent[j];
    for (uint32_t j = 0; j + 1 < k; j++)
        h[k + j] = (cent[j] + cent[j + 1]) * 0.5f;
    return 0;
}

static int fill_signs(void *host, uint64_t seed, uint32_t n, uint32_t p)
{
    tqkv__rotation_signs(seed, n, p, (uint32_t *)host);
    return 0;
}

static int fill_qjl(void *host, uint64_t seed, uint32_t n, uint32_t p)
{
    tq__qjl q;
    int rc = tqkv__qjl_get(seed, n, p, &q);
    if (rc)
        return rc;
    memcpy(host, q.S, (size_t)n * n * sizeof(float));
    memcpy((float *)host + (size_t)n * n, q.St, (size_t)n * n * sizeof(float));
    return 0;
}

int tqkv__cuda_rec(const tq_recipe *r, uint32_t head_dim, uint32_t n_heads, uint32_t n_tokens,
                   uint64_t seed, tq_codebook_kind cb, tqc_rec *out)
{
    uint32_t P = tq_head_dim_padded(head_dim);
    if (!r || !out || !P || n_heads == 0 || n_heads > TQ_MAX_KV_HEADS || n_tokens == 0 ||
        n_tokens > TQ_MAX_TOKENS)
        return TQKV_EINVAL;
    if (tq_recipe_validate(r, head_dim) != 0)
        return TQKV_EBADCODEC;
    if (cb != TQ_CODEBOOK_EXACT && cb != TQ_CODEBOOK_GAUSSIAN)
        return TQKV_EBADCODEC;
    int device = 0;
    int rc = tqkv__cuda_err(cudaGetDevice(&device), "cudaGetDevice");
    if (rc)
        return rc;
    tq__layout L;
    tqkv__layout(r, P, n_tokens, &L);
    memset(out, 0, sizeof(*out));
    out->P = P;
    out->T = n_tokens;
    out->head_dim = head_dim;
    out->n_heads = n_heads;
    out->raw = L.raw;
    out->raw_dtype = r->raw_dtype;
    out->n_parts = L.n_parts;
    out->mask_words = L.mask_words;
    out->norm = r->norm;
    if (L.record_size > UINT32_MAX / 2)
        return TQKV_EOVERFLOW;
    out->record_size = (uint32_t)L.record_size;
    for (uint32_t p = 0; p < L.n_parts; p++) {
        const tq__part_layout *pl = &L.part[p];
        tqc_part *d = &out->part[p];
        d->n = pl->n;
        d->bits = pl->bits;
        d->m = pl->m;
        d->prod = pl->prod;
        d->n_planes = pl->n_planes;
        d->sign_words = pl->sign_words;
        d->scale_off = (uint32_t)pl->scale_off;
        d->gamma_off = (uint32_t)pl->gamma_off;
        d->signs_off = (uint32_t)pl->signs_off;
        for (int i = 0; i < 2; i++) {
            d->plane_w[i] = pl->plane_w[i];
            d->plane_words[i] = pl->plane_words[i];
            d->plane_off[i] = (uint32_t)pl->plane_off[i];
        }
        /* Part index in the table seeds: 0 when there is no split (FORMAT.md). */
        uint32_t pidx = L.n_parts == 2 ? p : 0;
        void *t;
        if (pl->m > 0) {
            size_t k = (size_t)1 << pl->m;
            rc = tab_get(device, TAB_CODEBOOK, (uint64_t)cb, pl->n, pl->m,
                         (2 * k - 1) * sizeof(float), fill_codebook, &t);
            if (rc)
                return rc;
            d->cent = (const float *)t;
            d->bnd = d->cent + k;
        }
        rc = tab_get(device, TAB_SIGNS, seed, pl->n, pidx, pl->n * sizeof(uint32_t), fill_signs,
                     &t);
        if (rc)
            return rc;
        d->dsign = (const uint32_t *)t;
        if (pl->prod) {
            rc = tab_get(device, TAB_QJL, seed, pl->n, pidx,
                         2 * (size_t)pl->n * pl->n * sizeof(float), fill_qjl, &t);
            if (rc)
                return rc;
            d->S = (const float *)t;
            d->St = d->S + (size_t)pl->n * pl->n;
        }
    }
    return 0;
}
