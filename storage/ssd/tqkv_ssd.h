/* The SSD engine: blocks kept in append-only segment files under one data directory, found again
 * after a restart by scanning the segments. It knows nothing of the daemon or of the tier policy
 * (like memcached's extstore): it stores (namespace id, 32-byte key) -> bytes, and asks the
 * caller, through callbacks, what to keep when it must evict. The on-disk layout is written down
 * byte by byte in docs/ssd.md.
 *
 * THREADS. Every disk access runs on the engine's own threads: one writer (builds batches of
 * records, LZ4 and checksums), one flusher (pwrite, group commit with fdatasync) and `io_threads`
 * readers (pread, verification, decompression). The caller's thread (an event loop) never blocks
 * on the disk. Completions are queued; the engine signals an eventfd (and calls `notify` if
 * given) when the queue goes from empty to non-empty, and the caller runs the callbacks of all
 * queued completions, on its own thread, with tqkv_ssd_drain(): wakeups coalesce, completions
 * are drained in batches. With libuv: a uv_async_t whose callback calls tqkv_ssd_drain, and
 * `notify` = uv_async_send; or a uv_poll_t on tqkv_ssd_event_fd().
 *
 * The functions below may be called from one thread at a time (the loop thread), except
 * tqkv_ssd_stats and tqkv_ssd_contains, which any thread may call. If a function that takes a
 * callback returns an error, the callback is never called. A miss is a result, not an error.
 *
 * Reads see writes as soon as they are queued: a get or contains of a key whose put is still
 * queued or in flight is answered from the put's buffer (which the engine borrows until the put's
 * callback anyway), and a queued remove hides the key at once. */
#ifndef TQKV_SSD_H
#define TQKV_SSD_H

#include <stddef.h>
#include <stdint.h>

#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQKV_SSD_KEY_BYTES 32

/* Results of reads and removes (errors are negative TQKV_E* codes). */
#define TQKV_SSD_HIT 0
#define TQKV_SSD_MISS 1

typedef enum {
    /* Acknowledge after the batch holding the record is durable (fdatasync per batch: group
     * commit). The default: a block acknowledged is a block that survives a crash. */
    TQKV_SSD_FSYNC_ALWAYS = 0,
    /* fdatasync at most every `fsync_interval_ms`; a crash loses at most that window. */
    TQKV_SSD_FSYNC_INTERVAL = 1,
    /* Never fdatasync (the kernel writes back when it likes); a crash of the machine may lose
     * acknowledged blocks, a crash of the process does not. */
    TQKV_SSD_FSYNC_NONE = 2,
} tqkv_ssd_fsync;

/* Eviction asks, for every live record of the segment being evicted, whether to keep it (the
 * policy says yes for pinned or hot blocks). Called on the engine's writer thread, so it must be
 * thread-safe (read an atomic flag, take the policy's own lock). @return nonzero to keep the
 * record (it is rewritten at the head of the log), 0 to let it go (it leaves the index). */
typedef int (*tqkv_ssd_keep_fn)(void *ctx, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES],
                                size_t len);

typedef struct {
    const char *dir;            /* data directory; created if missing. Required. */
    uint64_t capacity;          /* bytes of segment files the engine may hold. Required. */
    uint64_t segment_bytes;     /* max bytes per segment file; 0: 256 MiB. Clamped to
                                 * capacity / 4 and 1 GiB, rounded down to 4 KiB; open fails
                                 * with TQKV_EINVAL if that leaves less than 1 MiB */
    uint32_t io_threads;        /* reader threads; 0: 2 */
    int direct_io;              /* nonzero: O_DIRECT for segment I/O (aligned buffers) */
    tqkv_ssd_fsync fsync;       /* default TQKV_SSD_FSYNC_ALWAYS (0) */
    uint32_t fsync_interval_ms; /* for TQKV_SSD_FSYNC_INTERVAL; 0: 100 */
    int no_compress;            /* nonzero: never LZ4 (default: per record, when it saves) */
    uint32_t batch_bytes;       /* a batch is written once it reaches this; 0: 8 MiB */
    /* Compaction rewrites the live records of a sealed segment whose live fraction is below
     * this (0..1); 0: 0.5; negative: never compact automatically. */
    double compact_below;
    tqkv_ssd_keep_fn keep; /* NULL: eviction keeps nothing */
    void *keep_ctx;
    /* Called (on an engine thread) when completions become pending; NULL: only the eventfd. */
    void (*notify)(void *notify_ctx);
    void *notify_ctx;
} tqkv_ssd_options;

typedef struct {
    uint64_t capacity;        /* bytes allowed */
    uint64_t used;            /* bytes of segment files on disk */
    uint64_t live_bytes;      /* bytes of the records the index points to (headers included) */
    uint64_t records;         /* live records (blocks) */
    uint64_t segments;        /* segment files */
    uint64_t reads;           /* reads answered (hits and misses) */
    uint64_t read_hits;       /* reads that returned a block */
    uint64_t writes;          /* records written (puts, removes, rewrites) */
    uint64_t bytes_read;      /* bytes read from segment files (reads, rewrites, not the scan) */
    uint64_t bytes_written;   /* bytes written to segment files */
    uint64_t corrupt;         /* records dropped for a bad checksum, key or header */
    uint64_t io_errors;       /* failed reads or writes */
    uint64_t evictions;       /* segments evicted at capacity */
    uint64_t evicted_records; /* live records dropped by eviction */
    uint64_t rewrites;        /* records rewritten by eviction (kept) or compaction */
    uint64_t compactions;     /* segments compacted */
    uint64_t compressed;      /* records stored LZ4-compressed */
    uint64_t syncs;           /* fdatasync calls on segments */
    uint64_t recovered;       /* records found by the start-up scan */
    uint64_t truncated_bytes; /* bytes cut from torn segment tails at start-up */
    double open_seconds;      /* time tqkv_ssd_open spent scanning */
} tqkv_ssd_stats;

