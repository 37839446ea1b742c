/* The host DRAM arena (see host.h for the design). Page metadata lives in side arrays, itself
 * mapped MAP_NORESERVE so that only the pages of metadata the arena really uses are resident:
 *   tag[p]    at the first and last page of every run: (length << 1) | free;
 *   fnext/fprev/dcnt[p]  at the first page of a free run: list links, dirty pages inside;
 *   dirty[p]  1 when the page may be resident (written since the last MADV_DONTNEED).
 * Invariant kept by every operation: used + dirty_free <= capacity (in pages), except right
 * after a capacity shrink below `used`, when every cached free page has been purged. */
#include "host.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tqkv_alloc.h"
#include "tqkv_log.h"

#define NIL UINT32_MAX
#define LARGE TQKV_HOST_BINS /* index of the list of runs >= TQKV_HOST_BINS pages */
#define BITMAP_WORDS (TQKV_HOST_BINS / 64)

struct tqkv_host {
    tqkv_tier tier; /* first: the tier handle is the engine */
    uint8_t *base;
    size_t arena_len;
    size_t page_size;
    unsigned page_shift;
    uint32_t npages;
    uint64_t cap_pages;

    void *meta;
    size_t meta_len;
    uint32_t *tag, *fnext, *fprev, *dcnt;
    uint8_t *dirty;

    uint32_t bins[TQKV_HOST_BINS + 1];
    uint64_t binmap[BITMAP_WORDS]; /* bit b: bins[b] not empty (b < TQKV_HOST_BINS) */

    uint64_t used, dirty_free, free_runs, spans, purged, hwm;
};

_Static_assert(TQKV_HOST_BINS % 64 == 0, "bin bitmap is made of 64-bit words");

static const tqkv_tier_ops host_ops;

static inline uint32_t run_len(const tqkv_host *h, uint32_t p)
{
    return h->tag[p] >> 1;
}
static inline int run_free(const tqkv_host *h, uint32_t p)
{
    return (int)(h->tag[p] & 1u);
}
static inline void set_run(tqkv_host *h, uint32_t p, uint32_t n, int is_free)
{
    uint32_t t = (n << 1) | (is_free ? 1u : 0u);
    h->tag[p] = t;
    h->tag[p + n - 1] = t;
}
static inline unsigned bin_of(uint32_t n)
{
    return n < TQKV_HOST_BINS ? n : LARGE;
}

static void fl_insert(tqkv_host *h, uint32_t p, uint32_t n)
{
    unsigned b = bin_of(n);
    h->fprev[p] = NIL;
    h->fnext[p] = h->bins[b];
    if (h->bins[b] != NIL)
        h->fprev[h->bins[b]] = p;
    h->bins[b] = p;
    if (b < LARGE)
        h->binmap[b / 64] |= 1ull << (b % 64);
}

static void fl_remove(tqkv_host *h, uint32_t p, uint32_t n)
{
    unsigned b = bin_of(n);
    if (h->fprev[p] != NIL)
        h->fnext[h->fprev[p]] = h->fnext[p];
    else
        h->bins[b] = h->fnext[p];
    if (h->fnext[p] != NIL)
        h->fprev[h->fnext[p]] = h->fprev[p];
    if (b < LARGE && h->bins[b] == NIL)
        h->binmap[b / 64] &= ~(1ull << (b % 64));
}

/* Smallest free run of at least n pages (best fit), or NIL. */
static uint32_t find_run(const tqkv_host *h, uint32_t n)
{
    unsigned b = bin_of(n);
    if (b < LARGE) {
        unsigned w = b / 64;
        uint64_t bits = h->binmap[w] & (~0ull << (b % 64));
        for (;;) {
            if (bits)
                return h->bins[w * 64 + (unsigned)__builtin_ctzll(bits)];
            if (++w == BITMAP_WORDS)
                break;
            bits = h->binmap[w];
        }
    }
    uint32_t best = NIL, best_len = UINT32_MAX;
    for (uint32_t p = h->bins[LARGE]; p != NIL; p = h->fnext[p]) {
        uint32_t l = run_len(h, p);
        if (l >= n && l < best_len) {
            best = p;
            best_len = l;
            if (l == n)
                break;
        }
    }
    return best;
}

/* Gives dirty pages of one free run back to the kernel, at most `want` (rounded up to whole
 * contiguous dirty stretches). @return pages purged. */
