/* Unit tests of the store (storage/tiers.c): namespaces, reserve/commit PUT and its idempotence,
 * LRU eviction order at capacity, pins, leases (with an injected clock), read references that
 * defer frees, LOOKUP prefix semantics, byte accounting against the arena after random
 * operations, capacity shrink, clear, stats, a failing allocator, a put storm of 4x the capacity
 * (arena residency checked with mincore, contents checked), and a mock keyed tier that exercises
 * demotion, promotion and asynchronous completions through the tier vtable. */
#include <sys/mman.h>
#include <unistd.h>

#include "tiers.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_test.h"

#define PG 4096u

/* The store takes its clock as a parameter; the lease tests advance this one by hand so that
 * expiry is exact and independent of how fast the machine is. */
static uint64_t manual_now;
static uint64_t manual_clock(void *arg)
{
    (void)arg;
    return manual_now;
}

static tqkv_store *make_store(uint64_t cap_pages)
{
    tqkv_store_config c = {cap_pages * PG, cap_pages * PG * 4, PG, manual_clock, NULL};
    tqkv_store *s = NULL;
    manual_now = 1000000000ull;
    return tqkv_store_create(&c, &s) == 0 ? s : NULL;
}

static tqkv_ns *make_ns(tqkv_store *s, const char *name)
{
    tqkv_ns_desc d;
    memset(&d, 0, sizeof(d));
    snprintf(d.name, sizeof(d.name), "%s", name);
    snprintf(d.preset, sizeof(d.preset), "tq4");
    d.n_layers = 2;
    d.n_kv_heads = 4;
    d.head_dim = 128;
    d.dtype = 1;
    d.chunk_size = 256;
    tqkv_ns *ns = NULL;
    return tqkv_store_ns_register(s, &d, &ns, NULL) == 0 ? ns : NULL;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void key_of(uint64_t i, uint8_t key[TQKV_KEY_BYTES])
{
    for (int w = 0; w < 4; w++) {
        uint64_t v = mix(i * 4 + (uint64_t)w);
        memcpy(key + 8 * w, &v, 8);
    }
}

static void fill(uint64_t i, uint8_t *p, size_t len)
{
    for (size_t j = 0; j < len; j++)
        p[j] = (uint8_t)(mix(i) >> (8 * (j % 8))) ^ (uint8_t)(j * 131);
}

static int check_content(uint64_t i, const uint8_t *p, size_t len)
{
    for (size_t j = 0; j < len; j++)
        if (p[j] != ((uint8_t)(mix(i) >> (8 * (j % 8))) ^ (uint8_t)(j * 131)))
            return 0;
    return 1;
}

/* PUT of block i with `len` bytes. */
static int put(tqkv_store *s, tqkv_ns *ns, uint64_t i, size_t len)
{
    uint8_t key[TQKV_KEY_BYTES];
    key_of(i, key);
    tqkv_store_put *p;
    void *buf;
    int r = tqkv_store_put_reserve(s, ns, key, len, &p, &buf);
    if (r < 0)
        return r;
    fill(i, buf, len);
    return tqkv_store_put_commit(s, p, len);
}

/* 1: present with intact content, 0: miss, -1: present but corrupt. */
static int have(tqkv_store *s, tqkv_ns *ns, uint64_t i, size_t len)
{
    uint8_t key[TQKV_KEY_BYTES];
    key_of(i, key);
    tqkv_store_ref *ref = NULL;
    int r = tqkv_store_get(s, ns, key, &ref, NULL, NULL);
    if (r == TQKV_STORE_MISS)
        return 0;
    if (r != TQKV_STORE_HIT)
        return -1;
    int ok = tqkv_store_ref_len(ref) == len && check_content(i, tqkv_store_ref_data(ref), len);
    tqkv_store_ref_release(s, ref);
    return ok ? 1 : -1;
}

static void host_stats(tqkv_store *s, tqkv_tier_stats *out)
{
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    *out = st.tiers[TQKV_TIER_HOST];
}

static void test_namespaces(void)
{
    tqkv_store *s = make_store(16);
    ASSERT_TRUE(s);
    tqkv_ns_desc d;
    memset(&d, 0, sizeof(d));
    strcpy(d.name, "llama");
    strcpy(d.preset, "tq3.5");
    d.fingerprint_len = 3;
    memcpy(d.fingerprint, "abc", 3);
    d.n_layers = 32;
    tqkv_ns *a = NULL, *b = NULL;
    int created = -1;
    ASSERT_OK(tqkv_store_ns_register(s, &d, &a, &created));
    ASSERT_EQ_INT(created, 1);
    d.name[10] = 'x'; /* garbage after the NUL does not matter */
    ASSERT_OK(tqkv_store_ns_register(s, &d, &b, &created));
    ASSERT_EQ_INT(created, 0);
    ASSERT_TRUE(a == b);
    d.n_layers = 40;
    ASSERT_ERR(tqkv_store_ns_register(s, &d, &b, NULL), TQKV_ENSCONFLICT);
    d.n_layers = 32;
    d.fingerprint[0] = 'z';
    ASSERT_ERR(tqkv_store_ns_register(s, &d, &b, NULL), TQKV_ENSCONFLICT);
    memset(d.name, 0, sizeof(d.name));
    ASSERT_ERR(tqkv_store_ns_register(s, &d, &b, NULL), TQKV_EINVAL);
    memset(d.name, 'n', sizeof(d.name)); /* not terminated */
    ASSERT_ERR(tqkv_store_ns_register(s, &d, &b, NULL), TQKV_EINVAL);
    ASSERT_TRUE(tqkv_store_ns_find(s, "llama") == a);
    ASSERT_TRUE(tqkv_store_ns_find(s, "other") == NULL);
    ASSERT_TRUE(strcmp(tqkv_ns_get_desc(a)->preset, "tq3.5") == 0);
    int marker;
    tqkv_ns_set_user(a, &marker);
    ASSERT_TRUE(tqkv_ns_get_user(a) == &marker);
    tqkv_ns *c = make_ns(s, "second");
    ASSERT_TRUE(c && tqkv_ns_get_id(c) != tqkv_ns_get_id(a));
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_INT(st.namespaces, 2);
    tqkv_store_destroy(s);
}

static void test_put_get_idempotent(void)
{
    tqkv_store *s = make_store(16);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    ASSERT_OK(put(s, ns, 1, 5000));
    ASSERT_EQ_INT(have(s, ns, 1, 5000), 1);
    ASSERT_ERR(put(s, ns, 1, 5000), TQKV_EEXIST); /* present: idempotent */
    ASSERT_EQ_INT(have(s, ns, 2, 10), 0);          /* a miss is a result */

    /* two reservations of one key: the first commit wins, the second says EEXIST */
    uint8_t key[TQKV_KEY_BYTES];
    key_of(7, key);
    tqkv_store_put *p1, *p2;
    void *b1, *b2;
    ASSERT_OK(tqkv_store_put_reserve(s, ns, key, 3 * PG, &p1, &b1));
    ASSERT_OK(tqkv_store_put_reserve(s, ns, key, 3 * PG, &p2, &b2));
    fill(7, b1, 100);
    memset(b2, 0xEE, 100);
    ASSERT_OK(tqkv_store_put_commit(s, p1, 100)); /* trimmed to 100 bytes: one page */
    ASSERT_ERR(tqkv_store_put_commit(s, p2, 100), TQKV_EEXIST);
    ASSERT_EQ_INT(have(s, ns, 7, 100), 1);
    tqkv_tier_stats hs;
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.used, 2 * PG + PG); /* 5000 bytes -> 2 pages, 100 -> 1 */
    ASSERT_EQ_U64(hs.entries, 2);

    /* abort and bad commit length free the reservation */
    key_of(8, key);
    ASSERT_OK(tqkv_store_put_reserve(s, ns, key, PG, &p1, &b1));
    tqkv_store_put_abort(s, p1);
    ASSERT_OK(tqkv_store_put_reserve(s, ns, key, PG, &p1, &b1));
    ASSERT_ERR(tqkv_store_put_commit(s, p1, PG + 1), TQKV_EINVAL);
    ASSERT_EQ_INT(have(s, ns, 8, PG), 0);
    ASSERT_ERR(tqkv_store_put_reserve(s, ns, key, 0, &p1, &b1), TQKV_EINVAL);
    ASSERT_ERR(tqkv_store_put_reserve(s, ns, key, 17 * PG, &p1, &b1), TQKV_ENOSPC);

    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.puts, 2);
    ASSERT_EQ_U64(st.put_exists, 2);
    ASSERT_EQ_U64(st.put_aborts, 2);
    ASSERT_EQ_U64(st.reservations, 0);
    ASSERT_EQ_U64(st.bytes, 5100);
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.used, 3 * PG);
    tqkv_store_destroy(s);
}

