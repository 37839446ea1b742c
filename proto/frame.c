/* Framing of the tqkv wire protocol (see frame.h): the preamble and the protobuf header wrappers.
 * Everything here validates before it reads; nothing touches a socket. */
#include "frame.h"

#include <string.h>

#include "tqkv_alloc.h"
#include "tqkv_endian.h"

int tqkv_preamble_parse(const void *buf, size_t len, uint32_t max_frame, tqkv_preamble *out)
{
    if (!buf || !out)
        return TQKV_EINVAL;
    if (len < TQKV_PREAMBLE_SIZE)
        return TQKV_ETRUNCATED;
    const uint8_t *b = buf;
    if (memcmp(b, TQKV_FRAME_MAGIC, 4) != 0)
        return TQKV_EBADMAGIC;
    out->version = tqkv_load_le16(b + 4);
    out->flags = tqkv_load_le16(b + 6);
    out->header_len = tqkv_load_le32(b + 8);
    out->payload_len = tqkv_load_le32(b + 12);
    if (out->version != TQKV_PROTOCOL_VERSION)
        return TQKV_EBADVERSION;
    if (out->flags != 0)
        return TQKV_EPROTO;
    if (out->header_len > TQKV_MAX_HEADER_LEN)
        return TQKV_EFRAMETOOBIG;
    if (max_frame && tqkv_preamble_frame_size(out) > max_frame)
        return TQKV_EFRAMETOOBIG;
    return 0;
}

void tqkv_preamble_emit(void *out16, uint32_t header_len, uint32_t payload_len)
{
    uint8_t *b = out16;
    memcpy(b, TQKV_FRAME_MAGIC, 4);
    tqkv_store_le16(b + 4, TQKV_PROTOCOL_VERSION);
    tqkv_store_le16(b + 6, 0);
    tqkv_store_le32(b + 8, header_len);
    tqkv_store_le32(b + 12, payload_len);
}

int tqkv_header_unpack(const void *buf, size_t len, Tqkv__Header **out)
{
    if (!out || (!buf && len))
        return TQKV_EINVAL;
    *out = NULL;
    if (len > TQKV_MAX_HEADER_LEN)
        return TQKV_EFRAMETOOBIG;
    /* protobuf-c accepts a NULL buffer only for len 0; give it a valid pointer either way. */
    static const uint8_t empty[1];
    Tqkv__Header *h = tqkv__header__unpack(NULL, len, len ? (const uint8_t *)buf : empty);
    if (!h)
        return TQKV_EBADHEADER;
    *out = h;
    return 0;
}

void tqkv_header_free(Tqkv__Header *h)
{
    if (h)
        tqkv__header__free_unpacked(h, NULL);
}

size_t tqkv_header_packed_size(const Tqkv__Header *h)
{
    return tqkv__header__get_packed_size(h);
}

size_t tqkv_header_pack(const Tqkv__Header *h, void *out, size_t cap)
{
    size_t n = tqkv__header__get_packed_size(h);
    if (n > cap)
        return 0;
    return tqkv__header__pack(h, out);
}

int tqkv_frame_build(const Tqkv__Header *h, uint32_t payload_len, void **out, size_t *out_len)
{
    if (!h || !out || !out_len)
        return TQKV_EINVAL;
    *out = NULL;
    *out_len = 0;
    size_t hl = tqkv__header__get_packed_size(h);
    if (hl > TQKV_MAX_HEADER_LEN)
        return TQKV_EFRAMETOOBIG;
    if ((uint64_t)TQKV_PREAMBLE_SIZE + hl + payload_len > UINT32_MAX)
        return TQKV_EFRAMETOOBIG;
    uint8_t *buf = tqkv_malloc(TQKV_PREAMBLE_SIZE + hl + 1);
    if (!buf)
        return TQKV_ENOMEM;
    size_t packed = tqkv__header__pack(h, buf + TQKV_PREAMBLE_SIZE);
    if (packed != hl) {
        tqkv_free(buf);
        return TQKV_EINTERNAL;
    }
    tqkv_preamble_emit(buf, (uint32_t)hl, payload_len);
    *out = buf;
    *out_len = TQKV_PREAMBLE_SIZE + hl;
    return 0;
}

int tqkv_header_items_total(const Tqkv__Header *h, uint64_t *total)
{
    if (!h || !total)
        return TQKV_EINVAL;
    uint64_t t = 0;
    for (size_t i = 0; i < h->n_items; i++) {
        uint64_t n = h->items[i]->payload_len;
        if (n > UINT64_MAX - t)
            return TQKV_EOVERFLOW;
        t += n;
    }
    *total = t;
    return 0;
}

int tqkv_header_check_keys(const Tqkv__Header *h)
{
    if (!h)
        return TQKV_EINVAL;
    for (size_t i = 0; i < h->n_items; i++)
        if (h->items[i]->key.len != TQKV_KEY_LEN)
            return TQKV_EBADKEYLEN;
    return 0;
}

const char *tqkv_op_name(int op)
{
    static const char *const names[] = {
        "NONE",   "HELLO", "REGISTER",   "PUT",        "GET",   "LOOKUP", "DELETE",  "PIN",
        "UNPIN",  "STATS", "HEALTH",     "CONFIG_GET", "CONFIG_SET", "EVICT", "CLEAR", "CLUSTER",
    };
    if (op < 0 || (size_t)op >= sizeof(names) / sizeof(names[0]))
        return "UNKNOWN";
    return names[op];
}
