/* On-disk structures of the SSD engine: the segment header and the record header, their encoders
 * and their validating decoders. Everything is fixed-width little-endian; docs/ssd.md is the
 * byte-by-byte description and must change with this file. Internal to storage/ssd/. */
#ifndef TQKV_SSD_FORMAT_H
#define TQKV_SSD_FORMAT_H

#include <stddef.h>
#include <stdint.h>

/* Writes are issued in multiples of this, at offsets that are multiples of it (O_DIRECT). */
#define TQKV__SSD_WRITE_ALIGN 4096u
/* Records start at multiples of this inside a write. */
#define TQKV__SSD_REC_ALIGN 16u
#define TQKV__SSD_VERSION 1u
#define TQKV__SSD_SEG_MAGIC 0x47535154u /* "TQSG" */
#define TQKV__SSD_REC_MAGIC 0x52535154u /* "TQSR" */

/* Segment header: the first TQKV__SSD_WRITE_ALIGN bytes of a segment file; records follow. */
enum {
    TQKV__SSD_SEG_OFF_MAGIC = 0,     /* u32 */
    TQKV__SSD_SEG_OFF_VERSION = 4,   /* u16 */
    TQKV__SSD_SEG_OFF_RESERVED = 6,  /* u16, 0 */
    TQKV__SSD_SEG_OFF_ID = 8,        /* u64, equals the number in the file name */
    TQKV__SSD_SEG_OFF_CREATED = 16,  /* u64, wall clock ms */
    TQKV__SSD_SEG_OFF_WALIGN = 24,   /* u32, TQKV__SSD_WRITE_ALIGN */
    TQKV__SSD_SEG_OFF_RALIGN = 28,   /* u32, TQKV__SSD_REC_ALIGN */
    TQKV__SSD_SEG_OFF_PAD = 32,      /* 24 bytes, 0 */
    TQKV__SSD_SEG_OFF_CHECKSUM = 56, /* u64, xxh3-64 of bytes 0..55 */
    TQKV__SSD_SEG_HDR_BYTES = 64,
};
_Static_assert(TQKV__SSD_SEG_OFF_CHECKSUM + 8 == TQKV__SSD_SEG_HDR_BYTES, "segment header size");
_Static_assert(TQKV__SSD_SEG_HDR_BYTES <= TQKV__SSD_WRITE_ALIGN, "segment header fits a block");

/* Record header; the stored payload follows, then zeros up to TQKV__SSD_REC_ALIGN. */
enum {
    TQKV__SSD_REC_OFF_MAGIC = 0,        /* u32 */
    TQKV__SSD_REC_OFF_VERSION = 4,      /* u16 */
    TQKV__SSD_REC_OFF_TYPE = 6,         /* u8: TQKV__SSD_REC_DATA / _TOMBSTONE */
    TQKV__SSD_REC_OFF_FLAGS = 7,        /* u8: TQKV__SSD_REC_F_* */
    TQKV__SSD_REC_OFF_NS = 8,           /* u32 namespace id */
    TQKV__SSD_REC_OFF_STORED = 12,      /* u32 payload bytes on disk */
    TQKV__SSD_REC_OFF_RAW = 16,         /* u32 payload bytes after decompression */
    TQKV__SSD_REC_OFF_RESERVED = 20,    /* u32, 0 */
    TQKV__SSD_REC_OFF_PAYLOAD_SUM = 24, /* u64 xxh3-64 of the stored payload */
    TQKV__SSD_REC_OFF_KEY = 32,         /* 32 bytes */
    TQKV__SSD_REC_OFF_WALL = 64,        /* u64 wall clock ms when first written */
    TQKV__SSD_REC_OFF_CHECKSUM = 72,    /* u64 xxh3-64 of bytes 0..71 */
    TQKV__SSD_REC_HDR_BYTES = 80,
};
_Static_assert(TQKV__SSD_REC_OFF_CHECKSUM + 8 == TQKV__SSD_REC_HDR_BYTES, "record header size");
_Static_assert(TQKV__SSD_REC_HDR_BYTES % TQKV__SSD_REC_ALIGN == 0, "record header alignment");

#define TQKV__SSD_REC_DATA 1u
#define TQKV__SSD_REC_TOMBSTONE 2u
#define TQKV__SSD_REC_F_LZ4 0x01u

typedef struct {
    uint8_t type;
    uint8_t flags;
    uint32_t ns;
    uint32_t stored_len;
    uint32_t raw_len;
    uint64_t payload_sum;
    uint64_t wall_ms;
    uint8_t key[32];
} tqkv__ssd_rec;

/* Bytes a record with `stored_len` payload bytes occupies (header, payload, padding). */
static inline uint64_t tqkv__ssd_rec_disk_len(uint64_t stored_len)
{
    return (TQKV__SSD_REC_HDR_BYTES + stored_len + TQKV__SSD_REC_ALIGN - 1) &
           ~(uint64_t)(TQKV__SSD_REC_ALIGN - 1);
}

static inline uint64_t tqkv__ssd_align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Writes the record header (checksum included) to `out`. */
void tqkv__ssd_rec_encode(uint8_t out[TQKV__SSD_REC_HDR_BYTES], const tqkv__ssd_rec *r);
/* Parses and checks a record header (magic, version, checksum, type, flags, lengths). Protected
 * against malicious input. @return 0, TQKV_EBADMAGIC, TQKV_EBADVERSION, TQKV_EHDRCHECKSUM,
 * TQKV_EBADHEADER. */
int tqkv__ssd_rec_decode(const uint8_t in[TQKV__SSD_REC_HDR_BYTES], tqkv__ssd_rec *r);

/* Writes a segment header block (TQKV__SSD_WRITE_ALIGN bytes, zero padded). */
void tqkv__ssd_seg_encode(uint8_t out[TQKV__SSD_WRITE_ALIGN], uint64_t id, uint64_t wall_ms);
/* @return 0 if `in` is a valid segment header for segment `id`, else TQKV_EBADMAGIC,
 * TQKV_EBADVERSION, TQKV_EHDRCHECKSUM or TQKV_EBADHEADER. */
int tqkv__ssd_seg_decode(const uint8_t in[TQKV__SSD_SEG_HDR_BYTES], uint64_t id);

#endif