static uint64_t purge_run(tqkv_host *h, uint32_t p, uint64_t want)
{
    uint32_t n = run_len(h, p), left = h->dcnt[p];
    uint64_t done = 0;
    for (uint32_t i = p; i < p + n && left > 0 && done < want;) {
        if (!h->dirty[i]) {
            i++;
            continue;
        }
        uint32_t j = i;
        while (j < p + n && h->dirty[j])
            j++;
        if (madvise(h->base + ((size_t)i << h->page_shift), (size_t)(j - i) << h->page_shift,
                    MADV_DONTNEED) != 0)
            TQKV_LOGW("host", "msg=\"madvise(MADV_DONTNEED) failed\"");
        memset(h->dirty + i, 0, j - i);
        left -= j - i;
        done += j - i;
        i = j;
    }
    h->dcnt[p] = left;
    h->dirty_free -= done;
    h->purged += done;
    return done;
}

/* Purges cached free pages until `want` pages are gone or none is left; long runs first (they
 * are the least likely to be reused whole). */
static void purge(tqkv_host *h, uint64_t want)
{
    uint64_t done = 0;
    for (uint32_t p = h->bins[LARGE]; p != NIL && done < want; p = h->fnext[p])
        if (h->dcnt[p])
            done += purge_run(h, p, want - done);
    for (int b = LARGE - 1; b > 0 && done < want; b--)
        for (uint32_t p = h->bins[b]; p != NIL && done < want; p = h->fnext[p])
            if (h->dcnt[p])
                done += purge_run(h, p, want - done);
}

static void enforce_capacity(tqkv_host *h)
{
    if (h->used + h->dirty_free > h->cap_pages)
        purge(h, h->used + h->dirty_free - h->cap_pages);
}

/* Frees pages [p, p + n) of a used run (or of its tail), coalescing with free neighbours. */
static void free_pages(tqkv_host *h, uint32_t p, uint32_t n)
{
    uint32_t dc = n; /* used pages are dirty */
    h->used -= n;
    h->dirty_free += n;
    if (p > 0 && run_free(h, p - 1)) {
        uint32_t l = run_len(h, p - 1), lp = p - l;
        fl_remove(h, lp, l);
        dc += h->dcnt[lp];
        p = lp;
        n += l;
        h->free_runs--;
    }
    if (p + n < h->npages && run_free(h, p + n)) {
        uint32_t q = p + n, l = run_len(h, q);
        fl_remove(h, q, l);
        dc += h->dcnt[q];
        n += l;
        h->free_runs--;
    }
    set_run(h, p, n, 1);
    h->dcnt[p] = dc;
    fl_insert(h, p, n);
    h->free_runs++;
    enforce_capacity(h);
}

int tqkv_host_alloc(tqkv_host *h, size_t len, tqkv_tier_span *out)
{
    if (len == 0 || len > h->arena_len)
        return TQKV_EINVAL;
    uint32_t n = (uint32_t)((len + h->page_size - 1) >> h->page_shift);
    if (h->used + n > h->cap_pages)
        return TQKV_ENOSPC;
    uint32_t p = find_run(h, n);
    if (p == NIL)
        return TQKV_ENOSPC;
    uint32_t rl = run_len(h, p), dc = h->dcnt[p], k = 0;
    fl_remove(h, p, rl);
    if (dc == rl) {
        k = n;
    } else if (dc > 0) {
        for (uint32_t i = p; i < p + n; i++)
            k += h->dirty[i];
    }
    if (rl > n) {
        uint32_t r = p + n;
        set_run(h, r, rl - n, 1);
        h->dcnt[r] = dc - k;
        fl_insert(h, r, rl - n);
    } else {
        h->free_runs--;
    }
    set_run(h, p, n, 0);
    memset(h->dirty + p, 1, n);
    h->dirty_free -= k;
    h->used += n;
    h->spans++;
    if (p + n > h->hwm)
        h->hwm = p + n;
    enforce_capacity(h);
    out->ptr = h->base + ((size_t)p << h->page_shift);
    out->len = len;
    out->cookie = p;
    out->n_units = n;
    return 0;
}

void tqkv_host_trim(tqkv_host *h, tqkv_tier_span *span, size_t len)
{
    uint32_t p = (uint32_t)span->cookie, n = span->n_units;
    uint32_t keep = (uint32_t)((len + h->page_size - 1) >> h->page_shift);
    if (len == 0 || len > span->len)
        return;
    span->len = len;
    if (keep >= n)
        return;
    set_run(h, p, keep, 0);
    free_pages(h, p + keep, n - keep);
    span->n_units = keep;
}

