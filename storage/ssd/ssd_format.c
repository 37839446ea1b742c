/* Encoders and validating decoders of the SSD engine's segment and record headers (the layout is
 * in ssd_format.h and docs/ssd.md). The decoders see bytes straight from the disk, so they trust
 * nothing: every length is bounded before anyone uses it. */
#include "ssd_format.h"

#include <string.h>
#include <xxhash.h>

#include "tqkv_endian.h"
#include "tqkv_errors.h"

void tqkv__ssd_rec_encode(uint8_t out[TQKV__SSD_REC_HDR_BYTES], const tqkv__ssd_rec *r)
{
    memset(out, 0, TQKV__SSD_REC_HDR_BYTES);
    tqkv_store_le32(out + TQKV__SSD_REC_OFF_MAGIC, TQKV__SSD_REC_MAGIC);
    tqkv_store_le16(out + TQKV__SSD_REC_OFF_VERSION, TQKV__SSD_VERSION);
    out[TQKV__SSD_REC_OFF_TYPE] = r->type;
    out[TQKV__SSD_REC_OFF_FLAGS] = r->flags;
    tqkv_store_le32(out + TQKV__SSD_REC_OFF_NS, r->ns);
    tqkv_store_le32(out + TQKV__SSD_REC_OFF_STORED, r->stored_len);
    tqkv_store_le32(out + TQKV__SSD_REC_OFF_RAW, r->raw_len);
    tqkv_store_le64(out + TQKV__SSD_REC_OFF_PAYLOAD_SUM, r->payload_sum);
    memcpy(out + TQKV__SSD_REC_OFF_KEY, r->key, 32);
    tqkv_store_le64(out + TQKV__SSD_REC_OFF_WALL, r->wall_ms);
    tqkv_store_le64(out + TQKV__SSD_REC_OFF_CHECKSUM, XXH3_64bits(out, TQKV__SSD_REC_OFF_CHECKSUM));
}

int tqkv__ssd_rec_decode(const uint8_t in[TQKV__SSD_REC_HDR_BYTES], tqkv__ssd_rec *r)
{
    if (tqkv_load_le32(in + TQKV__SSD_REC_OFF_MAGIC) != TQKV__SSD_REC_MAGIC) return TQKV_EBADMAGIC;
    if (tqkv_load_le64(in + TQKV__SSD_REC_OFF_CHECKSUM) !=
        XXH3_64bits(in, TQKV__SSD_REC_OFF_CHECKSUM))
        return TQKV_EHDRCHECKSUM;
    if (tqkv_load_le16(in + TQKV__SSD_REC_OFF_VERSION) != TQKV__SSD_VERSION)
        return TQKV_EBADVERSION;
    r->type = in[TQKV__SSD_REC_OFF_TYPE];
    r->flags = in[TQKV__SSD_REC_OFF_FLAGS];
    r->ns = tqkv_load_le32(in + TQKV__SSD_REC_OFF_NS);
    r->stored_len = tqkv_load_le32(in + TQKV__SSD_REC_OFF_STORED);
    r->raw_len = tqkv_load_le32(in + TQKV__SSD_REC_OFF_RAW);
    r->payload_sum = tqkv_load_le64(in + TQKV__SSD_REC_OFF_PAYLOAD_SUM);
    memcpy(r->key, in + TQKV__SSD_REC_OFF_KEY, 32);
    r->wall_ms = tqkv_load_le64(in + TQKV__SSD_REC_OFF_WALL);
    if (r->type != TQKV__SSD_REC_DATA && r->type != TQKV__SSD_REC_TOMBSTONE) return TQKV_EBADHEADER;
    if (r->flags & ~TQKV__SSD_REC_F_LZ4) return TQKV_EBADHEADER;
    if (tqkv_load_le32(in + TQKV__SSD_REC_OFF_RESERVED) != 0) return TQKV_EBADHEADER;
    if (r->type == TQKV__SSD_REC_TOMBSTONE && (r->stored_len != 0 || r->raw_len != 0 || r->flags))
        return TQKV_EBADHEADER;
    if (!(r->flags & TQKV__SSD_REC_F_LZ4) && r->stored_len != r->raw_len) return TQKV_EBADHEADER;
    if ((r->flags & TQKV__SSD_REC_F_LZ4) && (r->stored_len == 0 || r->raw_len == 0))
        return TQKV_EBADHEADER;
    return 0;
}

void tqkv__ssd_seg_encode(uint8_t out[TQKV__SSD_WRITE_ALIGN], uint64_t id, uint64_t wall_ms)
{
    memset(out, 0, TQKV__SSD_WRITE_ALIGN);
    tqkv_store_le32(out + TQKV__SSD_SEG_OFF_MAGIC, TQKV__SSD_SEG_MAGIC);
    tqkv_store_le16(out + TQKV__SSD_SEG_OFF_VERSION, TQKV__SSD_VERSION);
    tqkv_store_le64(out + TQKV__SSD_SEG_OFF_ID, id);
    tqkv_store_le64(out + TQKV__SSD_SEG_OFF_CREATED, wall_ms);
    tqkv_store_le32(out + TQKV__SSD_SEG_OFF_WALIGN, TQKV__SSD_WRITE_ALIGN);
    tqkv_store_le32(out + TQKV__SSD_SEG_OFF_RALIGN, TQKV__SSD_REC_ALIGN);
    tqkv_store_le64(out + TQKV__SSD_SEG_OFF_CHECKSUM, XXH3_64bits(out, TQKV__SSD_SEG_OFF_CHECKSUM));
}

int tqkv__ssd_seg_decode(const uint8_t in[TQKV__SSD_SEG_HDR_BYTES], uint64_t id)
{
    if (tqkv_load_le32(in + TQKV__SSD_SEG_OFF_MAGIC) != TQKV__SSD_SEG_MAGIC) return TQKV_EBADMAGIC;
    if (tqkv_load_le64(in + TQKV__SSD_SEG_OFF_CHECKSUM) !=
        XXH3_64bits(in, TQKV__SSD_SEG_OFF_CHECKSUM))
        return TQKV_EHDRCHECKSUM;
    if (tqkv_load_le16(in + TQKV__SSD_SEG_OFF_VERSION) != TQKV__SSD_VERSION)
        return TQKV_EBADVERSION;
    if (tqkv_load_le64(in + TQKV__SSD_SEG_OFF_ID) != id ||
        tqkv_load_le32(in + TQKV__SSD_SEG_OFF_WALIGN) != TQKV__SSD_WRITE_ALIGN ||
        tqkv_load_le32(in + TQKV__SSD_SEG_OFF_RALIGN) != TQKV__SSD_REC_ALIGN)
        return TQKV_EBADHEADER;
    return 0;
}
