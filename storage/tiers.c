/* The store (tiers.h): index, namespaces, LRU, pins, leases, read references, placement across
 * tiers and statistics. DESIGN: one hash table maps (namespace, key) to an entry that owns a span
 * of the host arena. The host LRU list holds the entries that may be evicted some day; pinned
 * entries leave it while pinned. Leases and read references are counted on the entry and make
 * the eviction scan skip it. An entry leaves the index when it is deleted, evicted or cleared,
 * but its span is freed only when the last reference goes (readers on worker threads never see
 * memory reused under them). Leases do not point at entries: they remember (key, sequence
 * number) so that a lease outliving its entry, or one re-PUT under the same key, is harmless.
 * Lower tiers (keyed engines) get evicted entries written to them (demotion) and answer host
 * misses of GET (promotion back into the host arena) and LOOKUP. Everything runs on the loop
 * thread; engines' completions arrive there too. */
#include "tiers.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "host.h"
#include "tqkv_alloc.h"
#include "tqkv_log.h"
#include "tqkv_time.h"

/* Someone waiting for an entry's write-through to be acknowledged (a PUT's reply). */
typedef struct waiter {
    struct waiter *next;
    tqkv_store_commit_cb cb;
    void *arg;
} waiter;

/* An index entry; a read reference is a pointer to one, and so is a reservation (not linked). */
typedef struct tqkv_store_ref entry;
struct tqkv_store_ref {
    entry *hnext;       /* hash chain */
    entry *prev, *next; /* LRU list (when in_lru) */
    tqkv_ns *ns;
    uint64_t seq;
    tqkv_tier_span span; /* span.len: the block's length */
    uint32_t refs, pins, leases;
    uint32_t through;  /* write-through writes in flight (each also holds a ref) */
    uint32_t demoting; /* demotion writes in flight (each also holds a ref) */
    int write_err;     /* first failure of the write-through writes in flight */
    waiter *waiters;   /* called when `through` drops to 0 */
    uint8_t linked, in_lru;
    uint8_t copies; /* bit (1 << tier id): that lower tier holds the block (acknowledged) */
    uint8_t heap;   /* span.ptr is a heap buffer (a hit served without promotion), no span */
    uint8_t key[TQKV_KEY_BYTES];
};

struct tqkv_store_put {
    entry e;
};

struct tqkv_ns {
    tqkv_ns_desc desc;
    uint32_t id;
    void *user;
    tqkv_ns_stats st;
    tqkv_ns *next;
};

typedef struct {
    uint64_t seq;
    uint8_t key[TQKV_KEY_BYTES];
} lease_item;

typedef struct {
    uint64_t id, expiry_ns;
    tqkv_ns *ns;
    uint32_t n;
    lease_item items[];
} lease;

/* The protected set: (namespace id, key) of pinned and leased blocks, counted, under its own
 * mutex so that the SSD engine's writer thread can ask about it (tqkv_store_is_protected). */
typedef struct prot_item {
    struct prot_item *next;
    uint32_t ns_id, count;
    uint8_t key[TQKV_KEY_BYTES];
} prot_item;
#define PROT_BUCKETS 4096

struct tqkv_store {
    tqkv_host *host;
    tqkv_tier *lower[TQKV_TIER_COUNT]; /* keyed tiers by id */
    tqkv_write_policy policy[TQKV_TIER_COUNT];
    pthread_t owner; /* the loop thread: the only one that may run the policy */
    pthread_mutex_t prot_mu;
    prot_item *prot[PROT_BUCKETS];
    uint32_t next_ns_id;
    entry **buckets;
    size_t nbuckets, count;
    uint64_t hseed;
    entry lru; /* sentinel: lru.next is the most recently used */
    tqkv_ns *ns_head, *ns_tail;
    uint32_t n_ns;
    lease **heap; /* min-heap on expiry */
    size_t nheap, capheap;
    uint64_t next_lease_id, next_seq;
    uint64_t (*clock_ns)(void *);
    void *clock_arg;
    uint64_t page_size;
    uint64_t demoting_bytes; /* host bytes (page-rounded) held by demotions in flight */
    tqkv_store_stats st;     /* counters; capacity/used/... filled at read time */
};

static const char *const tier_names[TQKV_TIER_COUNT] = {"none", "gpu", "host",
                                                        "ssd",  "redis", "peer"};

const char *tqkv_tier_name(int tier)
{
    return tier >= 0 && tier < TQKV_TIER_COUNT ? tier_names[tier] : "unknown";
}

/* ---- small helpers ---- */

static uint64_t now_ns(tqkv_store *s)
{
    return s->clock_ns ? s->clock_ns(s->clock_arg) : tqkv_now_ns();
}

/* Keys come from clients: a seeded hash of the whole key keeps crafted keys from piling up in
 * one chain (the first 8 bytes alone would be a fine hash for honest SHA-256 keys). */
static size_t bucket_of(const tqkv_store *s, uint32_t ns_id, const uint8_t *key)
{
    uint64_t k = XXH3_64bits_withSeed(key, TQKV_KEY_BYTES, s->hseed ^ ns_id);
    return (size_t)k & (s->nbuckets - 1);
}

static entry *idx_find(const tqkv_store *s, const tqkv_ns *ns, const uint8_t *key)
{
    for (entry *e = s->buckets[bucket_of(s, ns->id, key)]; e; e = e->hnext)
        if (e->ns == ns && memcmp(e->key, key, TQKV_KEY_BYTES) == 0)
            return e;
    return NULL;
}

/* Doubles the table; on allocation failure keeps the old one (chains just get longer). */
static void idx_grow(tqkv_store *s)
{
    size_t nb = s->nbuckets * 2;
    entry **nbk = tqkv_calloc(nb, sizeof(*nbk));
    if (!nbk)
        return;
    entry **old = s->buckets;
    size_t on = s->nbuckets;
    s->buckets = nbk;
    s->nbuckets = nb;
    for (size_t i = 0; i < on; i++) {
        for (entry *e = old[i], *nx; e; e = nx) {
            nx = e->hnext;
            size_t b = bucket_of(s, e->ns->id, e->key);
            e->hnext = nbk[b];
            nbk[b] = e;
        }
    }
    tqkv_free(old);
}

static void idx_insert(tqkv_store *s, entry *e)
{
    if (s->count >= s->nbuckets)
        idx_grow(s);
    size_t b = bucket_of(s, e->ns->id, e->key);
    e->hnext = s->buckets[b];
    s->buckets[b] = e;
    s->count++;
}

