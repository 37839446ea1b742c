/* Leveled, structured logging: one line per event,
 *   2026-11-28T11:05:41.123Z level=info mod=server msg="listening" addr=127.0.0.1:7070
 * The macros test the level before evaluating their arguments, so a disabled debug line costs a
 * branch. Thread-safe (one write(2) per line). */
#ifndef TQKV_LOG_H
#define TQKV_LOG_H

#include <stdarg.h>

typedef enum {
    TQKV_LOG_ERROR = 0,
    TQKV_LOG_WARN = 1,
    TQKV_LOG_INFO = 2,
    TQKV_LOG_DEBUG = 3,
    TQKV_LOG_TRACE = 4,
} tqkv_log_level;

extern int tqkv__log_level; /* read by the macros; set with tqkv_log_set_level */

void tqkv_log_set_level(tqkv_log_level level);
tqkv_log_level tqkv_log_get_level(void);
/* Parses "error", "warn", "info", "debug", "trace". @return 0 or TQKV_EINVAL. */
int tqkv_log_parse_level(const char *s, tqkv_log_level *out);
const char *tqkv_log_level_name(tqkv_log_level level);
/* Log to this file descriptor (default 2, stderr). */
void tqkv_log_set_fd(int fd);

/* `fmt` formats the rest of the line after msg=...: pass key=value pairs there. */
void tqkv_log_write(tqkv_log_level level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TQKV_LOG(level, mod, ...)                                                                  \
    do {                                                                                           \
        if ((int)(level) <= tqkv__log_level)                                                       \
            tqkv_log_write((level), (mod), __VA_ARGS__);                                           \
    } while (0)
#define TQKV_LOGE(mod, ...) TQKV_LOG(TQKV_LOG_ERROR, mod, __VA_ARGS__)
#define TQKV_LOGW(mod, ...) TQKV_LOG(TQKV_LOG_WARN, mod, __VA_ARGS__)
#define TQKV_LOGI(mod, ...) TQKV_LOG(TQKV_LOG_INFO, mod, __VA_ARGS__)
#define TQKV_LOGD(mod, ...) TQKV_LOG(TQKV_LOG_DEBUG, mod, __VA_ARGS__)
#define TQKV_LOGT(mod, ...) TQKV_LOG(TQKV_LOG_TRACE, mod, __VA_ARGS__)

#endif
