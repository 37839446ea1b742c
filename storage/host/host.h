/* The host DRAM tier engine: one arena of address space reserved up front (anonymous,
 * MAP_NORESERVE), carved into pages and handed out as contiguous page runs. Pages are 16 KiB by
 * default: block lengths are not page multiples, and a block wastes half a page on average.
 * Blocks are never malloc'd one by one, so the bytes the tier accounts for are the bytes it
 * holds. Freed runs stay mapped ("dirty", ready to be reused without page faults) only while
 * used + dirty pages fit in the capacity; beyond that they are returned to the kernel with
 * madvise(MADV_DONTNEED). The arena's resident size therefore never exceeds the capacity.
 *
 * Allocation: best fit over exact-size free lists (one per run length up to TQKV_HOST_BINS - 1
 * pages, found through a bitmap) plus one list of longer runs; boundary tags at both ends of
 * every run coalesce neighbours on free in O(1). Knows nothing of keys: the policy
 * (storage/tiers.c) indexes the spans. Not thread-safe: one thread (the daemon's loop) calls it;
 * other threads may read and write inside spans they were handed. */
#ifndef TQKV_HOST_H
#define TQKV_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQKV_HOST_DEFAULT_PAGE (16u * 1024u)
#define TQKV_HOST_BINS 1024u

typedef struct tqkv_host tqkv_host;

typedef struct {
    uint64_t capacity;     /* bytes (rounded down to pages); > 0 */
    uint64_t max_capacity; /* address space reserved; 0: capacity. >= capacity */
    uint32_t page_size;    /* power of two >= 4096; 0: TQKV_HOST_DEFAULT_PAGE */
} tqkv_host_config;

/* Reserves the arena. @return 0, TQKV_EINVAL (bad config), TQKV_ENOMEM (mmap or metadata). */
int tqkv_host_create(const tqkv_host_config *cfg, tqkv_host **out);
/* Unmaps the arena (spans become invalid). NULL: no-op. */
void tqkv_host_destroy(tqkv_host *h);
/* The tier handle (vtable: info, set_capacity, destroy, span_alloc, span_trim, span_free). */
tqkv_tier *tqkv_host_tier(tqkv_host *h);
/* The engine behind a tier handle made by tqkv_host_create, or NULL for another engine. */
tqkv_host *tqkv_host_from_tier(tqkv_tier *t);

/* Allocates a run of ceil(len / page) pages. @return 0, TQKV_EINVAL (len 0 or too large for the
 * arena), TQKV_ENOSPC (over capacity, or no free run long enough). */
int tqkv_host_alloc(tqkv_host *h, size_t len, tqkv_tier_span *out);
/* Shrinks a span to len bytes (0 < len <= span->len), freeing whole tail pages. */
void tqkv_host_trim(tqkv_host *h, tqkv_tier_span *span, size_t len);
void tqkv_host_free(tqkv_host *h, const tqkv_tier_span *span);
/* Capacity change; shrinking purges cached free pages. @return 0, TQKV_ERANGE (past
 * max_capacity or below one page). */
int tqkv_host_set_capacity(tqkv_host *h, uint64_t bytes);
/* Returns every cached free page to the kernel. */
void tqkv_host_purge(tqkv_host *h);

typedef struct {
    uint64_t page_size;
    uint64_t capacity_pages, total_pages; /* capacity; arena length */
    uint64_t used_pages, dirty_free_pages, free_runs, spans;
    uint64_t largest_free_run; /* pages */
    uint64_t purged_pages;     /* pages given back with MADV_DONTNEED, cumulative */
} tqkv_host_stats;
void tqkv_host_get_stats(const tqkv_host *h, tqkv_host_stats *out);
void tqkv_host_arena(const tqkv_host *h, void **base, size_t *len);

/* Checks every invariant of the page map (runs tile the arena, tags agree, free lists hold
 * exactly the free runs, counters match a recount). For tests; O(pages touched).
 * @return 0 or TQKV_EINTERNAL (and logs what disagrees). */
int tqkv_host_check(const tqkv_host *h);
/* Bytes of the arena the kernel reports resident (mincore), up to the highest page ever
 * used. For tests and diagnostics. @return bytes, or UINT64_MAX if mincore failed. */
uint64_t tqkv_host_resident_bytes(const tqkv_host *h);

#ifdef __cplusplus
}
#endif
#endif