static void idx_remove(tqkv_store *s, entry *e)
{
    entry **pp = &s->buckets[bucket_of(s, e->ns->id, e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    s->count--;
}

static void lru_remove(tqkv_store *s, entry *e)
{
    (void)s;
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
    e->in_lru = 0;
}

static void lru_push_front(tqkv_store *s, entry *e)
{
    e->next = s->lru.next;
    e->prev = &s->lru;
    s->lru.next->prev = e;
    s->lru.next = e;
    e->in_lru = 1;
}

static void lru_touch(tqkv_store *s, entry *e)
{
    if (e->in_lru && s->lru.next != e) {
        lru_remove(s, e);
        lru_push_front(s, e);
    }
}

static tqkv_tier *host_tier(const tqkv_store *s)
{
    return tqkv_host_tier(s->host);
}

static void entry_free(tqkv_store *s, entry *e)
{
    if (e->heap)
        tqkv_free(e->span.ptr);
    else if (e->span.n_units)
        tqkv_host_free(s->host, &e->span);
    tqkv_free(e);
}

/* ---- the protected set ---- */

static size_t prot_bucket(uint32_t ns_id, const uint8_t *key)
{
    return (size_t)XXH3_64bits_withSeed(key, TQKV_KEY_BYTES, ns_id) & (PROT_BUCKETS - 1);
}

/* Counts one more protection of (ns_id, key). On allocation failure the key is simply not
 * protected in lower tiers (it still is in the host tier). */
static void prot_add(tqkv_store *s, uint32_t ns_id, const uint8_t *key)
{
    size_t b = prot_bucket(ns_id, key);
    pthread_mutex_lock(&s->prot_mu);
    prot_item *it = s->prot[b];
    while (it && !(it->ns_id == ns_id && memcmp(it->key, key, TQKV_KEY_BYTES) == 0))
        it = it->next;
    if (it) {
        it->count++;
    } else if ((it = tqkv_malloc(sizeof(*it))) != NULL) {
        it->ns_id = ns_id;
        it->count = 1;
        memcpy(it->key, key, TQKV_KEY_BYTES);
        it->next = s->prot[b];
        s->prot[b] = it;
    }
    pthread_mutex_unlock(&s->prot_mu);
}

static void prot_del(tqkv_store *s, uint32_t ns_id, const uint8_t *key)
{
    size_t b = prot_bucket(ns_id, key);
    pthread_mutex_lock(&s->prot_mu);
    prot_item **pp = &s->prot[b];
    while (*pp && !((*pp)->ns_id == ns_id && memcmp((*pp)->key, key, TQKV_KEY_BYTES) == 0))
        pp = &(*pp)->next;
    prot_item *it = *pp;
    if (it && --it->count == 0) {
        *pp = it->next;
        tqkv_free(it);
    }
    pthread_mutex_unlock(&s->prot_mu);
}

int tqkv_store_is_protected(tqkv_store *s, uint32_t ns_id, const uint8_t key[TQKV_KEY_BYTES])
{
    size_t b = prot_bucket(ns_id, key);
    pthread_mutex_lock(&s->prot_mu);
    prot_item *it = s->prot[b];
    while (it && !(it->ns_id == ns_id && memcmp(it->key, key, TQKV_KEY_BYTES) == 0))
        it = it->next;
    pthread_mutex_unlock(&s->prot_mu);
    return it != NULL;
}

/* Takes an entry out of the index and LRU; frees it unless referenced. */
static void entry_unlink(tqkv_store *s, entry *e)
{
    idx_remove(s, e);
    if (e->in_lru)
        lru_remove(s, e);
    if (e->pins) {
        s->st.pinned--;
        prot_del(s, e->ns->id, e->key);
        e->pins = 0;
    }
    e->linked = 0;
    s->st.entries--;
    s->st.bytes -= e->span.len;
    e->ns->st.entries--;
    e->ns->st.bytes -= e->span.len;
    if (e->refs == 0)
        entry_free(s, e);
}

static void entry_link(tqkv_store *s, entry *e)
{
    e->seq = ++s->next_seq;
    e->linked = 1;
    idx_insert(s, e);
    lru_push_front(s, e);
    s->st.entries++;
    s->st.bytes += e->span.len;
    e->ns->st.entries++;
    e->ns->st.bytes += e->span.len;
}

/* ---- leases ---- */

static void heap_swap(tqkv_store *s, size_t a, size_t b)
{
    lease *t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
}

static void heap_up(tqkv_store *s, size_t i)
{
    while (i > 0 && s->heap[(i - 1) / 2]->expiry_ns > s->heap[i]->expiry_ns) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(tqkv_store *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nheap && s->heap[l]->expiry_ns < s->heap[m]->expiry_ns)
            m = l;
        if (r < s->nheap && s->heap[r]->expiry_ns < s->heap[m]->expiry_ns)
            m = r;
        if (m == i)
            return;
        heap_swap(s, i, m);
        i = m;
    }
}

static lease *heap_remove_at(tqkv_store *s, size_t i)
{
    lease *l = s->heap[i];
    s->nheap--;
    if (i != s->nheap) {
        s->heap[i] = s->heap[s->nheap];
        heap_up(s, i);
        heap_down(s, i);
    }
    return l;
}

static void lease_end(tqkv_store *s, lease *l)
{
    for (uint32_t i = 0; i < l->n; i++) {
        entry *e = idx_find(s, l->ns, l->items[i].key);
        if (e && l->items[i].seq && e->seq == l->items[i].seq && e->leases > 0)
            e->leases--;
        prot_del(s, l->ns->id, l->items[i].key);
    }
    s->st.leases--;
    tqkv_free(l);
}

static void leases_expire(tqkv_store *s)
{
    if (s->nheap == 0)
        return;
    uint64_t now = now_ns(s);
    while (s->nheap > 0 && s->heap[0]->expiry_ns <= now)
        lease_end(s, heap_remove_at(s, 0));
}

/* Leases the first `n` keys (all hits now: host entries are exempt from eviction, and every key,
 * wherever it is, joins the protected set that lower tiers' eviction consults).
 * @return 0 or TQKV_ENOMEM (nothing leased). */
static int lease_take(tqkv_store *s, tqkv_ns *ns, const uint8_t (*keys)[TQKV_KEY_BYTES],
                      uint32_t n, uint32_t lease_ms, uint64_t *id)
{
    if (s->nheap == s->capheap) {
        size_t nc = s->capheap ? s->capheap * 2 : 16;
        lease **nh = tqkv_realloc(s->heap, nc * sizeof(*nh));
        if (!nh)
            return TQKV_ENOMEM;
        s->heap = nh;
        s->capheap = nc;
    }
    lease *l = tqkv_malloc(sizeof(*l) + (size_t)n * sizeof(lease_item));
    if (!l)
        return TQKV_ENOMEM;
    l->id = ++s->next_lease_id;
    l->expiry_ns = now_ns(s) + (uint64_t)lease_ms * 1000000ull;
    l->ns = ns;
    l->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        entry *e = idx_find(s, ns, keys[i]);
        if (e)
            e->leases++;
        l->items[l->n].seq = e ? e->seq : 0; /* 0: a lower-tier hit */
        memcpy(l->items[l->n].key, keys[i], TQKV_KEY_BYTES);
        prot_add(s, ns->id, keys[i]);
        l->n++;
    }
    s->heap[s->nheap++] = l;
    heap_up(s, s->nheap - 1);
    s->st.leases++;
    *id = l->id;
    return 0;
}