typedef struct tqkv_ssd tqkv_ssd;

/* Completion of a put or remove: `status` is 0 (durable per the fsync policy), TQKV_SSD_MISS
 * (remove: the key was not there) or a negative error. Runs in tqkv_ssd_drain. */
typedef void (*tqkv_ssd_done_cb)(void *arg, int status);
/* A read learns the record's length first, then asks for a destination of `len` bytes; called on
 * a reader thread. @return a buffer of at least `len` bytes, valid until the completion, or NULL
 * to fail the read with TQKV_ENOSPC. */
typedef void *(*tqkv_ssd_dest_fn)(void *dest_arg, size_t len);
/* Completion of a get: `status` TQKV_SSD_HIT with `data`/`len` the block (the destination's
 * buffer, or, without a destination function, an engine buffer valid until the callback
 * returns), TQKV_SSD_MISS (absent, or dropped because it failed verification) or a negative
 * error. Runs in tqkv_ssd_drain. */
typedef void (*tqkv_ssd_get_cb)(void *arg, int status, void *data, size_t len);

/* Sets defaults (fsync always, compression on, 2 reader threads). */
void tqkv_ssd_options_init(tqkv_ssd_options *opt);

/* Opens (or creates) the engine on `opt->dir`: scans every segment, rebuilds the index, cuts torn
 * tails, deletes segments with nothing live, then starts the threads. `opt` is copied (the dir
 * string too). @return 0 and *out, TQKV_EINVAL (bad options), TQKV_EIO (directory or scan I/O
 * failed), TQKV_ENOMEM. */
int tqkv_ssd_open(const tqkv_ssd_options *opt, tqkv_ssd **out);

/* Finishes every queued operation (puts are written and synced per policy), stops the threads,
 * runs the remaining callbacks on the calling thread and frees the engine. Those callbacks must
 * not start new operations on this engine. NULL: no-op. */
void tqkv_ssd_close(tqkv_ssd *ssd);

/* Stores `data` under (ns_id, key), replacing any earlier record. Borrows `data` until `cb`.
 * @return 0 (cb will run), TQKV_EINVAL, TQKV_EOVERFLOW (larger than a segment can hold),
 * TQKV_ENOMEM. */
int tqkv_ssd_put(tqkv_ssd *ssd, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES],
                 const void *data, size_t len, tqkv_ssd_done_cb cb, void *arg);

/* Reads (ns_id, key). `dest` may be NULL (see tqkv_ssd_get_cb). @return 0 (cb will run, also for
 * a miss), TQKV_EINVAL, TQKV_ENOMEM. */
int tqkv_ssd_get(tqkv_ssd *ssd, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES],
                 tqkv_ssd_dest_fn dest, void *dest_arg, tqkv_ssd_get_cb cb, void *arg);

/* Removes (ns_id, key): writes a tombstone so the block stays gone after a restart.
 * @return 0 (cb will run), TQKV_EINVAL, TQKV_ENOMEM. */
int tqkv_ssd_remove(tqkv_ssd *ssd, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES],
                    tqkv_ssd_done_cb cb, void *arg);

/* Removes every record of `ns_id` (UINT32_MAX: all) present when the writer reaches the request.
 * @return 0 (cb will run), TQKV_ENOMEM. */
int tqkv_ssd_clear(tqkv_ssd *ssd, uint32_t ns_id, tqkv_ssd_done_cb cb, void *arg);

/* Presence in the index (a record found present can still fail verification when read).
 * @return TQKV_SSD_HIT or TQKV_SSD_MISS. */
int tqkv_ssd_contains(tqkv_ssd *ssd, uint32_t ns_id, const uint8_t key[TQKV_SSD_KEY_BYTES]);

/* Asks the writer to compact now: every sealed segment whose live fraction is below `below`
 * (0..1] is rewritten. `cb` gets 0 when done. @return 0, TQKV_EINVAL, TQKV_ENOMEM. */
int tqkv_ssd_compact(tqkv_ssd *ssd, double below, tqkv_ssd_done_cb cb, void *arg);

/* Changes the capacity; enforced (by evicting oldest segments) when the writer next starts a
 * segment. @return 0, TQKV_EINVAL (less than 4 segments). */
int tqkv_ssd_set_capacity(tqkv_ssd *ssd, uint64_t bytes);

/* Runs the callbacks of all pending completions on the calling thread. @return how many ran. */
size_t tqkv_ssd_drain(tqkv_ssd *ssd);

/* An eventfd that becomes readable when completions are pending (tqkv_ssd_drain resets it).
 * Owned by the engine. */
int tqkv_ssd_event_fd(const tqkv_ssd *ssd);

/* Waits (poll on the eventfd) up to `timeout_ms` (-1: forever) for completions, then drains.
 * For programs without an event loop (tests, benchmarks). @return callbacks run. */
size_t tqkv_ssd_wait(tqkv_ssd *ssd, int timeout_ms);

/* Copies the counters. Any thread. */
void tqkv_ssd_stats_get(tqkv_ssd *ssd, tqkv_ssd_stats *out);

/* Bytes a segment file may hold (after clamping), and the option values in force. */
uint64_t tqkv_ssd_segment_bytes(const tqkv_ssd *ssd);

#ifdef __cplusplus
}
#endif
#endif