static void test_lru_order(void)
{
    tqkv_store *s = make_store(8);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    for (uint64_t i = 0; i < 8; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* 0 becomes most recent: 1 is now the oldest */
    ASSERT_OK(put(s, ns, 8, PG));
    ASSERT_EQ_INT(have(s, ns, 1, PG), 0);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    ASSERT_OK(put(s, ns, 9, 2 * PG)); /* needs two pages: evicts 2 and 3 */
    ASSERT_EQ_INT(have(s, ns, 2, PG), 0);
    ASSERT_EQ_INT(have(s, ns, 3, PG), 0);
    for (uint64_t i = 4; i < 9; i++)
        ASSERT_EQ_INT(have(s, ns, i, PG), 1);
    ASSERT_EQ_INT(have(s, ns, 9, 2 * PG), 1);
    tqkv_tier_stats hs;
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.evictions, 3);
    ASSERT_EQ_U64(hs.drops, 3); /* no lower tier */
    ASSERT_EQ_U64(hs.used, 8 * PG);
    tqkv_store_destroy(s);
}

static void test_pins_protect(void)
{
    tqkv_store *s = make_store(4);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    uint8_t k0[TQKV_KEY_BYTES], k9[TQKV_KEY_BYTES];
    key_of(0, k0);
    key_of(99, k9);
    for (uint64_t i = 0; i < 4; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_OK(tqkv_store_pin(s, ns, k0));
    ASSERT_OK(tqkv_store_pin(s, ns, k0));
    ASSERT_EQ_INT(tqkv_store_pin(s, ns, k9), TQKV_STORE_MISS);
    for (uint64_t i = 4; i < 10; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* the oldest, but pinned */
    ASSERT_OK(tqkv_store_unpin(s, ns, k0));
    for (uint64_t i = 10; i < 14; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* still one pin */
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.pinned, 1);
    ASSERT_OK(tqkv_store_unpin(s, ns, k0));
    ASSERT_ERR(tqkv_store_unpin(s, ns, k0), TQKV_EINVAL);
    for (uint64_t i = 14; i < 18; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 0);
    /* everything pinned: a PUT that needs eviction fails, nothing is lost */
    for (uint64_t i = 14; i < 18; i++) {
        uint8_t k[TQKV_KEY_BYTES];
        key_of(i, k);
        ASSERT_OK(tqkv_store_pin(s, ns, k));
    }
    ASSERT_ERR(put(s, ns, 50, PG), TQKV_ENOSPC);
    for (uint64_t i = 14; i < 18; i++)
        ASSERT_EQ_INT(have(s, ns, i, PG), 1);
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.put_enospc, 1);
    tqkv_store_destroy(s);
}

static void test_leases_protect(void)
{
    tqkv_store *s = make_store(4);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    uint8_t keys[3][TQKV_KEY_BYTES];
    for (uint64_t i = 0; i < 4; i++)
        ASSERT_OK(put(s, ns, i, PG));
    for (int i = 0; i < 3; i++)
        key_of((uint64_t)i, keys[i]);
    tqkv_lookup_result res = {0};
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 2, 100, &res,
                                NULL, NULL));
    ASSERT_EQ_INT(res.hits, 2);
    ASSERT_NE_INT(res.lease_id, 0);
    uint64_t lease1 = res.lease_id;
    for (uint64_t i = 4; i < 8; i++) /* room for 2 only: 2 and 3 go, 4 and 5 go */
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    ASSERT_EQ_INT(have(s, ns, 1, PG), 1);
    manual_now += 99 * 1000000ull; /* not yet expired */
    ASSERT_OK(put(s, ns, 8, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    ASSERT_EQ_INT(have(s, ns, 1, PG), 1);
    /* LRU now: 7 8 0 1. Expired: 0 and 1 are evictable again */
    manual_now += 2 * 1000000ull;
    ASSERT_OK(put(s, ns, 9, PG));
    ASSERT_OK(put(s, ns, 10, PG));
    ASSERT_OK(put(s, ns, 11, PG));
    ASSERT_EQ_INT(have(s, ns, 0, PG), 0);
    ASSERT_EQ_INT(have(s, ns, 1, PG), 1);
    ASSERT_ERR(tqkv_store_lease_release(s, lease1), TQKV_ENOENT);

    /* explicit release ends a lease early */
    key_of(9, keys[0]);
    key_of(10, keys[1]);
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 2, 60000, &res,
                                NULL, NULL));
    ASSERT_EQ_INT(res.hits, 2);
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.leases, 1);
    for (uint64_t i = 20; i < 24; i++)
        (void)put(s, ns, i, PG);
    ASSERT_EQ_INT(have(s, ns, 9, PG), 1);
    ASSERT_EQ_INT(have(s, ns, 10, PG), 1);
    ASSERT_OK(tqkv_store_lease_release(s, res.lease_id));
    for (uint64_t i = 30; i < 34; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 9, PG), 0);
    ASSERT_EQ_INT(have(s, ns, 10, PG), 0);
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.leases, 0);

    /* a lease that outlives its entry does not touch a new entry of the same key */
    key_of(30, keys[0]);
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 1, 1000, &res,
                                NULL, NULL));
    ASSERT_OK(tqkv_store_delete(s, ns, keys[0]));
    ASSERT_OK(put(s, ns, 30, PG));
    ASSERT_OK(tqkv_store_lease_release(s, res.lease_id));
    for (uint64_t i = 40; i < 44; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(have(s, ns, 30, PG), 0);
    tqkv_store_destroy(s);
}