int tqkv_store_lease_release(tqkv_store *s, uint64_t lease_id)
{
    leases_expire(s);
    for (size_t i = 0; i < s->nheap; i++) {
        if (s->heap[i]->id == lease_id) {
            lease_end(s, heap_remove_at(s, i));
            return 0;
        }
    }
    return TQKV_ENOENT;
}

/* ---- writes to lower tiers: write-through, async, demotion, fill after promotion ---- */

static tqkv_tier *next_lower(const tqkv_store *s, int after)
{
    for (int id = after + 1; id < TQKV_TIER_COUNT; id++)
        if (s->lower[id])
            return s->lower[id];
    return NULL;
}

enum { W_THROUGH, W_ASYNC, W_DEMOTE, W_FILL };

/* One write of an entry's bytes to one lower tier; holds a reference on the entry. */
typedef struct {
    tqkv_store *s;
    entry *e;
    int tier_id, kind;
} wctx;

/* Runs the waiters once the entry's write-through writes are all answered; a failed
 * write-through takes the block out of the store (its PUT is answered with the error, so it
 * must not stay behind as if stored). */
static void through_settle(tqkv_store *s, entry *e)
{
    if (--e->through > 0)
        return;
    int err = e->write_err;
    if (err && e->linked)
        entry_unlink(s, e);
    for (waiter *w = e->waiters, *nx; w; w = nx) {
        nx = w->next;
        w->cb(w->arg, err);
        tqkv_free(w);
    }
    e->waiters = NULL;
}

static void write_done(void *arg, int status)
{
    wctx *w = arg;
    tqkv_store *s = w->s;
    entry *e = w->e;
    if (status == 0) {
        e->copies |= (uint8_t)(1u << w->tier_id);
        s->st.tiers[w->tier_id].bytes_in += e->span.len;
        if (w->kind == W_DEMOTE)
            s->st.tiers[TQKV_TIER_HOST].demotions++;
        else if (w->kind == W_FILL)
            s->st.tiers[w->tier_id].promotions++;
    } else {
        s->st.tiers[w->tier_id].errors++;
        if (w->kind == W_THROUGH && !e->write_err)
            e->write_err = status < 0 ? status : TQKV_ETIER;
    }
    if (w->kind == W_THROUGH)
        through_settle(s, e);
    if (w->kind == W_DEMOTE && --e->demoting == 0) {
        s->demoting_bytes -= (uint64_t)e->span.n_units * s->page_size;
        if (!(e->copies & ~1u))
            s->st.tiers[TQKV_TIER_HOST].drops++; /* no lower tier took it */
    }
    tqkv_free(w);
    tqkv_store_ref_release(s, e);
}

/* Starts writing entry e to tier id. @return 1 if the write was issued (its completion may have
 * run already), 0 if it could not be (counted as an error of the tier). */
static int write_start(tqkv_store *s, entry *e, int id, int kind)
{
    tqkv_tier *t = s->lower[id];
    wctx *w = tqkv_malloc(sizeof(*w));
    if (!w) {
        s->st.tiers[id].errors++;
        if (kind == W_THROUGH && !e->write_err)
            e->write_err = TQKV_ENOMEM;
        return 0;
    }
    w->s = s;
    w->e = e;
    w->tier_id = id;
    w->kind = kind;
    e->refs++; /* the write borrows the bytes */
    s->st.refs++;
    if (kind == W_THROUGH)
        e->through++;
    else if (kind == W_DEMOTE)
        e->demoting++;
    int r = t->ops->write(t, e->ns->id, e->key, e->span.ptr, e->span.len, write_done, w);
    if (r < 0)
        write_done(w, r);
    return 1;
}

/* ---- eviction ---- */

static int evictable(const entry *e)
{
    return e->refs == 0 && e->pins == 0 && e->leases == 0;
}

/* Evicts the least recently used evictable entry. A block that a lower tier holds already
 * (written through, or promoted from there) is dropped from the host at once; otherwise it is
 * demoted: written to the write-back tiers (to every attached tier when none is write-back),
 * its span freed when the writes complete; with no lower tier it is dropped.
 * @return the host bytes (page-rounded) it frees or will free, 0 when nothing is evictable. */
/* Evicts e (evictable) from the host tier, demoting it where the policy says. @return its bytes. */
static uint64_t evict_entry(tqkv_store *s, entry *e)
{
    uint64_t bytes = (uint64_t)e->span.n_units * s->page_size;
    s->st.tiers[TQKV_TIER_HOST].evictions++;
    int targets[TQKV_TIER_COUNT], nt = 0, any_back = 0;
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++) {
        if (!s->lower[id] || s->policy[id] != TQKV_WRITE_BACK)
            continue;
        any_back = 1;
        if (!(e->copies & (1u << id)))
            targets[nt++] = id;
    }
    if (!any_back && !(e->copies & ~1u)) /* through/async writes failed: try them again */
        for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++)
            if (s->lower[id])
                targets[nt++] = id;
    if (nt == 0) {
        if (!(e->copies & ~1u))
            s->st.tiers[TQKV_TIER_HOST].drops++;
        entry_unlink(s, e);
        return bytes;
    }
    e->refs++; /* held while the writes are issued */
    s->st.refs++;
    entry_unlink(s, e);
    s->demoting_bytes += bytes;
    e->demoting++; /* guard: the bytes are accounted once, when the last write completes */
    for (int i = 0; i < nt; i++)
        write_start(s, e, targets[i], W_DEMOTE);
    if (--e->demoting == 0) { /* every write answered already */
        s->demoting_bytes -= bytes;
        if (!(e->copies & ~1u))
            s->st.tiers[TQKV_TIER_HOST].drops++;
    }
    tqkv_store_ref_release(s, e);
    return bytes;
}

