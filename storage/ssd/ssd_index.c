/* Hash index of the SSD engine (see ssd_index.h). Load factor at most 1/2, so probes stay short
 * and deletion by backward shift needs no tombstones in the table. */
#include "ssd_index.h"

#include <string.h>
#include <xxhash.h>

#include "tqkv_alloc.h"
#include "tqkv_errors.h"

static size_t slot_of(const tqkv__ssd_index *ix, const uint8_t key[32])
{
    return (size_t)XXH3_64bits(key, 32) & (ix->cap - 1);
}

int tqkv__ssd_index_init(tqkv__ssd_index *ix, size_t cap_hint)
{
    size_t cap = 1024;
    while (cap < cap_hint * 2)
        cap <<= 1;
    ix->slots = tqkv_calloc(cap, sizeof(*ix->slots));
    if (!ix->slots) return TQKV_ENOMEM;
    ix->cap = cap;
    ix->count = 0;
    return 0;
}

void tqkv__ssd_index_free(tqkv__ssd_index *ix)
{
    tqkv_free(ix->slots);
    ix->slots = NULL;
    ix->cap = ix->count = 0;
}

tqkv__ssd_ent *tqkv__ssd_index_find(tqkv__ssd_index *ix, const uint8_t key[32])
{
    for (size_t i = slot_of(ix, key);; i = (i + 1) & (ix->cap - 1)) {
        tqkv__ssd_ent *e = &ix->slots[i];
        if (!e->seg) return NULL;
        if (memcmp(e->key, key, 32) == 0) return e;
    }
}

static int grow(tqkv__ssd_index *ix)
{
    tqkv__ssd_index n;
    n.cap = ix->cap * 2;
    n.count = 0;
    n.slots = tqkv_calloc(n.cap, sizeof(*n.slots));
    if (!n.slots) return TQKV_ENOMEM;
    for (size_t i = 0; i < ix->cap; i++) {
        const tqkv__ssd_ent *e = &ix->slots[i];
        if (!e->seg) continue;
        size_t j = slot_of(&n, e->key);
        while (n.slots[j].seg)
            j = (j + 1) & (n.cap - 1);
        n.slots[j] = *e;
        n.count++;
    }
    tqkv_free(ix->slots);
    *ix = n;
    return 0;
}

tqkv__ssd_ent *tqkv__ssd_index_insert(tqkv__ssd_index *ix, const uint8_t key[32])
{
    tqkv__ssd_ent *e = tqkv__ssd_index_find(ix, key);
    if (e) return e;
    if ((ix->count + 1) * 2 > ix->cap && grow(ix) != 0) return NULL;
    size_t i = slot_of(ix, key);
    while (ix->slots[i].seg)
        i = (i + 1) & (ix->cap - 1);
    e = &ix->slots[i];
    memset(e, 0, sizeof(*e));
    memcpy(e->key, key, 32);
    ix->count++;
    /* The caller sets seg; until then the slot reads as empty, so it must do so before any other
     * index call. */
    return e;
}

void tqkv__ssd_index_remove(tqkv__ssd_index *ix, tqkv__ssd_ent *e)
{
    size_t mask = ix->cap - 1;
    size_t hole = (size_t)(e - ix->slots);
    /* Backward shift: move later members of the probe run into the hole when their home slot
     * does not lie cyclically in (hole, j]. */
    for (size_t j = (hole + 1) & mask; ix->slots[j].seg; j = (j + 1) & mask) {
        size_t home = slot_of(ix, ix->slots[j].key);
        int in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            ix->slots[hole] = ix->slots[j];
            hole = j;
        }
    }
    memset(&ix->slots[hole], 0, sizeof(ix->slots[hole]));
    ix->count--;
}