static void test_refs_defer_free(void)
{
    tqkv_store *s = make_store(4);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    uint8_t k0[TQKV_KEY_BYTES];
    key_of(0, k0);
    for (uint64_t i = 0; i < 4; i++)
        ASSERT_OK(put(s, ns, i, PG));
    tqkv_store_ref *ref = NULL;
    ASSERT_EQ_INT(tqkv_store_get(s, ns, k0, &ref, NULL, NULL), TQKV_STORE_HIT);
    for (uint64_t i = 1; i < 4; i++) /* make 0 the oldest again */
        ASSERT_EQ_INT(have(s, ns, i, PG), 1);
    ASSERT_OK(put(s, ns, 4, PG)); /* evicts 1, not the referenced 0 */
    ASSERT_EQ_INT(have(s, ns, 1, PG), 0);
    ASSERT_OK(tqkv_store_delete(s, ns, k0)); /* unlinked, bytes kept for the reader */
    ASSERT_EQ_INT(tqkv_store_delete(s, ns, k0), TQKV_STORE_MISS);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 0);
    tqkv_tier_stats hs;
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.used, 4 * PG);
    ASSERT_TRUE(check_content(0, tqkv_store_ref_data(ref), tqkv_store_ref_len(ref)));
    ASSERT_OK(put(s, ns, 0, PG)); /* a new block under the same key */
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    ASSERT_TRUE(check_content(0, tqkv_store_ref_data(ref), PG));
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.refs, 1);
    ASSERT_EQ_U64(st.entries, 3); /* 3, 4 and the new 0 (2 was evicted for it) */
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].used, 4 * PG); /* + the old 0, still referenced */
    tqkv_store_ref_release(s, ref);
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.used, 3 * PG);
    ASSERT_EQ_U64(hs.entries, 3);
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.refs, 0);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    tqkv_store_destroy(s);
}

static void test_lookup_prefix(void)
{
    tqkv_store *s = make_store(16);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    tqkv_ns *other = s ? make_ns(s, "other") : NULL;
    ASSERT_TRUE(ns && other);
    uint8_t keys[5][TQKV_KEY_BYTES];
    uint64_t ids[5] = {1, 2, 3, 4, 5};
    for (int i = 0; i < 5; i++)
        key_of(ids[i], keys[i]);
    ASSERT_OK(put(s, ns, 1, 10));
    ASSERT_OK(put(s, ns, 2, 10));
    ASSERT_OK(put(s, ns, 4, 10)); /* 3 missing */
    ASSERT_OK(put(s, other, 3, 10));
    uint8_t tiers[5];
    tqkv_lookup_result res = {.tiers = tiers};
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 5, 0, &res, NULL,
                                NULL));
    ASSERT_EQ_INT(res.hits, 2);
    ASSERT_EQ_U64(res.lease_id, 0);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[1], TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[2], TQKV_TIER_NONE); /* present only in another namespace */
    ASSERT_EQ_INT(tiers[3], TQKV_TIER_HOST); /* reported, but not counted as a leading hit */
    ASSERT_EQ_INT(tiers[4], TQKV_TIER_NONE);
    tqkv_ns_stats nst;
    tqkv_ns_get_stats(ns, &nst);
    ASSERT_EQ_U64(nst.hits, 2);
    ASSERT_EQ_U64(nst.misses, 1);
    res.tiers = NULL;
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys + 3, 2, 500, &res,
                                NULL, NULL));
    ASSERT_EQ_INT(res.hits, 1);
    ASSERT_NE_INT(res.lease_id, 0);
    ASSERT_OK(tqkv_store_lookup(s, ns, NULL, 0, 500, &res, NULL, NULL));
    ASSERT_EQ_INT(res.hits, 0);
    ASSERT_EQ_U64(res.lease_id, 0);
    ASSERT_EQ_INT(tqkv_store_lookup(s, ns, NULL, 3, 0, &res, NULL, NULL), TQKV_EINVAL);
    tqkv_store_destroy(s);
}

/* Random operations against a model; after each the store's byte counts equal the model's and
 * the host tier's page accounting equals the arena's. */
static void test_accounting_random(void)
{
    enum { N = 96 };
    tqkv_store *s = make_store(48);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    size_t len_of[N] = {0};
    unsigned seed = 99;
    for (int step = 0; step < 4000; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        uint64_t i = r % N;
        uint8_t key[TQKV_KEY_BYTES];
        key_of(i, key);
        switch ((r / N) % 6) {
        case 0:
        case 1: {
            size_t len = 1 + (r / 7) % (5 * PG);
            int rc = put(s, ns, i, len);
            if (rc == 0)
                len_of[i] = len;
            else if (rc != TQKV_EEXIST && rc != TQKV_ENOSPC)
                ASSERT_OK(rc);
            break;
        }
        case 2:
            (void)tqkv_store_delete(s, ns, key);
            break;
        case 3:
            if (tqkv_store_pin(s, ns, key) == 0 && (r & 1))
                ASSERT_OK(tqkv_store_unpin(s, ns, key));
            break;
        case 4:
            (void)tqkv_store_unpin(s, ns, key);
            break;
        default: {
            tqkv_store_ref *ref;
            if (tqkv_store_get(s, ns, key, &ref, NULL, NULL) == TQKV_STORE_HIT) {
                ASSERT_EQ_U64(tqkv_store_ref_len(ref), len_of[i]);
                ASSERT_TRUE(check_content(i, tqkv_store_ref_data(ref), len_of[i]));
                tqkv_store_ref_release(s, ref);
            }
        }
        }
        /* recount from the index */
        uint64_t bytes = 0, pages = 0, entries = 0;
        for (uint64_t j = 0; j < N; j++) {
            uint8_t k[TQKV_KEY_BYTES];
            key_of(j, k);
            uint8_t t;
            tqkv_lookup_result res = {.tiers = &t};
            ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])k, 1, 0, &res,
                                        NULL, NULL));
            if (res.hits) {
                bytes += len_of[j];
                pages += (len_of[j] + PG - 1) / PG;
                entries++;
            }
        }
        tqkv_store_stats st;
        tqkv_store_get_stats(s, &st);
        ASSERT_EQ_U64(st.bytes, bytes);
        ASSERT_EQ_U64(st.entries, entries);
        ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].used, pages * PG);
        ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].entries, entries);
        ASSERT_LE(st.tiers[TQKV_TIER_HOST].resident, 48 * PG);
        tqkv_ns_stats nst;
        tqkv_ns_get_stats(ns, &nst);
        ASSERT_EQ_U64(nst.bytes, bytes);
    }
    tqkv_store_destroy(s);
}

static void test_shrink(void)
{
    tqkv_store *s = make_store(16);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    for (uint64_t i = 0; i < 16; i++)
        ASSERT_OK(put(s, ns, i, PG));
    uint8_t k15[TQKV_KEY_BYTES];
    key_of(15, k15);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* 0 recent; 1..5 the oldest */
    ASSERT_OK(tqkv_store_set_capacity(s, TQKV_TIER_HOST, 10 * PG));
    tqkv_tier_stats hs;
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.capacity, 10 * PG);
    ASSERT_EQ_U64(hs.used, 10 * PG);
    ASSERT_LE(hs.resident, 10 * PG);
    for (uint64_t i = 1; i <= 6; i++)
        ASSERT_EQ_INT(have(s, ns, i, PG), 0);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1);
    /* pinned entries stay even below capacity; new PUTs then fail */
    for (uint64_t i = 0; i < 16; i++) {
        uint8_t k[TQKV_KEY_BYTES];
        key_of(i, k);
        (void)tqkv_store_pin(s, ns, k);
    }
    ASSERT_OK(tqkv_store_set_capacity(s, TQKV_TIER_HOST, 4 * PG));
    host_stats(s, &hs);
    ASSERT_EQ_U64(hs.used, 10 * PG);
    ASSERT_ERR(put(s, ns, 100, 1), TQKV_ENOSPC);
    ASSERT_ERR(tqkv_store_set_capacity(s, TQKV_TIER_HOST, 65 * PG), TQKV_ERANGE);
    ASSERT_ERR(tqkv_store_set_capacity(s, TQKV_TIER_SSD, PG), TQKV_ENOENT);
    ASSERT_OK(tqkv_store_set_capacity(s, TQKV_TIER_HOST, 64 * PG)); /* grow up to the maximum */
    ASSERT_OK(put(s, ns, 100, 40 * PG));
    tqkv_store_destroy(s);
}

static void test_clear_and_evict(void)
{
    tqkv_store *s = make_store(32);
    tqkv_ns *a = s ? make_ns(s, "a") : NULL;
    tqkv_ns *b = s ? make_ns(s, "b") : NULL;
    ASSERT_TRUE(a && b);
    for (uint64_t i = 0; i < 6; i++) {
        ASSERT_OK(put(s, a, i, PG));
        ASSERT_OK(put(s, b, i, 2 * PG));
    }
    uint8_t k0[TQKV_KEY_BYTES];
    key_of(0, k0);
    ASSERT_OK(tqkv_store_pin(s, a, k0));
    uint64_t n = 0;
    ASSERT_OK(tqkv_store_clear(s, a, &n)); /* pinned ones too */
    ASSERT_EQ_U64(n, 6);
    ASSERT_EQ_INT(have(s, a, 0, PG), 0);
    ASSERT_EQ_INT(have(s, b, 0, 2 * PG), 1);
    tqkv_ns_stats nst;
    tqkv_ns_get_stats(a, &nst);
    ASSERT_EQ_U64(nst.entries, 0);
    ASSERT_EQ_U64(nst.bytes, 0);
    uint64_t freed = 0;
    ASSERT_OK(tqkv_store_evict(s, NULL, 3 * PG, &freed)); /* two entries of 2 pages */
    ASSERT_EQ_U64(freed, 4 * PG);
    ASSERT_EQ_INT(have(s, b, 1, 2 * PG), 0);
    ASSERT_EQ_INT(have(s, b, 2, 2 * PG), 0);
    ASSERT_OK(tqkv_store_clear(s, NULL, &n));
    ASSERT_EQ_U64(n, 4);
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.entries, 0);
    ASSERT_EQ_U64(st.bytes, 0);
    ASSERT_EQ_U64(st.pinned, 0);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].used, 0);
    ASSERT_EQ_INT(st.namespaces, 2);
    tqkv_store_destroy(s);
}