/* Evicts the least recently used evictable entry. @return its bytes, 0 when there is none. */
static uint64_t evict_one(tqkv_store *s)
{
    entry *e = s->lru.prev;
    while (e != &s->lru && !evictable(e))
        e = e->prev;
    return e == &s->lru ? 0 : evict_entry(s, e);
}

/* Allocates a host span of len bytes, evicting as needed. @return 0, TQKV_ENOSPC, TQKV_EAGAIN
 * (space is being freed by demotions in flight), TQKV_EINVAL. */
static int host_alloc_evicting(tqkv_store *s, size_t len, tqkv_tier_span *span)
{
    tqkv_host_stats hs;
    tqkv_host_get_stats(s->host, &hs);
    if (len > hs.capacity_pages * hs.page_size)
        return TQKV_ENOSPC;
    for (;;) {
        int r = tqkv_host_alloc(s->host, len, span);
        if (r != TQKV_ENOSPC)
            return r;
        if (evict_one(s) == 0)
            return s->demoting_bytes ? TQKV_EAGAIN : TQKV_ENOSPC;
    }
}

/* ---- store ---- */

static uint64_t phys_mem(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 4ull << 30;
}

int tqkv_store_create(const tqkv_store_config *cfg, tqkv_store **out)
{
    tqkv_store_config c = {0};
    if (cfg)
        c = *cfg;
    uint64_t mem = phys_mem();
    if (c.host_capacity == 0)
        c.host_capacity = mem / 4;
    if (c.host_max_capacity == 0)
        c.host_max_capacity = c.host_capacity > mem ? c.host_capacity : mem;
    if (c.host_max_capacity < c.host_capacity)
        return TQKV_EINVAL;

    tqkv_store *s = tqkv_calloc(1, sizeof(*s));
    if (!s)
        return TQKV_ENOMEM;
    s->nbuckets = 1024;
    s->buckets = tqkv_calloc(s->nbuckets, sizeof(*s->buckets));
    if (!s->buckets) {
        tqkv_free(s);
        return TQKV_ENOMEM;
    }
    tqkv_host_config hc = {c.host_capacity, c.host_max_capacity, c.host_page_size};
    int r = tqkv_host_create(&hc, &s->host);
    if (r == TQKV_ENOMEM && hc.max_capacity > hc.capacity) {
        /* Strict overcommit refuses a large MAP_NORESERVE reservation: do without growth room. */
        TQKV_LOGW("store", "msg=\"cannot reserve the arena's growth room: capacity is fixed\" "
                           "max_capacity=%llu",
                  (unsigned long long)hc.max_capacity);
        hc.max_capacity = hc.capacity;
        r = tqkv_host_create(&hc, &s->host);
    }
    if (r < 0) {
        tqkv_free(s->buckets);
        tqkv_free(s);
        return r;
    }
    tqkv_host_stats hs;
    tqkv_host_get_stats(s->host, &hs);
    s->page_size = hs.page_size;
    s->lru.next = s->lru.prev = &s->lru;
    s->hseed = tqkv_now_ns() * 0xD6E8FEB86659FD93ull ^ (uint64_t)(uintptr_t)s;
    s->clock_ns = c.clock_ns;
    s->clock_arg = c.clock_arg;
    s->owner = pthread_self();
    s->next_ns_id = 1;
    pthread_mutex_init(&s->prot_mu, NULL);
    *out = s;
    return 0;
}

void tqkv_store_destroy(tqkv_store *s)
{
    if (!s)
        return;
    /* Lower tiers first: their pending completions run (canceled) while the store still exists. */
    for (int id = 0; id < TQKV_TIER_COUNT; id++) {
        if (s->lower[id]) {
            tqkv_tier *t = s->lower[id];
            s->lower[id] = NULL;
            t->ops->destroy(t);
        }
    }
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (entry *e = s->buckets[i], *nx; e; e = nx) {
            nx = e->hnext;
            tqkv_free(e); /* the arena goes as a whole */
        }
    }
    while (s->nheap)
        tqkv_free(s->heap[--s->nheap]);
    tqkv_free(s->heap);
    tqkv_free(s->buckets);
    for (tqkv_ns *ns = s->ns_head, *nx; ns; ns = nx) {
        nx = ns->next;
        tqkv_free(ns);
    }
    for (size_t b = 0; b < PROT_BUCKETS; b++)
        for (prot_item *it = s->prot[b], *nx; it; it = nx) {
            nx = it->next;
            tqkv_free(it);
        }
    pthread_mutex_destroy(&s->prot_mu);
    tqkv_host_destroy(s->host);
    tqkv_free(s);
}

int tqkv_store_attach_tier(tqkv_store *s, tqkv_tier *t)
{
    if (!t || !t->ops || !(t->flags & TQKV_TIER_F_KEYED) || (int)t->id <= TQKV_TIER_HOST ||
        (int)t->id >= TQKV_TIER_COUNT || !t->ops->write || !t->ops->read)
        return TQKV_EINVAL;
    if (s->lower[t->id])
        return TQKV_EEXIST;
    s->lower[t->id] = t;
    s->policy[t->id] = TQKV_WRITE_BACK;
    return 0;
}

int tqkv_store_set_write_policy(tqkv_store *s, tqkv_tier_id tier, tqkv_write_policy policy)
{
    if ((int)tier <= TQKV_TIER_HOST || (int)tier >= TQKV_TIER_COUNT ||
        (policy != TQKV_WRITE_BACK && policy != TQKV_WRITE_THROUGH && policy != TQKV_WRITE_ASYNC))
        return TQKV_EINVAL;
    if (!s->lower[tier])
        return TQKV_ENOENT;
    s->policy[tier] = policy;
    return 0;
}

tqkv_tier *tqkv_store_tier(tqkv_store *s, tqkv_tier_id tier)
{
    return (int)tier > TQKV_TIER_HOST && (int)tier < TQKV_TIER_COUNT ? s->lower[tier] : NULL;
}

void tqkv_store_host_arena(tqkv_store *s, void **base, size_t *len)
{
    tqkv_host_arena(s->host, base, len);
}

/* ---- namespaces ---- */

