/* Messages and names for the error table in include/tqkv_errors.h. */
#include "tqkv_errors.h"

const char *tqkv_strerror(int err)
{
    switch (err) {
    case TQKV_OK:
        return "success";
#define TQKV__ERR_MSG(name, num, msg)                                                              \
    case TQKV_##name:                                                                              \
        return msg;
        TQKV_ERRNO_MAP(TQKV__ERR_MSG)
#undef TQKV__ERR_MSG
    }
    return "unknown error";
}

const char *tqkv_err_name(int err)
{
    switch (err) {
    case TQKV_OK:
        return "TQKV_OK";
#define TQKV__ERR_NAME(name, num, msg)                                                             \
    case TQKV_##name:                                                                              \
        return "TQKV_" #name;
        TQKV_ERRNO_MAP(TQKV__ERR_NAME)
#undef TQKV__ERR_NAME
    }
    return "TQKV_EUNKNOWN";
}
