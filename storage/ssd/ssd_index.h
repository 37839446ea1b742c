/* The SSD engine's in-memory index: 32-byte key -> where the newest record of that key lies.
 * Open addressing with linear probing and backward-shift deletion; the hash is xxh3 of the key so
 * that non-random keys (tests, tools) spread as well as SHA-256 chunk keys. Not thread-safe: the
 * engine guards it with its lock. Internal to storage/ssd/. */
#ifndef TQKV_SSD_INDEX_H
#define TQKV_SSD_INDEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct tqkv__ssd_seg tqkv__ssd_seg;

typedef struct {
    uint8_t key[32];
    tqkv__ssd_seg *seg; /* NULL: empty slot */
    uint64_t off;       /* record offset in the segment file */
    uint32_t disk_len;  /* header + payload + padding */
    uint32_t ns;
    uint32_t raw_len; /* payload bytes after decompression */
    uint8_t tomb;     /* the newest record is a tombstone: the key reads as a miss */
} tqkv__ssd_ent;

typedef struct {
    tqkv__ssd_ent *slots;
    size_t cap; /* power of two */
    size_t count;
} tqkv__ssd_index;

/* @return 0 or TQKV_ENOMEM. */
int tqkv__ssd_index_init(tqkv__ssd_index *ix, size_t cap_hint);
void tqkv__ssd_index_free(tqkv__ssd_index *ix);
/* @return the entry of `key`, or NULL. Valid until the next insert or remove. */
tqkv__ssd_ent *tqkv__ssd_index_find(tqkv__ssd_index *ix, const uint8_t key[32]);
/* Finds or adds `key` (a new entry has seg == NULL and the key set). @return the entry (valid
 * until the next insert or remove), or NULL when growing the table failed. */
tqkv__ssd_ent *tqkv__ssd_index_insert(tqkv__ssd_index *ix, const uint8_t key[32]);
/* Removes an entry returned by find/insert. */
void tqkv__ssd_index_remove(tqkv__ssd_index *ix, tqkv__ssd_ent *e);

#endif