static int ns_normalize(const tqkv_ns_desc *in, tqkv_ns_desc *out)
{
    size_t nl = strnlen(in->name, sizeof(in->name));
    size_t pl = strnlen(in->preset, sizeof(in->preset));
    if (nl == 0 || nl == sizeof(in->name) || pl == sizeof(in->preset) ||
        in->fingerprint_len > TQKV_NS_FINGERPRINT_MAX)
        return TQKV_EINVAL;
    memset(out, 0, sizeof(*out));
    memcpy(out->name, in->name, nl);
    memcpy(out->preset, in->preset, pl);
    memcpy(out->fingerprint, in->fingerprint, in->fingerprint_len);
    out->fingerprint_len = in->fingerprint_len;
    out->n_layers = in->n_layers;
    out->n_kv_heads = in->n_kv_heads;
    out->head_dim = in->head_dim;
    out->dtype = in->dtype;
    out->chunk_size = in->chunk_size;
    out->seed = in->seed;
    return 0;
}

int tqkv_store_ns_register(tqkv_store *s, const tqkv_ns_desc *desc, tqkv_ns **out, int *created)
{
    tqkv_ns_desc d;
    if (!desc || ns_normalize(desc, &d) < 0)
        return TQKV_EINVAL;
    tqkv_ns *ns = tqkv_store_ns_find(s, d.name);
    if (ns) {
        if (memcmp(&ns->desc, &d, sizeof(d)) != 0)
            return TQKV_ENSCONFLICT;
        if (created)
            *created = 0;
        *out = ns;
        return 0;
    }
    ns = tqkv_calloc(1, sizeof(*ns));
    if (!ns)
        return TQKV_ENOMEM;
    ns->desc = d;
    ns->id = s->next_ns_id++;
    s->n_ns++;
    if (s->ns_tail)
        s->ns_tail->next = ns;
    else
        s->ns_head = ns;
    s->ns_tail = ns;
    if (created)
        *created = 1;
    *out = ns;
    return 0;
}

int tqkv_store_ns_register_id(tqkv_store *s, const tqkv_ns_desc *desc, uint32_t id,
                              tqkv_ns **out)
{
    tqkv_ns_desc d;
    if (!desc || id == 0 || id == UINT32_MAX || ns_normalize(desc, &d) < 0)
        return TQKV_EINVAL;
    if (tqkv_store_ns_find(s, d.name) || tqkv_store_ns_by_id(s, id))
        return TQKV_EEXIST;
    uint32_t keep = s->next_ns_id;
    s->next_ns_id = id;
    int r = tqkv_store_ns_register(s, &d, out, NULL);
    s->next_ns_id = keep > id ? keep : id + 1;
    return r;
}

uint32_t tqkv_store_ns_next_id(const tqkv_store *s)
{
    return s->next_ns_id;
}

tqkv_ns *tqkv_store_ns_by_id(tqkv_store *s, uint32_t id)
{
    for (tqkv_ns *ns = s->ns_head; ns; ns = ns->next)
        if (ns->id == id)
            return ns;
    return NULL;
}

tqkv_ns *tqkv_store_ns_find(tqkv_store *s, const char *name)
{
    for (tqkv_ns *ns = s->ns_head; ns; ns = ns->next)
        if (strncmp(ns->desc.name, name, sizeof(ns->desc.name)) == 0)
            return ns;
    return NULL;
}

void tqkv_store_ns_foreach(tqkv_store *s, void (*fn)(void *arg, tqkv_ns *ns), void *arg)
{
    for (tqkv_ns *ns = s->ns_head; ns; ns = ns->next)
        fn(arg, ns);
}

const tqkv_ns_desc *tqkv_ns_get_desc(const tqkv_ns *ns)
{
    return &ns->desc;
}
uint32_t tqkv_ns_get_id(const tqkv_ns *ns)
{
    return ns->id;
}
void tqkv_ns_set_user(tqkv_ns *ns, void *user)
{
    ns->user = user;
}
void *tqkv_ns_get_user(const tqkv_ns *ns)
{
    return ns->user;
}
void tqkv_ns_get_stats(const tqkv_ns *ns, tqkv_ns_stats *out)
{
    *out = ns->st;
}

/* ---- PUT ---- */

int tqkv_store_put_reserve(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                           size_t len, tqkv_store_put **out, void **buf)
{
    if (!ns || !key || len == 0 || !out || !buf)
        return TQKV_EINVAL;
    leases_expire(s);
    if (idx_find(s, ns, key)) {
        s->st.put_exists++;
        ns->st.put_exists++;
        return TQKV_EEXIST;
    }
    tqkv_store_put *p = tqkv_calloc(1, sizeof(*p));
    if (!p)
        return TQKV_ENOMEM;
    int r = host_alloc_evicting(s, len, &p->e.span);
    if (r < 0) {
        if (r == TQKV_ENOSPC || r == TQKV_EAGAIN) {
            s->st.put_enospc++;
            s->st.tiers[TQKV_TIER_HOST].errors++;
        }
        tqkv_free(p);
        return r;
    }
    p->e.ns = ns;
    memcpy(p->e.key, key, TQKV_KEY_BYTES);
    s->st.reservations++;
    s->st.reserved_bytes += len;
    *out = p;
    *buf = p->e.span.ptr;
    return 0;
}

static void put_close(tqkv_store *s, tqkv_store_put *p)
{
    s->st.reservations--;
    s->st.reserved_bytes -= p->e.span.len;
}

void tqkv_store_put_abort(tqkv_store *s, tqkv_store_put *p)
{
    if (!p)
        return;
    put_close(s, p);
    s->st.put_aborts++;
    entry_free(s, &p->e);
}

static int add_waiter(entry *e, tqkv_store_commit_cb cb, void *arg)
{
    waiter *w = tqkv_malloc(sizeof(*w));
    if (!w)
        return TQKV_ENOMEM;
    w->cb = cb;
    w->arg = arg;
    w->next = e->waiters;
    e->waiters = w;
    return 0;
}

/* Issues the write-through and async writes of a just committed entry. @return 0 (nothing to
 * wait for), TQKV_STORE_PENDING (cb registered), or the write-through's error when it failed
 * at once (the entry is then gone from the index). */
