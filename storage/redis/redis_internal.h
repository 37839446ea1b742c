/* Internals of the Redis engine shared by redis.c and its tests: the stored value layout
 * (docs/redis.md), Redis key naming and the RESP command builder. No I/O here. */
#ifndef TQKV_REDIS_INTERNAL_H
#define TQKV_REDIS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* The value stored per block: this header, then the namespace bytes, the block key bytes and
 * the payload (the block, or its LZ4 compression). All fields little-endian. The checksum is
 * XXH3-64 of the whole value (header included) with the checksum field set to zero. */
typedef struct {
    uint32_t magic;      /* TQKV__REDIS_MAGIC, bytes "TQRV" */
    uint8_t version;     /* TQKV__REDIS_VERSION */
    uint8_t flags;       /* TQKV__REDIS_FLAG_* */
    uint16_t ns_len;     /* namespace bytes after the header */
    uint16_t key_len;    /* block key bytes after the namespace */
    uint16_t hdr_len;    /* sizeof this header: lets a later version append fields */
    uint32_t reserved;   /* zero */
    uint64_t raw_len;    /* block bytes (after decompression) */
    uint64_t stored_len; /* payload bytes that follow the key */
    uint64_t checksum;   /* XXH3-64, see above */
} tqkv__redis_value_hdr;
_Static_assert(sizeof(tqkv__redis_value_hdr) == 40, "value header is 40 bytes on the wire");

#define TQKV__REDIS_HDR_SIZE 40u
#define TQKV__REDIS_MAGIC 0x56525154u /* "TQRV" little-endian */
#define TQKV__REDIS_VERSION 1u
#define TQKV__REDIS_FLAG_LZ4 0x01u
#define TQKV__REDIS_CKSUM_OFF 32u

/* A parsed value: payload borrowed from the buffer given to tqkv__redis_value_parse. */
typedef struct {
    uint8_t flags;
    uint64_t raw_len;
    const uint8_t *payload;
    size_t stored_len;
} tqkv__redis_value_view;

/* Bytes of a value with these lengths. */
size_t tqkv__redis_value_size(size_t ns_len, size_t key_len, size_t stored_len);
/* Writes the header (checksum zero), the namespace and the key at `dst`; the caller then writes
 * `stored_len` payload bytes at dst + tqkv__redis_value_size(ns_len, key_len, 0) and seals.
 * @return the payload pointer. */
uint8_t *tqkv__redis_value_begin(uint8_t *dst, uint8_t flags, const char *ns, size_t ns_len,
                                 const uint8_t *key, size_t key_len, uint64_t raw_len,
                                 uint64_t stored_len);
/* Computes and stores the checksum of the complete value dst[0..len). */
void tqkv__redis_value_seal(uint8_t *dst, size_t len);
/* Copies the `stored` payload bytes to the end of the value dst[0..len) begun with
 * tqkv__redis_value_begin and seals it: the same result as memcpy + tqkv__redis_value_seal, in
 * one pass over the payload. */
void tqkv__redis_value_fill(uint8_t *dst, size_t len, const void *payload, size_t stored);
/* Validates a value read from Redis against the namespace and key it was asked for. Protected
 * against malicious input: every length is checked against `len` before use.
 * @return 0 and *out; TQKV_EBADMAGIC, TQKV_EBADVERSION, TQKV_ETRUNCATED, TQKV_EBADHEADER,
 * TQKV_EBADKEY, TQKV_ERANGE (raw_len > max_raw), TQKV_ECHECKSUM. */
int tqkv__redis_value_parse(const uint8_t *v, size_t len, const char *ns, size_t ns_len,
                            const uint8_t *key, size_t key_len, uint64_t max_raw,
                            tqkv__redis_value_view *out);

/* 1 if `s` (len bytes) is a valid prefix, namespace or directory key: non-empty, at most `max`
 * bytes, no '{' or '}' (unless `allow_tags`), no space or control byte. */
int tqkv__redis_name_ok(const char *s, size_t len, size_t max, int allow_tags);

struct redisAsyncContext;
struct tqkv_redis;
/* The hiredis context of node `i` (NULL if none or not connected): for the benchmark, which runs
 * its raw-hiredis baseline on the engine's own connection so that both see the same server-side
 * client state. Nothing else may use it. */
struct redisAsyncContext *tqkv__redis_context(struct tqkv_redis *r, size_t i);

/* RESP command builder: size, then begin/arg into a buffer of exactly that size. */
size_t tqkv__resp_size(int argc, const size_t *lens);
char *tqkv__resp_begin(char *p, int argc);
char *tqkv__resp_arg(char *p, const void *data, size_t len);
/* Writes the "$len\r\n" of an argument and returns where its `len` bytes go; after writing
 * them, the caller ends the argument with tqkv__resp_arg_end(that + len). */
char *tqkv__resp_arg_open(char *p, size_t len);
char *tqkv__resp_arg_end(char *p);

#endif
