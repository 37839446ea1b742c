/* Helpers shared by the client integration tests (tests/integration/test_client_*.c): start a
 * tqkvd through the harness and connect libtqkv to it, make deterministic raw KV and keys, and
 * encode blocks locally with libtq so that what the daemon returns can be compared byte for byte
 * with what the codec produces. Header-only (static functions): each test is one program. */
#ifndef TEST_CLIENT_UTIL_H
#define TEST_CLIENT_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq.h"
#include "tqkv.h"
#include "tqkvd_harness.h"

/* The small geometry most tests use: 4 layers, 2 KV heads, head_dim 64, 16-token chunks. */
#define TC_LAYERS 4
#define TC_HEADS 2
#define TC_HEAD_DIM 64
#define TC_TOKENS 16

typedef struct {
    uint32_t n_layers, n_kv_heads, head_dim, tokens;
    const char *preset;
} tc_geom;

static inline tc_geom tc_geom_small(const char *preset)
{
    tc_geom g = {TC_LAYERS, TC_HEADS, TC_HEAD_DIM, TC_TOKENS, preset};
    return g;
}

static inline size_t tc_raw_len(const tc_geom *g, uint32_t n_tokens)
{
    return (size_t)g->n_layers * 2 * n_tokens * g->n_kv_heads * g->head_dim * 2;
}

/* float -> IEEE binary16, round to nearest even; the inputs here are small normal numbers. */
static inline uint16_t tc_f2h(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp <= 0)
        return (uint16_t)sign; /* flush tiny values to zero: fine for test data */
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)h;
}

/* xorshift64*: deterministic test data. */
static inline uint64_t tc_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Deterministic fp16 raw KV [layers][2][tokens][heads][head_dim] from `seed`; malloc'd. */
static inline uint16_t *tc_make_raw(const tc_geom *g, uint32_t n_tokens, uint64_t seed)
{
    size_t n = tc_raw_len(g, n_tokens) / 2;
    uint16_t *kv = malloc(n * 2);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; kv && i < n; i += 2) {
        /* sum of 2 uniforms per value (a triangular density), two values per draw: cheap, and
         * any spread of values exercises the codec */
        uint64_t r = tc_rand(&s);
        for (size_t k = 0; k < 2 && i + k < n; k++) {
            uint32_t w = (uint32_t)(r >> (32 * k));
            float v = (float)(w & 0xffff) / 65536.0f + (float)(w >> 16) / 65536.0f;
            kv[i + k] = tc_f2h((v - 1.0f) * 2.5f);
        }
    }
    return kv;
}

static inline tqkv_key tc_key(uint32_t i, uint32_t tag)
{
    tqkv_key k;
    uint64_t s = ((uint64_t)tag << 32 | i) + 12345;
    for (int j = 0; j < TQKV_KEY_BYTES; j += 8) {
        uint64_t r = tc_rand(&s);
        memcpy(k.bytes + j, &r, 8);
    }
    return k;
}

/* Encodes raw KV locally exactly as the daemon must (default seed, exact codebooks).
 * @return a malloc'd block and its length in *len, or NULL. */
static inline void *tc_encode(const tc_geom *g, const tqkv_key *key, const void *raw,
                              uint32_t n_tokens, size_t *len)
{
    tq_codec_params p;
    if (tq_codec_params_init(&p, g->preset, (uint16_t)g->n_layers, (uint16_t)g->n_kv_heads,
                             (uint16_t)g->head_dim, TQ_DTYPE_F16))
        return NULL;
    size_t cap = tq_block_size(&p, n_tokens, 0, g->n_layers);
    void *dst = cap ? malloc(cap) : NULL;
    if (dst && tq_block_encode_packed(&p, key->bytes, n_tokens, raw, tc_raw_len(g, n_tokens), dst,
                                      cap, len)) {
        free(dst);
        dst = NULL;
    }
    return dst;
}

static inline int tc_register(tqkv_client *c, const char *name, const tc_geom *g)
{
    tqkv_namespace ns;
    memset(&ns, 0, sizeof(ns));
    ns.name = name;
    ns.n_layers = g->n_layers;
    ns.n_kv_heads = g->n_kv_heads;
    ns.head_dim = g->head_dim;
    ns.dtype = TQKV_DTYPE_F16;
    ns.chunk_size = g->tokens;
    ns.preset = g->preset;
    return tqkv_register(c, &ns);
}

/* Starts a daemon (extra flags may be NULL); prints why on failure. @return 0 or -1. */
static inline int tc_start(tqkvd_harness *h, const char *const *args)
{
    if (tqkvd_harness_start(h, args) != 0) {
        fprintf(stderr, "cannot start tqkvd\n");
        return -1;
    }
    if (!h->tcp_url[0]) /* older harnesses only fill the port */
        snprintf(h->tcp_url, sizeof(h->tcp_url), "tcp://127.0.0.1:%u", (unsigned)h->tcp_port);
    return 0;
}

/* Connects to the daemon's URL with an optional token. @return a client or NULL (printed). */
static inline tqkv_client *tc_connect(const char *url, const char *token)
{
    tqkv_options o;
    char err[256];
    tqkv_options_init(&o);
    o.token = token;
    o.client_name = "test";
    o.errbuf = err;
    o.errbuf_len = sizeof(err);
    o.timeout_ms = 60000;
    tqkv_client *c = NULL;
    int rc = tqkv_connect(url, &o, &c);
    if (rc) {
        fprintf(stderr, "connect %s: %s (%s)\n", url, tqkv_err_name(rc), err);
        return NULL;
    }
    return c;
}

/* A stats value as a number (0 when absent). */
static inline uint64_t tc_stat(tqkv_client *c, const char *ns, const char *name)
{
    tqkv_kv_list l;
    if (tqkv_stats(c, ns, &l))
        return 0;
    const char *v = tqkv_kv_list_get(&l, name);
    uint64_t r = v ? strtoull(v, NULL, 10) : 0;
    tqkv_kv_list_free(&l);
    return r;
}

#endif