static int commit_writes(tqkv_store *s, entry *e, tqkv_store_commit_cb cb, void *arg)
{
    int any = 0;
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++)
        any |= s->lower[id] && s->policy[id] != TQKV_WRITE_BACK;
    if (!any)
        return 0;
    e->refs++; /* guard: the entry stays while the writes are issued */
    s->st.refs++;
    e->through++;
    e->write_err = 0;
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++) {
        if (!s->lower[id] || s->policy[id] == TQKV_WRITE_BACK)
            continue;
        write_start(s, e, id, s->policy[id] == TQKV_WRITE_THROUGH ? W_THROUGH : W_ASYNC);
    }
    int r = 0;
    if (e->through > 1 && cb) {
        r = add_waiter(e, cb, arg);
        if (r == 0)
            r = TQKV_STORE_PENDING;
    } else if (e->through == 1) {
        r = e->write_err; /* every write-through answered inside write() */
    }
    through_settle(s, e);
    tqkv_store_ref_release(s, e);
    return r;
}

int tqkv_store_put_commit_cb(tqkv_store *s, tqkv_store_put *p, size_t len,
                             tqkv_store_commit_cb cb, void *arg)
{
    if (len == 0 || len > p->e.span.len) {
        tqkv_store_put_abort(s, p);
        return TQKV_EINVAL;
    }
    entry *e = &p->e;
    entry *have = idx_find(s, e->ns, e->key);
    if (have) {
        put_close(s, p);
        s->st.put_exists++;
        e->ns->st.put_exists++;
        entry_free(s, e);
        if (have->through && cb) { /* acknowledged only with the first PUT's write */
            int r = add_waiter(have, cb, arg);
            return r ? r : TQKV_STORE_PENDING;
        }
        return TQKV_EEXIST;
    }
    put_close(s, p);
    tqkv_host_trim(s->host, &e->span, len);
    entry_link(s, e);
    s->st.puts++;
    e->ns->st.puts++;
    s->st.tiers[TQKV_TIER_HOST].bytes_in += len;
    return commit_writes(s, e, cb, arg);
}

int tqkv_store_put_commit(tqkv_store *s, tqkv_store_put *p, size_t len)
{
    int r = tqkv_store_put_commit_cb(s, p, len, NULL, NULL);
    return r == TQKV_STORE_PENDING ? 0 : r;
}

int tqkv_store_put_sync(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                        tqkv_store_commit_cb cb, void *arg)
{
    if (!ns || !key || !cb)
        return TQKV_EINVAL;
    entry *e = idx_find(s, ns, key);
    if (!e || !e->through)
        return 0;
    int r = add_waiter(e, cb, arg);
    return r ? r : TQKV_STORE_PENDING;
}

/* ---- GET ---- */

typedef struct {
    tqkv_store *s;
    tqkv_ns *ns;
    uint8_t key[TQKV_KEY_BYTES];
    int tier_id;       /* tier being asked */
    entry *e;          /* destination of the read (not linked) */
    entry *ref;        /* result */
    size_t out_len;
    int in_call, sync_done, sync_status;
    tqkv_store_get_cb cb;
    void *arg;
} pget;

static void host_hit(tqkv_store *s, entry *e)
{
    e->refs++;
    s->st.refs++;
    lru_touch(s, e);
    s->st.hits++;
    e->ns->st.hits++;
    s->st.tiers[TQKV_TIER_HOST].hits++;
    s->st.tiers[TQKV_TIER_HOST].bytes_out += e->span.len;
}

/* The destination of a lower tier's read: a host span (evicting to make room), or, when the
 * host tier cannot take the block now (everything left is pinned, leased or being read, or its
 * space is held by demotions in flight), a heap buffer: the hit is served all the same, only not
 * promoted. Loop thread only (tier.h): a call from another thread is refused. */
static void *pget_dest(void *arg, size_t len)
{
    pget *g = arg;
    if (g->e || len == 0)
        return NULL;
    if (!pthread_equal(pthread_self(), g->s->owner)) {
        TQKV_LOGE("store", "msg=\"tier read destination asked off the loop thread: refused\"");
        return NULL;
    }
    entry *e = tqkv_calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    if (host_alloc_evicting(g->s, len, &e->span) < 0) {
        memset(&e->span, 0, sizeof(e->span));
        e->span.ptr = tqkv_malloc(len);
        if (!e->span.ptr) {
            tqkv_free(e);
            return NULL;
        }
        e->span.len = len;
        e->heap = 1;
    }
    e->ns = g->ns;
    memcpy(e->key, g->key, TQKV_KEY_BYTES);
    g->e = e;
    return e->span.ptr;
}

/* One tier answered. @return 1 when the GET is finished with a hit (g->ref set), 0 to go on. */
static int pget_tier_done(pget *g, int status)
{
    tqkv_store *s = g->s;
    entry *e = g->e;
    g->e = NULL;
    if (status == 0 && e && g->out_len > 0 && g->out_len <= e->span.len) {
        entry *have = idx_find(s, g->ns, g->key);
        if (have) { /* a PUT committed it meanwhile: serve that one */
            entry_free(s, e);
            e = have;
        } else if (e->heap) { /* served, not promoted: freed at its last release */
            e->span.len = g->out_len;
        } else {
            tqkv_host_trim(s->host, &e->span, g->out_len);
            e->copies = (uint8_t)(1u << g->tier_id);
            entry_link(s, e);
            s->st.tiers[TQKV_TIER_HOST].promotions++;
            s->st.tiers[TQKV_TIER_HOST].bytes_in += e->span.len;
            /* Found lower down (e.g. in Redis): fill the tiers above it that take every PUT. */
            for (int id = TQKV_TIER_HOST + 1; id < g->tier_id; id++)
                if (s->lower[id] && s->policy[id] != TQKV_WRITE_BACK)
                    write_start(s, e, id, W_FILL);
        }
        e->refs++;
        s->st.refs++;
        s->st.hits++;
        g->ns->st.hits++;
        s->st.tiers[g->tier_id].hits++;
        s->st.tiers[g->tier_id].bytes_out += e->span.len;
        g->ref = e;
        return 1;
    }
    if (e)
        entry_free(s, e);
    if (status == TQKV_TIER_MISS)
        s->st.tiers[g->tier_id].misses++;
    else
        s->st.tiers[g->tier_id].errors++;
    return 0;
}

static void pget_read_done(void *arg, int status);

/* Asks the next lower tiers in turn. @return TQKV_STORE_HIT (g->ref set) or TQKV_STORE_MISS when
 * finished without waiting, TQKV_STORE_PENDING when a tier answers later (pget_read_done). */
static int pget_advance(pget *g)
{
    for (;;) {
        tqkv_tier *t = next_lower(g->s, g->tier_id);
        if (!t)
            return TQKV_STORE_MISS;
        g->tier_id = t->id;
        g->in_call = 1;
        g->sync_done = 0;
        g->out_len = 0;
        int r = t->ops->read(t, g->ns->id, g->key, pget_dest, g, &g->out_len, pget_read_done, g);
        g->in_call = 0;
        if (r < 0) {
            g->sync_done = 1;
            g->sync_status = r;
        }
        if (!g->sync_done)
            return TQKV_STORE_PENDING;
        if (pget_tier_done(g, g->sync_status))
            return TQKV_STORE_HIT;
    }
}

