/* Framing of the tqkv wire protocol: parse and emit the 16-byte preamble, (un)pack the protobuf
 * header, and check a header's item table against the frame's payload. No I/O: the daemon and
 * the client library read and write sockets themselves and call these on the bytes.
 *
 * A frame on the wire (all integers little-endian; docs/protocol.md is the specification):
 *
 *   offset 0   u8[4]  magic "TQKV"
 *          4   u16    version (TQKV_PROTOCOL_VERSION)
 *          6   u16    flags (0; reserved)
 *          8   u32    header_len   bytes of the protobuf Header that follows the preamble
 *         12   u32    payload_len  raw bytes that follow the header
 *         16   header (tqkv.Header, protobuf)        header_len bytes
 *              payload (KV bytes, items in order)    payload_len bytes
 *
 * Every parser here is protected against malicious input: sizes are checked before use and
 * the arithmetic is done in 64 bits. */
#ifndef TQKV_FRAME_H
#define TQKV_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "tqkv.pb-c.h"
#include "tqkv_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQKV_PREAMBLE_SIZE 16
#define TQKV_FRAME_MAGIC "TQKV"            /* the four bytes at offset 0 */
#define TQKV_FRAME_MAGIC_LE32 0x564B5154u  /* the same bytes read as a little-endian u32 */
#define TQKV_PROTOCOL_VERSION 1
/* Largest protobuf header accepted, whatever max_frame says: a header carries keys and small
 * options, never KV (a 65536-key LOOKUP is about 2.5 MiB). */
#define TQKV_MAX_HEADER_LEN (16u << 20)
/* Default frame limit (preamble + header + payload) of the daemon and the client. */
#define TQKV_DEFAULT_MAX_FRAME (256u << 20)
#define TQKV_KEY_LEN 32

_Static_assert(sizeof(TQKV_FRAME_MAGIC) - 1 == 4, "magic is four bytes");

typedef struct {
    uint16_t version, flags;
    uint32_t header_len, payload_len;
} tqkv_preamble;

/* Parses the preamble at the start of buf (len bytes available, may be more than 16).
 * max_frame bounds the whole frame, 16 + header_len + payload_len (0: no bound but
 * TQKV_MAX_HEADER_LEN on the header).
 * @return 0 and fills *out; TQKV_ETRUNCATED if len < 16 (read more and call again);
 *   TQKV_EBADMAGIC; TQKV_EBADVERSION (version != TQKV_PROTOCOL_VERSION, *out is still
 *   filled so the caller can answer with the versions it speaks); TQKV_EPROTO (reserved flags
 *   set); TQKV_EFRAMETOOBIG (frame past max_frame or header past TQKV_MAX_HEADER_LEN). */
int tqkv_preamble_parse(const void *buf, size_t len, uint32_t max_frame, tqkv_preamble *out);

/* Writes a version-1 preamble (flags 0) into out16 (16 bytes). */
void tqkv_preamble_emit(void *out16, uint32_t header_len, uint32_t payload_len);

/* Bytes of the whole frame a parsed preamble announces (16 + header_len + payload_len). */
static inline uint64_t tqkv_preamble_frame_size(const tqkv_preamble *p)
{
    return (uint64_t)TQKV_PREAMBLE_SIZE + p->header_len + p->payload_len;
}

/* Unpacks a protobuf header of len bytes. Allocates with the C library's allocator.
 * @return 0 and *out (owned by the caller: free with tqkv_header_free), or TQKV_EBADHEADER
 *   (malformed protobuf), TQKV_EINVAL (NULL arguments). protobuf-c may also fail on memory
 *   exhaustion; that is reported as TQKV_EBADHEADER too (it cannot tell the two apart). */
int tqkv_header_unpack(const void *buf, size_t len, Tqkv__Header **out);

/* Frees a header from tqkv_header_unpack. NULL is a no-op. */
void tqkv_header_free(Tqkv__Header *h);

/* Packed size of h in bytes. */
size_t tqkv_header_packed_size(const Tqkv__Header *h);

/* Packs h into out (cap bytes, at least tqkv_header_packed_size(h)).
 * @return the number of bytes written, or 0 if cap is too small. */
size_t tqkv_header_pack(const Tqkv__Header *h, void *out, size_t cap);

/* Builds preamble + packed header for a frame whose payload (payload_len bytes) the caller sends
 * right after it (KV is never copied into the header buffer).
 * @return 0 and *out (tqkv_malloc'd, owned by the caller: tqkv_free) with *out_len bytes;
 *   TQKV_EFRAMETOOBIG if the header exceeds TQKV_MAX_HEADER_LEN or the frame 4 GiB;
 *   TQKV_ENOMEM. */
int tqkv_frame_build(const Tqkv__Header *h, uint32_t payload_len, void **out, size_t *out_len);

/* Sums items[i].payload_len of h, checking for overflow.
 * @return 0 and *total, or TQKV_EOVERFLOW. */
int tqkv_header_items_total(const Tqkv__Header *h, uint64_t *total);

/* Checks that every item's key is TQKV_KEY_LEN bytes. @return 0 or TQKV_EBADKEYLEN. */
int tqkv_header_check_keys(const Tqkv__Header *h);

/* Name of an op ("PUT"), "UNKNOWN" if out of range. Never NULL. */
const char *tqkv_op_name(int op);

#ifdef __cplusplus
}
#endif
#endif
