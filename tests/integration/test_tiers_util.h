/* Helpers shared by the tier integration tests (tests/integration/test_tiers_*.c): a temp data
 * directory for the SSD tier that outlives daemon restarts, starting tqkvd on it, killing it with
 * SIGKILL, the blocks the tests put (encoded locally so that what the daemon serves can be
 * compared byte for byte), and finding a block's record in the segment files to damage it.
 * Header-only (static functions): each test is one program. */
#ifndef TEST_TIERS_UTIL_H
#define TEST_TIERS_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_client_util.h"

/* A temp directory (rm -rf'd by tt_rmdir). @return 0 or -1. */
static inline int tt_mkdir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/tqkv-tiers-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static inline void tt_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* SIGKILL the daemon and reap it (the harness then only removes its temp dir). */
static inline void tt_kill9(tqkvd_harness *h)
{
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        (void)tqkvd_harness_stop(h);
    }
}

/* The encoded block of key (i, tag) from raw KV seeded by i: what the daemon must serve. */
static inline void *tt_block(const tc_geom *g, uint32_t i, uint32_t tag, tqkv_key *key,
                             uint16_t **raw_out, size_t *len)
{
    *key = tc_key(i, tag);
    uint16_t *raw = tc_make_raw(g, g->tokens, (uint64_t)i * 7919u + tag);
    void *b = raw ? tc_encode(g, key, raw, g->tokens, len) : NULL;
    if (raw_out)
        *raw_out = raw;
    else
        free(raw);
    return b;
}

/* Puts raw KV of key (i, tag). @return tqkv_put_raw's result. */
static inline int tt_put(tqkv_client *c, const char *ns, const tc_geom *g, uint32_t i,
                         uint32_t tag)
{
    tqkv_key k;
    uint16_t *raw = NULL;
    size_t len = 0;
    void *b = tt_block(g, i, tag, &k, &raw, &len);
    int rc = -1;
    if (b && raw) {
        tqkv_put_item it = {.key = k, .data = raw, .len = tc_raw_len(g, g->tokens),
                            .n_tokens = g->tokens};
        rc = tqkv_put_raw(c, ns, &it, 1, NULL);
    }
    free(b);
    free(raw);
    return rc;
}

/* GETs key (i, tag). @return 1 hit with the exact expected bytes (tier in *tier), 0 miss,
 * -1 a hit with other bytes (corrupt: must never happen), -2 an error. */
static inline int tt_get(tqkv_client *c, const char *ns, const tc_geom *g, uint32_t i,
                         uint32_t tag, uint8_t *tier)
{
    tqkv_key k;
    size_t len = 0;
    void *want = tt_block(g, i, tag, &k, NULL, &len);
    if (!want)
        return -2;
    tqkv_get_item gi;
    memset(&gi, 0, sizeof gi);
    int rc = tqkv_get(c, ns, &k, 1, NULL, &gi);
    int r;
    if (rc)
        r = -2;
    else if (gi.status == TQKV_ENOENT)
        r = 0;
    else if (gi.status)
        r = -2;
    else
        r = (gi.len == len && memcmp(gi.data, want, len) == 0) ? 1 : -1;
    if (tier)
        *tier = gi.tier;
    tqkv_get_items_release(&gi, 1);
    free(want);
    return r;
}

/* Tier of key (i, tag) by LOOKUP (TQKV_TIER_NONE: miss), or -1 on error. */
static inline int tt_where(tqkv_client *c, const char *ns, uint32_t i, uint32_t tag)
{
    tqkv_key k = tc_key(i, tag);
    uint32_t hits = 0;
    uint8_t t = 0;
    if (tqkv_lookup(c, ns, &k, 1, 0, &hits, &t, NULL))
        return -1;
    return t;
}

/* Finds key (i, tag)'s newest record in the segment files of `dir`: its file and the offset of
 * its header (the 32-byte key sits at header + 32, the payload at header + 80).
 * @return 0 or -1. */
static inline int tt_find_record(const char *dir, uint32_t i, uint32_t tag, char *file,
                                 size_t flen, long *off)
{
    tqkv_key k = tc_key(i, tag);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    int found = -1;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) != 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        FILE *f = fopen(p, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            /* records start at multiples of 16: the key at +32 does too */
            for (long o = 4096 + 32; o + TQKV_KEY_BYTES <= n; o += 16)
                if (memcmp(buf + o, k.bytes, TQKV_KEY_BYTES) == 0) {
                    snprintf(file, flen, "%s", p);
                    *off = o - 32;
                    found = 0;
                }
        }
        free(buf);
        fclose(f);
        if (found == 0)
            break;
    }
    closedir(d);
    return found;
}

/* Flips one byte of a file. @return 0 or -1. */
static inline int tt_flip(const char *file, long off)
{
    int fd = open(file, O_RDWR);
    if (fd < 0)
        return -1;
    uint8_t b;
    int r = -1;
    if (pread(fd, &b, 1, off) == 1) {
        b ^= 0x5a;
        if (pwrite(fd, &b, 1, off) == 1)
            r = 0;
    }
    close(fd);
    return r;
}

#endif