static void pget_finish(pget *g, int result)
{
    tqkv_store *s = g->s;
    if (result == TQKV_STORE_MISS) {
        s->st.misses++;
        g->ns->st.misses++;
    }
    g->cb(g->arg, result, result == TQKV_STORE_HIT ? g->ref : NULL,
          result == TQKV_STORE_HIT ? (tqkv_tier_id)g->tier_id : TQKV_TIER_NONE);
    tqkv_free(g);
}

static void pget_read_done(void *arg, int status)
{
    pget *g = arg;
    if (g->in_call) { /* answered inside read(): pget_advance carries on */
        g->sync_done = 1;
        g->sync_status = status;
        return;
    }
    int r = pget_tier_done(g, status) ? TQKV_STORE_HIT : pget_advance(g);
    if (r != TQKV_STORE_PENDING)
        pget_finish(g, r);
}

int tqkv_store_get(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES],
                   tqkv_store_ref **ref, tqkv_store_get_cb cb, void *arg)
{
    if (!ns || !key || !ref)
        return TQKV_EINVAL;
    entry *e = idx_find(s, ns, key);
    if (e) {
        host_hit(s, e);
        *ref = e;
        return TQKV_STORE_HIT;
    }
    s->st.tiers[TQKV_TIER_HOST].misses++;
    if (cb && next_lower(s, TQKV_TIER_HOST)) {
        pget *g = tqkv_calloc(1, sizeof(*g));
        if (!g)
            return TQKV_ENOMEM;
        g->s = s;
        g->ns = ns;
        memcpy(g->key, key, TQKV_KEY_BYTES);
        g->tier_id = TQKV_TIER_HOST;
        g->cb = cb;
        g->arg = arg;
        int r = pget_advance(g);
        if (r == TQKV_STORE_PENDING)
            return r;
        if (r == TQKV_STORE_HIT)
            *ref = g->ref;
        else {
            s->st.misses++;
            ns->st.misses++;
        }
        tqkv_free(g);
        return r;
    }
    s->st.misses++;
    ns->st.misses++;
    return TQKV_STORE_MISS;
}

const void *tqkv_store_ref_data(const tqkv_store_ref *ref)
{
    return ref->span.ptr;
}

size_t tqkv_store_ref_len(const tqkv_store_ref *ref)
{
    return ref->span.len;
}

void tqkv_store_ref_release(tqkv_store *s, tqkv_store_ref *ref)
{
    if (!ref)
        return;
    ref->refs--;
    s->st.refs--;
    if (ref->refs == 0 && !ref->linked)
        entry_free(s, ref);
}

/* ---- LOOKUP ---- */

typedef struct plookup plookup;
typedef struct {
    plookup *lk;
    uint32_t i;
    uint8_t tier;
} pexists;

struct plookup {
    tqkv_store *s;
    tqkv_ns *ns;
    const uint8_t (*keys)[TQKV_KEY_BYTES];
    size_t n;
    uint32_t lease_ms;
    tqkv_lookup_result *res;
    uint8_t *tiers; /* res->tiers, or our own array */
    int own_tiers;
    size_t outstanding;
    size_t first_host_miss; /* host hits before it were touched in the LRU already */
    pexists *px;
    tqkv_store_lookup_cb cb;
    void *arg;
};

static void lookup_note(plookup *lk, uint32_t i, int tier, int status)
{
    if (status == TQKV_TIER_HIT) {
        if (lk->tiers[i] == TQKV_TIER_NONE || lk->tiers[i] > tier)
            lk->tiers[i] = (uint8_t)tier;
    } else if (status < 0) {
        lk->s->st.tiers[tier].errors++;
    }
}

/* Counts, touches, leases. @return 0 or TQKV_ENOMEM (lease). */
static int lookup_finish(plookup *lk)
{
    tqkv_store *s = lk->s;
    uint32_t hits = 0;
    while (hits < lk->n && lk->tiers[hits] != TQKV_TIER_NONE)
        hits++;
    for (uint32_t i = 0; i < lk->n && i <= hits; i++) {
        int t = lk->tiers[i];
        if (t == TQKV_TIER_NONE) {
            s->st.misses++;
            lk->ns->st.misses++;
            continue;
        }
        s->st.hits++;
        lk->ns->st.hits++;
        s->st.tiers[t].hits++;
        if (t == TQKV_TIER_HOST && i > lk->first_host_miss) { /* the leading ones are done */
            entry *e = idx_find(s, lk->ns, lk->keys[i]);
            if (e)
                lru_touch(s, e);
        }
    }
    lk->res->hits = hits;
    lk->res->lease_id = 0;
    if (lk->lease_ms && hits > 0)
        return lease_take(s, lk->ns, lk->keys, hits, lk->lease_ms, &lk->res->lease_id);
    return 0;
}

static void plookup_free(plookup *lk)
{
    if (lk->own_tiers)
        tqkv_free(lk->tiers);
    tqkv_free(lk->px);
    tqkv_free(lk);
}

static void lookup_exists_done(void *arg, int status)
{
    pexists *x = arg;
    plookup *lk = x->lk;
    lookup_note(lk, x->i, x->tier, status);
    if (--lk->outstanding > 0)
        return;
    int r = lookup_finish(lk);
    lk->cb(lk->arg, r, lk->res);
    plookup_free(lk);
}

