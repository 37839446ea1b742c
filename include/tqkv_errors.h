/* tqkv error codes: one table for the codec (libtq), the client (libtqkv), the daemon and the
 * wire protocol. Every fallible function returns 0 on success or one of these negative values.
 * A cache miss is never an error: it is a result.
 *
 * The numbers are part of the wire protocol (a response carries -code) and of the C ABI: append
 * new codes, never renumber. */
#ifndef TQKV_ERRORS_H
#define TQKV_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, number, message) */
#define TQKV_ERRNO_MAP(X)                                                                          \
    X(EINVAL, 1, "invalid argument")                                                               \
    X(ENOMEM, 2, "out of memory")                                                                  \
    X(ERANGE, 3, "value out of range")                                                             \
    X(ENOTSUP, 4, "operation not supported")                                                       \
    X(EIO, 5, "input/output error")                                                                \
    X(EOVERFLOW, 6, "size overflow")                                                               \
    X(ENOSPC, 7, "no space left in tier")                                                          \
    X(EBUSY, 8, "resource busy")                                                                   \
    X(ETIMEDOUT, 9, "operation timed out")                                                         \
    X(ECANCELED, 10, "operation canceled")                                                         \
    X(ENOENT, 11, "no such entry")                                                                 \
    X(EEXIST, 12, "entry already exists")                                                          \
    X(EAGAIN, 13, "resource temporarily unavailable")                                              \
    X(EINTERNAL, 14, "internal error")                                                             \
    /* block format */                                                                             \
    X(EBADMAGIC, 20, "bad magic number")                                                           \
    X(EBADVERSION, 21, "unsupported format or protocol version")                                   \
    X(ETRUNCATED, 22, "data truncated")                                                            \
    X(EBADHEADER, 23, "malformed header")                                                          \
    X(EBADGEOMETRY, 24, "bad or mismatched geometry")                                              \
    X(EBADCODEC, 25, "bad codec parameters")                                                       \
    X(EBADOFFSET, 26, "offset or length out of bounds")                                            \
    X(EHDRCHECKSUM, 27, "header checksum mismatch")                                                \
    X(ECHECKSUM, 28, "payload checksum mismatch")                                                  \
    X(EBADKEY, 29, "key mismatch")                                                                 \
    X(EBADDTYPE, 30, "unsupported data type")                                                      \
    X(EBADLAYERS, 31, "bad layer range")                                                           \
    /* protocol */                                                                                 \
    X(EPROTO, 40, "protocol error")                                                                \
    X(EFRAMETOOBIG, 41, "frame too large")                                                         \
    X(EBADOP, 42, "unknown operation")                                                             \
    X(EBADPAYLOAD, 43, "payload length does not match the request")                                \
    X(ENONAMESPACE, 44, "unknown namespace")                                                       \
    X(ENSCONFLICT, 45, "namespace registered with different parameters")                           \
    X(EBADKEYLEN, 46, "chunk key must be 32 bytes")                                                \
    X(EAUTH, 47, "authentication required or failed")                                              \
    X(EPERM, 48, "operation requires the admin token")                                             \
    X(ETOOMANY, 49, "too many connections or requests")                                            \
    X(ECONNECT, 50, "cannot connect")                                                              \
    X(ECLOSED, 51, "connection closed")                                                            \
    X(ENOTREADY, 52, "handshake not done")                                                         \
    X(EBADCONFIG, 53, "bad configuration")                                                         \
    X(EREADONLY, 54, "setting cannot be changed at run time")                                      \
    /* devices and tiers */                                                                        \
    X(ENODEVICE, 60, "no GPU device available")                                                    \
    X(ECUDA, 61, "CUDA error")                                                                     \
    X(ETIER, 62, "tier unavailable")                                                               \
    X(ECORRUPT, 63, "stored record corrupt")                                                       \
    /* codec (32..39) */                                                                           \
    X(EBADMASK, 32, "outlier mask does not select n_out channels")                                 \
    X(EBADPADDING, 33, "nonzero reserved or padding bytes")

typedef enum {
    TQKV_OK = 0,
#define TQKV__ERR_ENUM(name, num, msg) TQKV_##name = -(num),
    TQKV_ERRNO_MAP(TQKV__ERR_ENUM)
#undef TQKV__ERR_ENUM
} tqkv_err;

/* Human-readable message for an error code; never NULL ("unknown error" for unknown codes). */
const char *tqkv_strerror(int err);
/* Symbolic name ("TQKV_EINVAL"); never NULL ("TQKV_EUNKNOWN" for unknown codes). */
const char *tqkv_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif
