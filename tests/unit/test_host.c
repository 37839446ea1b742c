/* Unit tests of the host DRAM arena (storage/host): page-run allocation, coalescing, trimming,
 * capacity, the resident-size bound (checked with mincore), purge, the tier vtable and the
 * failing-allocator path. Every case ends with the arena's own invariant check. */
#include <sys/mman.h>

#include "host.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv_test.h"

#define PG 4096u

static tqkv_host *make(uint64_t cap_pages, uint64_t max_pages)
{
    tqkv_host_config c = {cap_pages * PG, max_pages * PG, PG};
    tqkv_host *h = NULL;
    if (tqkv_host_create(&c, &h) != 0)
        return NULL;
    return h;
}

static void test_bad_config(void)
{
    tqkv_host *h = NULL;
    tqkv_host_config c1 = {1 << 20, 0, 3000};
    ASSERT_ERR(tqkv_host_create(&c1, &h), TQKV_EINVAL);
    tqkv_host_config c2 = {100, 0, PG}; /* below one page */
    ASSERT_ERR(tqkv_host_create(&c2, &h), TQKV_EINVAL);
    tqkv_host_config c3 = {1 << 20, 1 << 19, PG};
    ASSERT_ERR(tqkv_host_create(&c3, &h), TQKV_EINVAL);
    tqkv_host_config c4 = {1 << 20, 0, 0}; /* default page: 16 KiB */
    ASSERT_OK(tqkv_host_create(&c4, &h));
    tqkv_host_stats st;
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.page_size, TQKV_HOST_DEFAULT_PAGE);
    ASSERT_EQ_U64(st.capacity_pages, 64);
    tqkv_host_destroy(h);
    tqkv_host_destroy(NULL);
}

static void test_alloc_coalesce(void)
{
    tqkv_host *h = make(64, 64);
    ASSERT_TRUE(h);
    tqkv_tier_span a, b, c;
    ASSERT_OK(tqkv_host_alloc(h, 1, &a));
    ASSERT_OK(tqkv_host_alloc(h, PG + 1, &b)); /* 2 pages */
    ASSERT_OK(tqkv_host_alloc(h, 3 * PG, &c));
    ASSERT_EQ_INT(a.n_units, 1);
    ASSERT_EQ_INT(b.n_units, 2);
    ASSERT_EQ_INT(c.n_units, 3);
    uint8_t *pa = a.ptr, *pb = b.ptr;
    ASSERT_TRUE(pb >= pa + PG || pb + 2 * PG <= pa); /* no overlap */
    memset(a.ptr, 1, a.len);
    memset(b.ptr, 2, b.len);
    memset(c.ptr, 3, c.len);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_stats st;
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.used_pages, 6);
    ASSERT_EQ_U64(st.spans, 3);
    tqkv_host_free(h, &b); /* hole between a and c */
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.free_runs, 2);
    tqkv_tier_span d;
    ASSERT_OK(tqkv_host_alloc(h, 2 * PG, &d)); /* best fit: exactly the hole, still dirty */
    ASSERT_TRUE(d.ptr == b.ptr);
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.dirty_free_pages, 0);
    tqkv_host_free(h, &a);
    tqkv_host_free(h, &c);
    tqkv_host_free(h, &d);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.used_pages, 0);
    ASSERT_EQ_U64(st.free_runs, 1); /* everything coalesced back into one run */
    ASSERT_EQ_U64(st.largest_free_run, 64);
    tqkv_host_destroy(h);
}

static void test_capacity_and_bad_len(void)
{
    tqkv_host *h = make(8, 32);
    ASSERT_TRUE(h);
    tqkv_tier_span s[9];
    for (int i = 0; i < 8; i++)
        ASSERT_OK(tqkv_host_alloc(h, PG, &s[i]));
    ASSERT_ERR(tqkv_host_alloc(h, PG, &s[8]), TQKV_ENOSPC);
    ASSERT_ERR(tqkv_host_alloc(h, 0, &s[8]), TQKV_EINVAL);
    ASSERT_ERR(tqkv_host_alloc(h, 33 * PG, &s[8]), TQKV_EINVAL);
    tqkv_host_free(h, &s[3]);
    ASSERT_OK(tqkv_host_alloc(h, PG, &s[8]));
    ASSERT_OK(tqkv_host_check(h));
    for (int i = 0; i < 9; i++)
        if (i != 3)
            tqkv_host_free(h, &s[i]);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_destroy(h);
}

static void test_trim(void)
{
    tqkv_host *h = make(16, 16);
    ASSERT_TRUE(h);
    tqkv_tier_span a, b;
    ASSERT_OK(tqkv_host_alloc(h, 8 * PG, &a));
    ASSERT_OK(tqkv_host_alloc(h, PG, &b));
    memset(a.ptr, 7, a.len);
    tqkv_host_trim(h, &a, 2 * PG + 5); /* keeps 3 pages */
    ASSERT_EQ_INT(a.n_units, 3);
    ASSERT_EQ_U64(a.len, 2 * PG + 5);
    tqkv_host_stats st;
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.used_pages, 4);
    ASSERT_EQ_U64(st.dirty_free_pages, 5);
    ASSERT_OK(tqkv_host_check(h));
    ASSERT_EQ_INT(((uint8_t *)a.ptr)[2 * PG + 4], 7);
    tqkv_host_free(h, &a);
    tqkv_host_free(h, &b);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_destroy(h);
}