void tqkv_host_free(tqkv_host *h, const tqkv_tier_span *span)
{
    if (!span || span->n_units == 0)
        return;
    h->spans--;
    free_pages(h, (uint32_t)span->cookie, span->n_units);
}

int tqkv_host_set_capacity(tqkv_host *h, uint64_t bytes)
{
    uint64_t cp = bytes >> h->page_shift;
    if (cp == 0 || cp > h->npages)
        return TQKV_ERANGE;
    h->cap_pages = cp;
    enforce_capacity(h);
    return 0;
}

void tqkv_host_purge(tqkv_host *h)
{
    purge(h, UINT64_MAX);
}

void tqkv_host_get_stats(const tqkv_host *h, tqkv_host_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->page_size = h->page_size;
    out->capacity_pages = h->cap_pages;
    out->total_pages = h->npages;
    out->used_pages = h->used;
    out->dirty_free_pages = h->dirty_free;
    out->free_runs = h->free_runs;
    out->spans = h->spans;
    out->purged_pages = h->purged;
    uint64_t largest = 0;
    for (uint32_t p = h->bins[LARGE]; p != NIL; p = h->fnext[p])
        if (run_len(h, p) > largest)
            largest = run_len(h, p);
    for (int w = BITMAP_WORDS - 1; w >= 0 && largest == 0; w--)
        if (h->binmap[w])
            largest = (uint64_t)w * 64 + 63 - (uint64_t)__builtin_clzll(h->binmap[w]);
    out->largest_free_run = largest;
}

void tqkv_host_arena(const tqkv_host *h, void **base, size_t *len)
{
    *base = h->base;
    *len = h->arena_len;
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            TQKV_LOGE("host", "msg=\"arena check failed\" what=\"%s\"", #cond);                    \
            return TQKV_EINTERNAL;                                                                 \
        }                                                                                          \
    } while (0)

int tqkv_host_check(const tqkv_host *h)
{
    uint64_t used = 0, dirty_free = 0, free_runs = 0, spans = 0;
    int prev_free = 0;
    for (uint64_t p = 0; p < h->npages;) {
        uint32_t n = run_len(h, (uint32_t)p);
        CHECK(n > 0 && p + n <= h->npages);
        CHECK(h->tag[p + n - 1] == h->tag[p]);
        if (run_free(h, (uint32_t)p)) {
            CHECK(!prev_free); /* neighbours are always coalesced */
            uint32_t d = 0;
            for (uint64_t i = p; i < p + n && i < h->hwm; i++)
                d += h->dirty[i];
            CHECK(d == h->dcnt[p]);
            dirty_free += d;
            free_runs++;
            prev_free = 1;
        } else {
            for (uint64_t i = p; i < p + n; i++)
                CHECK(h->dirty[i] == 1);
            used += n;
            spans++;
            prev_free = 0;
        }
        p += n;
    }
    CHECK(used == h->used);
    CHECK(dirty_free == h->dirty_free);
    CHECK(free_runs == h->free_runs);
    CHECK(spans == h->spans);
    CHECK(h->used > h->cap_pages || h->used + h->dirty_free <= h->cap_pages);
    uint64_t listed = 0;
    for (unsigned b = 1; b <= LARGE; b++) {
        int nonempty = h->bins[b] != NIL;
        if (b < LARGE)
            CHECK(nonempty == (int)((h->binmap[b / 64] >> (b % 64)) & 1));
        uint32_t prev = NIL;
        for (uint32_t p = h->bins[b]; p != NIL; p = h->fnext[p]) {
            CHECK(run_free(h, p) && bin_of(run_len(h, p)) == b);
            CHECK(h->fprev[p] == prev);
            prev = p;
            CHECK(++listed <= free_runs);
        }
    }
    CHECK(listed == free_runs);
    return 0;
}

uint64_t tqkv_host_resident_bytes(const tqkv_host *h)
{
    size_t sys = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (size_t)h->hwm << h->page_shift;
    if (len == 0)
        return 0;
    size_t nvec = (len + sys - 1) / sys;
    unsigned char *vec = tqkv_malloc(nvec);
    if (!vec)
        return UINT64_MAX;
    uint64_t res = 0;
    if (mincore(h->base, len, vec) != 0) {
        res = UINT64_MAX;
    } else {
        for (size_t i = 0; i < nvec; i++)
            res += vec[i] & 1u;
        res *= sys;
    }
    tqkv_free(vec);
    return res;
}