int tqkv_store_lookup(tqkv_store *s, tqkv_ns *ns, const uint8_t (*keys)[TQKV_KEY_BYTES],
                      size_t n, uint32_t lease_ms, tqkv_lookup_result *res,
                      tqkv_store_lookup_cb cb, void *arg)
{
    if (!ns || !res || (n && !keys) || n > UINT32_MAX)
        return TQKV_EINVAL;
    leases_expire(s);
    plookup *lk = tqkv_calloc(1, sizeof(*lk));
    if (!lk)
        return TQKV_ENOMEM;
    lk->s = s;
    lk->ns = ns;
    lk->keys = keys;
    lk->n = n;
    lk->lease_ms = lease_ms;
    lk->res = res;
    lk->cb = cb;
    lk->arg = arg;
    lk->tiers = res->tiers;
    if (!lk->tiers && n) {
        lk->tiers = tqkv_malloc(n);
        lk->own_tiers = 1;
        if (!lk->tiers) {
            tqkv_free(lk);
            return TQKV_ENOMEM;
        }
    }
    size_t missing = 0, nlower = 0;
    lk->first_host_miss = n;
    for (size_t i = 0; i < n; i++) {
        entry *e = idx_find(s, ns, keys[i]);
        lk->tiers[i] = e ? TQKV_TIER_HOST : TQKV_TIER_NONE;
        if (!e && !missing++)
            lk->first_host_miss = i;
        if (e && !missing) /* a leading hit whatever lower tiers say: touch it while at hand */
            lru_touch(s, e);
    }
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++)
        nlower += s->lower[id] && s->lower[id]->ops->exists;
    if (missing && nlower) {
        lk->px = tqkv_mallocarray(missing * nlower, sizeof(*lk->px));
        if (!lk->px) {
            plookup_free(lk);
            return TQKV_ENOMEM;
        }
        size_t k = 0;
        lk->outstanding = 1; /* held while issuing */
        for (size_t i = 0; i < n; i++) {
            if (lk->tiers[i] != TQKV_TIER_NONE)
                continue;
            for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++) {
                tqkv_tier *t = s->lower[id];
                if (!t || !t->ops->exists)
                    continue;
                pexists *x = &lk->px[k++];
                x->lk = lk;
                x->i = (uint32_t)i;
                x->tier = (uint8_t)id;
                int r = t->ops->exists(t, ns->id, keys[i], cb ? lookup_exists_done : NULL, x);
                if (r == TQKV_TIER_PENDING && cb)
                    lk->outstanding++;
                else
                    lookup_note(lk, (uint32_t)i, id, r == TQKV_TIER_PENDING ? TQKV_ETIER : r);
            }
        }
        if (--lk->outstanding > 0)
            return TQKV_STORE_PENDING;
    }
    int r = lookup_finish(lk);
    plookup_free(lk);
    return r;
}

/* ---- DELETE, PIN ---- */

static void noop_done(void *arg, int status)
{
    (void)arg;
    (void)status;
}

int tqkv_store_delete(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES])
{
    if (!ns || !key)
        return TQKV_EINVAL;
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++) {
        tqkv_tier *t = s->lower[id];
        if (t && t->ops->remove)
            (void)t->ops->remove(t, ns->id, key, noop_done, NULL);
    }
    entry *e = idx_find(s, ns, key);
    if (!e)
        return TQKV_STORE_MISS;
    entry_unlink(s, e);
    return 0;
}

int tqkv_store_pin(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES])
{
    if (!ns || !key)
        return TQKV_EINVAL;
    entry *e = idx_find(s, ns, key);
    if (!e)
        return TQKV_STORE_MISS;
    if (e->pins == UINT32_MAX)
        return TQKV_EOVERFLOW;
    if (e->pins++ == 0) {
        s->st.pinned++;
        lru_remove(s, e);
        prot_add(s, ns->id, key);
    }
    return 0;
}

int tqkv_store_unpin(tqkv_store *s, tqkv_ns *ns, const uint8_t key[TQKV_KEY_BYTES])
{
    if (!ns || !key)
        return TQKV_EINVAL;
    entry *e = idx_find(s, ns, key);
    if (!e)
        return TQKV_STORE_MISS;
    if (e->pins == 0)
        return TQKV_EINVAL;
    if (--e->pins == 0) {
        s->st.pinned--;
        lru_push_front(s, e);
        prot_del(s, ns->id, key);
    }
    return 0;
}

/* ---- admin ---- */

int tqkv_store_evict(tqkv_store *s, tqkv_ns *ns, uint64_t bytes, uint64_t *freed)
{
    leases_expire(s);
    uint64_t done = 0;
    /* one walk from the least recent end; an eviction unlinks only the entry evicted */
    for (entry *e = s->lru.prev, *prev; done < bytes && e != &s->lru; e = prev) {
        prev = e->prev;
        if (evictable(e) && (!ns || e->ns == ns))
            done += evict_entry(s, e);
    }
    if (freed)
        *freed = done;
    return 0;
}

int tqkv_store_clear(tqkv_store *s, tqkv_ns *ns, uint64_t *removed)
{
    uint64_t n = 0;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (entry *e = s->buckets[i], *nx; e; e = nx) {
            nx = e->hnext;
            if (!ns || e->ns == ns) {
                entry_unlink(s, e);
                n++;
            }
        }
    }
    for (int id = TQKV_TIER_HOST + 1; id < TQKV_TIER_COUNT; id++) {
        tqkv_tier *t = s->lower[id];
        if (t && t->ops->clear)
            (void)t->ops->clear(t, ns ? ns->id : UINT32_MAX, noop_done, NULL);
    }
    if (removed)
        *removed = n;
    return 0;
}

int tqkv_store_set_capacity(tqkv_store *s, tqkv_tier_id tier, uint64_t bytes)
{
    if (tier == TQKV_TIER_HOST) {
        int r = tqkv_host_set_capacity(s->host, bytes);
        if (r < 0)
            return r;
        leases_expire(s);
        tqkv_host_stats hs;
        for (;;) {
            tqkv_host_get_stats(s->host, &hs);
            uint64_t used = hs.used_pages * hs.page_size, cap = hs.capacity_pages * hs.page_size;
            if (used <= cap + s->demoting_bytes)
                break;
            if (evict_one(s) == 0)
                break;
        }
        return 0;
    }
    if ((int)tier < 0 || (int)tier >= TQKV_TIER_COUNT || !s->lower[tier])
        return TQKV_ENOENT;
    tqkv_tier *t = s->lower[tier];
    return t->ops->set_capacity ? t->ops->set_capacity(t, bytes) : TQKV_ENOTSUP;
}

/* ---- stats ---- */

void tqkv_store_get_stats(tqkv_store *s, tqkv_store_stats *out)
{
    leases_expire(s);
    *out = s->st;
    out->namespaces = s->n_ns;
    for (int id = 0; id < TQKV_TIER_COUNT; id++) {
        tqkv_tier *t = id == TQKV_TIER_HOST ? host_tier(s) : s->lower[id];
        tqkv_tier_stats *ts = &out->tiers[id];
        if (!t)
            continue;
        tqkv_tier_info info;
        t->ops->info(t, &info);
        ts->present = 1;
        ts->capacity = info.capacity;
        ts->used = info.used;
        ts->entries = info.entries;
        ts->resident = info.resident;
        ts->errors += info.errors;
    }
}