static void test_evict_namespace(void)
{
    tqkv_store *s = make_store(32);
    tqkv_ns *a = s ? make_ns(s, "a") : NULL;
    tqkv_ns *b = s ? make_ns(s, "b") : NULL;
    ASSERT_TRUE(a && b);
    for (uint64_t i = 0; i < 4; i++) { /* least recent first: a0 b0 a1 b1 a2 b2 a3 b3 */
        ASSERT_OK(put(s, a, i, PG));
        ASSERT_OK(put(s, b, i, PG));
    }
    uint8_t k1[TQKV_KEY_BYTES];
    key_of(1, k1);
    ASSERT_OK(tqkv_store_pin(s, a, k1));
    uint64_t freed = 0;
    ASSERT_OK(tqkv_store_evict(s, a, 2 * PG, &freed)); /* a's two oldest evictable: a0, a2 */
    ASSERT_EQ_U64(freed, 2 * PG);
    ASSERT_EQ_INT(have(s, a, 0, PG), 0);
    ASSERT_EQ_INT(have(s, a, 1, PG), 1);
    ASSERT_EQ_INT(have(s, a, 2, PG), 0);
    ASSERT_EQ_INT(have(s, a, 3, PG), 1);
    ASSERT_OK(tqkv_store_evict(s, a, 100 * PG, &freed)); /* all that is left of a: a3 */
    ASSERT_EQ_U64(freed, PG);
    ASSERT_EQ_INT(have(s, a, 1, PG), 1);
    ASSERT_EQ_INT(have(s, a, 3, PG), 0);
    for (uint64_t i = 0; i < 4; i++)
        ASSERT_EQ_INT(have(s, b, i, PG), 1);
    tqkv_store_destroy(s);
}

static void test_stats(void)
{
    tqkv_store *s = make_store(8);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    ASSERT_OK(put(s, ns, 1, 1000));
    ASSERT_OK(put(s, ns, 2, 3000));
    ASSERT_EQ_INT(have(s, ns, 1, 1000), 1);
    ASSERT_EQ_INT(have(s, ns, 1, 1000), 1);
    ASSERT_EQ_INT(have(s, ns, 3, 1), 0);
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.hits, 2);
    ASSERT_EQ_U64(st.misses, 1);
    ASSERT_EQ_U64(st.entries, 2);
    ASSERT_EQ_U64(st.bytes, 4000);
    ASSERT_TRUE(st.tiers[TQKV_TIER_HOST].present);
    ASSERT_TRUE(!st.tiers[TQKV_TIER_SSD].present);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].bytes_in, 4000);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].bytes_out, 2000);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].hits, 2);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].misses, 1);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].capacity, 8 * PG);
    tqkv_ns_stats nst;
    tqkv_ns_get_stats(ns, &nst);
    ASSERT_EQ_U64(nst.hits, 2);
    ASSERT_EQ_U64(nst.misses, 1);
    ASSERT_EQ_U64(nst.puts, 2);
    ASSERT_TRUE(strcmp(tqkv_tier_name(TQKV_TIER_REDIS), "redis") == 0);
    ASSERT_TRUE(strcmp(tqkv_tier_name(42), "unknown") == 0);
    void *base;
    size_t len;
    tqkv_store_host_arena(s, &base, &len);
    ASSERT_TRUE(base != NULL);
    ASSERT_EQ_U64(len, 32 * PG);
    tqkv_store_destroy(s);
}

static int fail_after = -1; /* allocations left before failing; -1: never fail */
static int allow(void)
{
    if (fail_after < 0)
        return 1;
    if (fail_after == 0)
        return 0;
    fail_after--;
    return 1;
}
static void *f_malloc(size_t n)
{
    return allow() ? malloc(n) : NULL;
}
static void *f_realloc(void *p, size_t n)
{
    return allow() ? realloc(p, n) : NULL;
}
static void *f_calloc(size_t c, size_t n)
{
    return allow() ? calloc(c, n) : NULL;
}

/* One scenario run with the k-th allocation failing, for every k: each call either works or says
 * ENOMEM, and the store stays consistent (ASan checks for leaks and bad frees). */
static int scenario(void)
{
    tqkv_store_config c = {8 * PG, 8 * PG, PG, manual_clock, NULL};
    tqkv_store *s = NULL;
    int r = tqkv_store_create(&c, &s);
    if (r < 0)
        return r;
    tqkv_ns *ns = make_ns(s, "m");
    int failures = 0;
    if (!ns) {
        tqkv_store_destroy(s);
        return TQKV_ENOMEM;
    }
    for (uint64_t i = 0; i < 12; i++) {
        r = put(s, ns, i, PG);
        if (r == TQKV_ENOMEM)
            failures++;
        else if (r != 0)
            break;
    }
    uint8_t keys[2][TQKV_KEY_BYTES];
    key_of(10, keys[0]);
    key_of(11, keys[1]);
    tqkv_lookup_result res = {0};
    r = tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 2, 100, &res, NULL, NULL);
    if (r == TQKV_ENOMEM)
        failures++;
    else if (r == 0 && res.lease_id)
        (void)tqkv_store_lease_release(s, res.lease_id);
    tqkv_store_destroy(s);
    return r < 0 && r != TQKV_ENOMEM ? r : failures;
}

static void test_failing_allocator(void)
{
    ASSERT_OK(tqkv_replace_allocator(f_malloc, f_realloc, f_calloc, free));
    int saw_enomem = 0;
    for (int k = 0; k < 60; k++) {
        fail_after = k;
        int r = scenario();
        fail_after = -1;
        if (r != TQKV_ENOMEM && r < 0) {
            tqkv_replace_allocator(NULL, NULL, NULL, NULL);
            ASSERT_OK(r);
        }
        saw_enomem += r == TQKV_ENOMEM || r > 0;
    }
    ASSERT_OK(tqkv_replace_allocator(NULL, NULL, NULL, NULL));
    ASSERT_TRUE(saw_enomem > 0);
}

/* PUTs of random-size blocks totalling 4x the capacity: the arena never holds more than the
 * capacity (mincore), and every block still present reads back intact. */
static void test_storm(void)
{
    const uint64_t cap = 4u << 20; /* 4 MiB */
    tqkv_store_config c = {cap, 2 * cap, 16 * 1024, manual_clock, NULL};
    tqkv_store *s = NULL;
    ASSERT_OK(tqkv_store_create(&c, &s));
    tqkv_ns *ns = make_ns(s, "storm");
    ASSERT_TRUE(ns);
    void *base;
    size_t alen;
    tqkv_store_host_arena(s, &base, &alen);
    size_t sys = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *vec = malloc(alen / sys);
    ASSERT_TRUE(vec);
    enum { MAXB = 4096 };
    static size_t lens[MAXB];
    uint64_t total = 0, n = 0;
    unsigned seed = 7;
    while (total < 4 * cap && n < MAXB) {
        seed = seed * 1103515245u + 12345u;
        size_t len = 1 + (seed >> 4) % (300 * 1024);
        int r = put(s, ns, n, len);
        if (r != 0) {
            free(vec);
            ASSERT_OK(r);
        }
        lens[n++] = len;
        total += len;
        if (n % 8 == 0) {
            ASSERT_OK(mincore(base, alen, vec));
            uint64_t res = 0;
            for (size_t i = 0; i < alen / sys; i++)
                res += vec[i] & 1u;
            if (res * sys > cap)
                free(vec);
            ASSERT_LE(res * sys, cap);
        }
    }
    free(vec);
    uint64_t present = 0;
    for (uint64_t i = 0; i < n; i++) {
        int h = have(s, ns, i, lens[i]);
        ASSERT_TRUE(h >= 0);
        present += (uint64_t)h;
    }
    ASSERT_TRUE(present > 0 && present < n);
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.entries, present);
    ASSERT_LE(st.tiers[TQKV_TIER_HOST].used, cap);
    ASSERT_LE(st.tiers[TQKV_TIER_HOST].resident, cap);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].evictions, n - present);
    tqkv_store_destroy(s);
}