int tqkv_host_create(const tqkv_host_config *cfg, tqkv_host **out)
{
    size_t ps = cfg->page_size ? cfg->page_size : TQKV_HOST_DEFAULT_PAGE;
    size_t sys = (size_t)sysconf(_SC_PAGESIZE);
    uint64_t maxc = cfg->max_capacity ? cfg->max_capacity : cfg->capacity;
    if (ps < 4096 || (ps & (ps - 1)) || ps % sys || cfg->capacity < ps || maxc < cfg->capacity)
        return TQKV_EINVAL;
    uint64_t npages = maxc / ps;
    if (npages >= (1ull << 31) - 1) /* tags hold length << 1 in 32 bits */
        return TQKV_EINVAL;

    tqkv_host *h = tqkv_calloc(1, sizeof(*h));
    if (!h)
        return TQKV_ENOMEM;
    h->tier.ops = &host_ops;
    h->tier.id = TQKV_TIER_HOST;
    h->tier.flags = TQKV_TIER_F_ADDRESSABLE;
    h->page_size = ps;
    h->page_shift = (unsigned)__builtin_ctzll(ps);
    h->npages = (uint32_t)npages;
    h->cap_pages = cfg->capacity / ps;
    h->arena_len = (size_t)npages * ps;

    void *base = mmap(NULL, h->arena_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        goto fail;
    h->base = base;
    /* Exact residency: a huge page would make a one-page span cost 2 MiB of memory. */
    (void)madvise(h->base, h->arena_len, MADV_NOHUGEPAGE);

    h->meta_len = (size_t)npages * (4 * sizeof(uint32_t) + 1);
    void *meta = mmap(NULL, h->meta_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (meta == MAP_FAILED)
        goto fail;
    h->meta = meta;
    h->tag = meta;
    h->fnext = h->tag + npages;
    h->fprev = h->fnext + npages;
    h->dcnt = h->fprev + npages;
    h->dirty = (uint8_t *)(h->dcnt + npages);

    for (unsigned b = 0; b <= LARGE; b++)
        h->bins[b] = NIL;
    set_run(h, 0, h->npages, 1);
    h->dcnt[0] = 0;
    fl_insert(h, 0, h->npages);
    h->free_runs = 1;
    *out = h;
    return 0;
fail:
    if (h->base)
        munmap(h->base, h->arena_len);
    tqkv_free(h);
    return TQKV_ENOMEM;
}

void tqkv_host_destroy(tqkv_host *h)
{
    if (!h)
        return;
    munmap(h->meta, h->meta_len);
    munmap(h->base, h->arena_len);
    tqkv_free(h);
}

tqkv_tier *tqkv_host_tier(tqkv_host *h)
{
    return &h->tier;
}

tqkv_host *tqkv_host_from_tier(tqkv_tier *t)
{
    return t && t->ops == &host_ops ? (tqkv_host *)(void *)t : NULL;
}

/* ---- vtable ---- */

static void op_info(tqkv_tier *t, tqkv_tier_info *out)
{
    tqkv_host *h = (tqkv_host *)(void *)t;
    memset(out, 0, sizeof(*out));
    out->capacity = h->cap_pages << h->page_shift;
    out->used = h->used << h->page_shift;
    out->entries = h->spans;
    out->resident = (h->used + h->dirty_free) << h->page_shift;
}
static int op_set_capacity(tqkv_tier *t, uint64_t bytes)
{
    return tqkv_host_set_capacity((tqkv_host *)(void *)t, bytes);
}
static void op_destroy(tqkv_tier *t)
{
    tqkv_host_destroy((tqkv_host *)(void *)t);
}
static int op_span_alloc(tqkv_tier *t, size_t len, tqkv_tier_span *out)
{
    return tqkv_host_alloc((tqkv_host *)(void *)t, len, out);
}
static void op_span_trim(tqkv_tier *t, tqkv_tier_span *span, size_t len)
{
    tqkv_host_trim((tqkv_host *)(void *)t, span, len);
}
static void op_span_free(tqkv_tier *t, const tqkv_tier_span *span)
{
    tqkv_host_free((tqkv_host *)(void *)t, span);
}

static const tqkv_tier_ops host_ops = {
    .name = "host",
    .info = op_info,
    .set_capacity = op_set_capacity,
    .destroy = op_destroy,
    .span_alloc = op_span_alloc,
    .span_trim = op_span_trim,
    .span_free = op_span_free,
};