/* used + cached free pages never exceed the capacity; mincore agrees. */
static void test_resident_bound(void)
{
    const uint64_t cap = 64;
    tqkv_host *h = make(cap, 4 * cap);
    ASSERT_TRUE(h);
    tqkv_tier_span live[64];
    int nlive = 0;
    unsigned seed = 12345;
    for (int step = 0; step < 3000; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        if (nlive > 0 && (r % 3 == 0 || nlive == 64)) {
            int i = (int)((r / 3) % (unsigned)nlive);
            tqkv_host_free(h, &live[i]);
            live[i] = live[--nlive];
        } else {
            size_t len = 1 + (r % (9 * PG));
            int rc = tqkv_host_alloc(h, len, &live[nlive]);
            if (rc == 0) {
                memset(live[nlive].ptr, (int)step, len);
                nlive++;
            } else {
                ASSERT_ERR(rc, TQKV_ENOSPC);
            }
        }
        tqkv_host_stats st;
        tqkv_host_get_stats(h, &st);
        ASSERT_LE(st.used_pages + st.dirty_free_pages, cap);
        if (step % 100 == 0) {
            ASSERT_OK(tqkv_host_check(h));
            ASSERT_LE(tqkv_host_resident_bytes(h), cap * PG);
        }
    }
    tqkv_host_purge(h);
    tqkv_host_stats st;
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.dirty_free_pages, 0);
    /* every live span was written whole: after a purge exactly the used pages are resident */
    ASSERT_EQ_U64(tqkv_host_resident_bytes(h), st.used_pages * PG);
    while (nlive > 0)
        tqkv_host_free(h, &live[--nlive]);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_destroy(h);
}

static void test_set_capacity(void)
{
    tqkv_host *h = make(16, 32);
    ASSERT_TRUE(h);
    tqkv_tier_span a, b;
    ASSERT_OK(tqkv_host_alloc(h, 8 * PG, &a));
    ASSERT_OK(tqkv_host_alloc(h, 4 * PG, &b));
    memset(a.ptr, 1, a.len);
    tqkv_host_free(h, &a); /* 8 dirty free pages cached: 12 <= 16 */
    tqkv_host_stats st;
    tqkv_host_get_stats(h, &st);
    ASSERT_EQ_U64(st.dirty_free_pages, 8);
    ASSERT_OK(tqkv_host_set_capacity(h, 6 * PG)); /* 4 used + 8 cached > 6: purged to 2 */
    tqkv_host_get_stats(h, &st);
    ASSERT_LE(st.used_pages + st.dirty_free_pages, 6);
    ASSERT_ERR(tqkv_host_alloc(h, 3 * PG, &a), TQKV_ENOSPC);
    ASSERT_ERR(tqkv_host_set_capacity(h, 33 * PG), TQKV_ERANGE);
    ASSERT_ERR(tqkv_host_set_capacity(h, PG - 1), TQKV_ERANGE);
    ASSERT_OK(tqkv_host_set_capacity(h, 2 * PG)); /* below used: allowed, allocations fail */
    ASSERT_ERR(tqkv_host_alloc(h, 1, &a), TQKV_ENOSPC);
    ASSERT_OK(tqkv_host_check(h));
    ASSERT_OK(tqkv_host_set_capacity(h, 32 * PG));
    ASSERT_OK(tqkv_host_alloc(h, 20 * PG, &a)); /* large runs come from the long-run list */
    tqkv_host_free(h, &a);
    tqkv_host_free(h, &b);
    ASSERT_OK(tqkv_host_check(h));
    tqkv_host_destroy(h);
}

static void test_vtable(void)
{
    tqkv_host *h = make(8, 8);
    ASSERT_TRUE(h);
    tqkv_tier *t = tqkv_host_tier(h);
    ASSERT_TRUE(tqkv_host_from_tier(t) == h);
    ASSERT_EQ_INT(t->id, TQKV_TIER_HOST);
    ASSERT_TRUE(t->flags & TQKV_TIER_F_ADDRESSABLE);
    tqkv_tier_span s;
    ASSERT_OK(t->ops->span_alloc(t, 3 * PG, &s));
    t->ops->span_trim(t, &s, PG);
    tqkv_tier_info info;
    t->ops->info(t, &info);
    ASSERT_EQ_U64(info.capacity, 8 * PG);
    ASSERT_EQ_U64(info.used, PG);
    ASSERT_EQ_U64(info.entries, 1);
    ASSERT_EQ_U64(info.resident, 3 * PG); /* 1 used + 2 cached */
    t->ops->span_free(t, &s);
    ASSERT_OK(t->ops->set_capacity(t, 4 * PG));
    t->ops->destroy(t);
}

static int fail_allocs;
static void *f_malloc(size_t n)
{
    return fail_allocs ? NULL : malloc(n);
}
static void *f_realloc(void *p, size_t n)
{
    return fail_allocs ? NULL : realloc(p, n);
}
static void *f_calloc(size_t c, size_t n)
{
    return fail_allocs ? NULL : calloc(c, n);
}

static void test_failing_allocator(void)
{
    ASSERT_OK(tqkv_replace_allocator(f_malloc, f_realloc, f_calloc, free));
    fail_allocs = 1;
    tqkv_host_config c = {16 * PG, 0, PG};
    tqkv_host *h = NULL;
    int r = tqkv_host_create(&c, &h);
    fail_allocs = 0;
    ASSERT_OK(tqkv_replace_allocator(NULL, NULL, NULL, NULL));
    ASSERT_ERR(r, TQKV_ENOMEM);
    ASSERT_TRUE(h == NULL);
}

static const tqkv_test_case cases[] = {
    {"bad_config", test_bad_config},
    {"alloc_coalesce", test_alloc_coalesce},
    {"capacity_and_bad_len", test_capacity_and_bad_len},
    {"trim", test_trim},
    {"resident_bound", test_resident_bound},
    {"set_capacity", test_set_capacity},
    {"vtable", test_vtable},
    {"failing_allocator", test_failing_allocator},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