/* ---- a keyed tier in memory, to drive demotion and promotion through the vtable ---- */

typedef struct mrec {
    struct mrec *next;
    uint32_t ns;
    uint8_t key[TQKV_KEY_BYTES];
    size_t len;
    uint8_t data[];
} mrec;

typedef struct mop {
    struct mop *next;
    int kind; /* 0 write, 1 read, 2 exists */
    uint32_t ns;
    uint8_t key[TQKV_KEY_BYTES];
    const void *data;
    size_t len;
    tqkv_tier_dest_fn dest;
    void *dest_arg;
    size_t *out_len;
    tqkv_tier_done_cb cb;
    void *arg;
} mop;

typedef struct {
    tqkv_tier tier;
    int async;
    int fail_writes; /* writes complete with TQKV_EIO */
    mrec *recs;
    mop *head, *tail;
    int writes, reads;
} mock;

static mrec *mock_find(mock *m, uint32_t ns, const uint8_t *key)
{
    for (mrec *r = m->recs; r; r = r->next)
        if (r->ns == ns && memcmp(r->key, key, TQKV_KEY_BYTES) == 0)
            return r;
    return NULL;
}

static void mock_run(mock *m, mop *o)
{
    mrec *r = mock_find(m, o->ns, o->key);
    if (o->kind == 0) {
        m->writes++;
        if (m->fail_writes) {
            o->cb(o->arg, TQKV_EIO);
            free(o);
            return;
        }
        if (!r) {
            r = malloc(sizeof(*r) + o->len);
            r->ns = o->ns;
            memcpy(r->key, o->key, TQKV_KEY_BYTES);
            r->len = o->len;
            memcpy(r->data, o->data, o->len); /* the store's bytes are still valid here */
            r->next = m->recs;
            m->recs = r;
        }
        o->cb(o->arg, 0);
    } else if (o->kind == 1) {
        m->reads++;
        if (!r) {
            o->cb(o->arg, TQKV_TIER_MISS);
        } else {
            void *d = o->dest(o->dest_arg, r->len);
            if (!d) {
                o->cb(o->arg, TQKV_ENOSPC);
            } else {
                memcpy(d, r->data, r->len);
                *o->out_len = r->len;
                o->cb(o->arg, 0);
            }
        }
    } else {
        o->cb(o->arg, r ? TQKV_TIER_HIT : TQKV_TIER_MISS);
    }
    free(o);
}

static int mock_submit(mock *m, mop *o)
{
    if (!m->async) {
        mock_run(m, o);
        return 0;
    }
    o->next = NULL;
    if (m->tail)
        m->tail->next = o;
    else
        m->head = o;
    m->tail = o;
    return 0;
}

static int mock_pump(mock *m)
{
    int n = 0;
    while (m->head) {
        mop *o = m->head;
        m->head = o->next;
        if (!m->head)
            m->tail = NULL;
        mock_run(m, o);
        n++;
    }
    return n;
}

static mop *mop_new(int kind, uint32_t ns, const uint8_t *key, tqkv_tier_done_cb cb, void *arg)
{
    mop *o = calloc(1, sizeof(*o));
    o->kind = kind;
    o->ns = ns;
    memcpy(o->key, key, TQKV_KEY_BYTES);
    o->cb = cb;
    o->arg = arg;
    return o;
}

static int m_write(tqkv_tier *t, uint32_t ns, const uint8_t *key, const void *data, size_t len,
                   tqkv_tier_done_cb cb, void *arg)
{
    mop *o = mop_new(0, ns, key, cb, arg);
    o->data = data;
    o->len = len;
    return mock_submit((mock *)(void *)t, o);
}
static int m_read(tqkv_tier *t, uint32_t ns, const uint8_t *key, tqkv_tier_dest_fn dest,
                  void *dest_arg, size_t *out_len, tqkv_tier_done_cb cb, void *arg)
{
    mop *o = mop_new(1, ns, key, cb, arg);
    o->dest = dest;
    o->dest_arg = dest_arg;
    o->out_len = out_len;
    return mock_submit((mock *)(void *)t, o);
}
static int m_exists(tqkv_tier *t, uint32_t ns, const uint8_t *key, tqkv_tier_done_cb cb,
                    void *arg)
{
    mock *m = (mock *)(void *)t;
    if (!m->async || !cb)
        return mock_find(m, ns, key) ? TQKV_TIER_HIT : TQKV_TIER_MISS;
    mock_submit(m, mop_new(2, ns, key, cb, arg));
    return TQKV_TIER_PENDING;
}
static void m_info(tqkv_tier *t, tqkv_tier_info *out)
{
    mock *m = (mock *)(void *)t;
    memset(out, 0, sizeof(*out));
    for (mrec *r = m->recs; r; r = r->next) {
        out->entries++;
        out->used += r->len;
    }
}
static void m_destroy(tqkv_tier *t)
{
    mock *m = (mock *)(void *)t;
    for (mop *o = m->head, *nx; o; o = nx) {
        nx = o->next;
        o->cb(o->arg, TQKV_ECANCELED);
        free(o);
    }
    for (mrec *r = m->recs, *nx; r; r = nx) {
        nx = r->next;
        free(r);
    }
    free(m);
}

static const tqkv_tier_ops mock_ops = {
    .name = "ssd", .info = m_info, .destroy = m_destroy, .write = m_write, .read = m_read,
    .exists = m_exists,
};

static mock *mock_new(int async)
{
    mock *m = calloc(1, sizeof(*m));
    m->tier.ops = &mock_ops;
    m->tier.id = TQKV_TIER_SSD;
    m->tier.flags = TQKV_TIER_F_KEYED | TQKV_TIER_F_PERSISTENT;
    m->async = async;
    return m;
}

typedef struct {
    int calls, status, tier;
    tqkv_store_ref *ref;
} get_result;

static void on_get(void *arg, int status, tqkv_store_ref *ref, tqkv_tier_id tier)
{
    get_result *g = arg;
    g->calls++;
    g->status = status;
    g->ref = ref;
    g->tier = tier;
}

typedef struct {
    int calls, status;
} lookup_done;

static void on_lookup(void *arg, int status, tqkv_lookup_result *res)
{
    lookup_done *l = arg;
    (void)res;
    l->calls++;
    l->status = status;
}

static void test_lower_tier_sync(void)
{
    tqkv_store *s = make_store(4);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    mock *m = mock_new(0);
    ASSERT_OK(tqkv_store_attach_tier(s, &m->tier));
    ASSERT_ERR(tqkv_store_attach_tier(s, &m->tier), TQKV_EEXIST);
    for (uint64_t i = 0; i < 6; i++)
        ASSERT_OK(put(s, ns, i, PG));
    ASSERT_EQ_INT(m->writes, 2); /* 0 and 1 demoted */
    uint8_t k0[TQKV_KEY_BYTES];
    key_of(0, k0);
    tqkv_store_ref *ref = NULL;
    get_result g = {0};
    /* the mock answers inside read(): the store still returns the hit at once */
    ASSERT_EQ_INT(tqkv_store_get(s, ns, k0, &ref, on_get, &g), TQKV_STORE_HIT);
    ASSERT_EQ_INT(g.calls, 0);
    ASSERT_TRUE(check_content(0, tqkv_store_ref_data(ref), PG));
    tqkv_store_ref_release(s, ref);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* promoted: now a host hit */
    uint8_t keys[3][TQKV_KEY_BYTES];
    key_of(1, keys[0]);
    key_of(5, keys[1]);
    key_of(77, keys[2]);
    uint8_t tiers[3];
    tqkv_lookup_result res = {.tiers = tiers};
    ASSERT_OK(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 3, 0, &res,
                                on_lookup, NULL));
    ASSERT_EQ_INT(res.hits, 2);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_SSD);
    ASSERT_EQ_INT(tiers[1], TQKV_TIER_HOST);
    ASSERT_EQ_INT(tiers[2], TQKV_TIER_NONE);
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].demotions, 3); /* promoting 0 demoted one more */
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].promotions, 1);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].drops, 0);
    ASSERT_TRUE(st.tiers[TQKV_TIER_SSD].present);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_SSD].hits, 2); /* the GET and the LOOKUP */
    tqkv_store_destroy(s);
}

static void test_lower_tier_async(void)
{
    tqkv_store *s = make_store(4);
    tqkv_ns *ns = s ? make_ns(s, "m") : NULL;
    ASSERT_TRUE(ns);
    mock *m = mock_new(1);
    ASSERT_OK(tqkv_store_attach_tier(s, &m->tier));
    for (uint64_t i = 0; i < 4; i++)
        ASSERT_OK(put(s, ns, i, PG));
    /* the demotion of 0 is in flight: its page is not free yet, and nothing else is evictable
     * once 1..3 are pinned */
    for (uint64_t i = 1; i < 4; i++) {
        uint8_t k[TQKV_KEY_BYTES];
        key_of(i, k);
        ASSERT_OK(tqkv_store_pin(s, ns, k));
    }
    ASSERT_ERR(put(s, ns, 4, PG), TQKV_EAGAIN);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_OK(put(s, ns, 4, PG));
    uint8_t k0[TQKV_KEY_BYTES];
    key_of(0, k0);
    tqkv_store_ref *ref = NULL;
    get_result g = {0};
    ASSERT_EQ_INT(tqkv_store_get(s, ns, k0, &ref, on_get, &g), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(g.calls, 0);
    /* the read needs a page: it evicts 4, whose demotion is then in flight, so the page is not
     * free yet: the hit is served all the same from a buffer of its own, not promoted; then
     * 4's demotion lands */
    ASSERT_EQ_INT(mock_pump(m), 2);
    ASSERT_EQ_INT(g.calls, 1);
    ASSERT_EQ_INT(g.status, TQKV_STORE_HIT);
    ASSERT_EQ_INT(g.tier, TQKV_TIER_SSD);
    ASSERT_TRUE(g.ref && check_content(0, tqkv_store_ref_data(g.ref), PG));
    ASSERT_EQ_U64(tqkv_store_ref_len(g.ref), PG);
    tqkv_store_ref_release(s, g.ref);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 0); /* not promoted */
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_SSD].errors, 0);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].promotions, 0);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].demotions, 2);
    g.calls = 0;
    ASSERT_EQ_INT(tqkv_store_get(s, ns, k0, &ref, on_get, &g), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(g.calls, 1);
    ASSERT_EQ_INT(g.status, TQKV_STORE_HIT);
    ASSERT_EQ_INT(g.tier, TQKV_TIER_SSD);
    ASSERT_TRUE(g.ref && check_content(0, tqkv_store_ref_data(g.ref), PG));
    tqkv_store_ref_release(s, g.ref);

    uint8_t keys[2][TQKV_KEY_BYTES];
    key_of(4, keys[0]);
    key_of(0, keys[1]);
    uint8_t tiers[2];
    tqkv_lookup_result res = {.tiers = tiers};
    lookup_done ld = {0};
    ASSERT_EQ_INT(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])keys, 2, 0, &res,
                                    on_lookup, &ld),
                  TQKV_STORE_PENDING);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(ld.calls, 1);
    ASSERT_OK(ld.status);
    ASSERT_EQ_INT(res.hits, 2);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_SSD);
    ASSERT_EQ_INT(tiers[1], TQKV_TIER_HOST);

    /* pending operations are canceled when the store goes */
    g.calls = 0;
    uint8_t k9[TQKV_KEY_BYTES];
    key_of(9, k9);
    ASSERT_EQ_INT(tqkv_store_get(s, ns, k9, &ref, on_get, &g), TQKV_STORE_PENDING);
    tqkv_store_destroy(s);
    ASSERT_EQ_INT(g.calls, 1);
    ASSERT_EQ_INT(g.status, TQKV_STORE_MISS);
}

typedef struct {
    int calls, status;
} commit_done;

static void on_commit(void *arg, int status)
{
    commit_done *c = arg;
    c->calls++;
    c->status = status;
}

/* Reserves and fills block i, then commits waiting for write-through. @return what
 * tqkv_store_put_commit_cb returns (or the reservation's error). */
static int put_wait(tqkv_store *s, tqkv_ns *ns, uint64_t i, size_t len, commit_done *c)
{
    uint8_t key[TQKV_KEY_BYTES];
    key_of(i, key);
    tqkv_store_put *p;
    void *buf;
    int r = tqkv_store_put_reserve(s, ns, key, len, &p, &buf);
    if (r == TQKV_EEXIST)
        return tqkv_store_put_sync(s, ns, key, on_commit, c) == TQKV_STORE_PENDING
                   ? TQKV_STORE_PENDING
                   : TQKV_EEXIST;
    if (r < 0)
        return r;
    fill(i, buf, len);
    return tqkv_store_put_commit_cb(s, p, len, on_commit, c);
}

/* Write-through: the commit completes when the tier acknowledges; a duplicate PUT waits for the
 * first one's write; evicting a block the tier holds frees its page at once (no demotion, no
 * EAGAIN); a failed write-through takes the block out again; pins are in the protected set. */
static void test_write_through(void)
{
    tqkv_store *s = make_store(2);
    tqkv_ns *ns = s ? make_ns(s, "w") : NULL;
    ASSERT_TRUE(ns);
    mock *m = mock_new(1);
    ASSERT_OK(tqkv_store_attach_tier(s, &m->tier));
    ASSERT_ERR(tqkv_store_set_write_policy(s, TQKV_TIER_REDIS, TQKV_WRITE_THROUGH), TQKV_ENOENT);
    ASSERT_OK(tqkv_store_set_write_policy(s, TQKV_TIER_SSD, TQKV_WRITE_THROUGH));
    commit_done c0 = {0}, c0b = {0}, c1 = {0}, c2 = {0};
    ASSERT_EQ_INT(put_wait(s, ns, 0, PG, &c0), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(put_wait(s, ns, 0, PG, &c0b), TQKV_STORE_PENDING); /* waits for the first */
    ASSERT_EQ_INT(c0.calls + c0b.calls, 0);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 1); /* readable while the write is in flight */
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(c0.calls, 1);
    ASSERT_OK(c0.status);
    ASSERT_EQ_INT(c0b.calls, 1);
    ASSERT_OK(c0b.status);
    ASSERT_EQ_INT(put_wait(s, ns, 0, PG, &c0b), TQKV_EEXIST); /* acknowledged already */
    ASSERT_EQ_INT(put_wait(s, ns, 1, PG, &c1), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(mock_pump(m), 1);
    /* host full (2 pages): 2 evicts 0, which the tier holds: its page is free at once */
    ASSERT_EQ_INT(put_wait(s, ns, 2, PG, &c2), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(have(s, ns, 0, PG), 0);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(c2.calls, 1);
    ASSERT_OK(c2.status);
    ASSERT_EQ_INT(m->writes, 3); /* no demotion write for 0 */
    tqkv_store_stats st;
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].evictions, 1);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].demotions, 0);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_HOST].drops, 0);

    /* a failing write-through fails the PUT and leaves nothing behind */
    m->fail_writes = 1;
    commit_done c3 = {0};
    ASSERT_EQ_INT(put_wait(s, ns, 3, PG, &c3), TQKV_STORE_PENDING);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(c3.calls, 1);
    ASSERT_ERR(c3.status, TQKV_EIO);
    ASSERT_EQ_INT(have(s, ns, 3, PG), 0);
    tqkv_store_get_stats(s, &st);
    ASSERT_EQ_U64(st.tiers[TQKV_TIER_SSD].errors, 1);
    m->fail_writes = 0;

    /* pins and leases are visible to lower tiers' eviction (any thread) */
    uint8_t k2[TQKV_KEY_BYTES], k0[TQKV_KEY_BYTES];
    key_of(2, k2);
    key_of(0, k0);
    uint32_t id = tqkv_ns_get_id(ns);
    ASSERT_EQ_INT(tqkv_store_is_protected(s, id, k2), 0);
    ASSERT_OK(tqkv_store_pin(s, ns, k2));
    ASSERT_OK(tqkv_store_pin(s, ns, k2));
    ASSERT_OK(tqkv_store_unpin(s, ns, k2));
    ASSERT_EQ_INT(tqkv_store_is_protected(s, id, k2), 1);
    ASSERT_OK(tqkv_store_unpin(s, ns, k2));
    ASSERT_EQ_INT(tqkv_store_is_protected(s, id, k2), 0);
    /* 0 is only in the lower tier: a lease on it protects it there */
    uint8_t tiers[1];
    tqkv_lookup_result res = {.tiers = tiers};
    lookup_done ld = {0};
    ASSERT_EQ_INT(tqkv_store_lookup(s, ns, (const uint8_t(*)[TQKV_KEY_BYTES])k0, 1, 60000, &res,
                                    on_lookup, &ld),
                  TQKV_STORE_PENDING);
    ASSERT_EQ_INT(mock_pump(m), 1);
    ASSERT_EQ_INT(res.hits, 1);
    ASSERT_EQ_INT(tiers[0], TQKV_TIER_SSD);
    ASSERT_TRUE(res.lease_id != 0);
    ASSERT_EQ_INT(tqkv_store_is_protected(s, id, k0), 1);
    ASSERT_OK(tqkv_store_lease_release(s, res.lease_id));
    ASSERT_EQ_INT(tqkv_store_is_protected(s, id, k0), 0);
    tqkv_store_destroy(s);
}

static const tqkv_test_case cases[] = {
    {"namespaces", test_namespaces},
    {"put_get_idempotent", test_put_get_idempotent},
    {"lru_order", test_lru_order},
    {"pins_protect", test_pins_protect},
    {"leases_protect", test_leases_protect},
    {"refs_defer_free", test_refs_defer_free},
    {"lookup_prefix", test_lookup_prefix},
    {"accounting_random", test_accounting_random},
    {"shrink", test_shrink},
    {"clear_and_evict", test_clear_and_evict},
    {"evict_namespace", test_evict_namespace},
    {"stats", test_stats},
    {"failing_allocator", test_failing_allocator},
    {"storm", test_storm},
    {"lower_tier_sync", test_lower_tier_sync},
    {"lower_tier_async", test_lower_tier_async},
    {"write_through", test_write_through},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
