/* Structured log lines, written with one write(2) each so concurrent threads do not interleave. */
#include "tqkv_log.h"
#include "tqkv_errors.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int tqkv__log_level = TQKV_LOG_INFO;
static int log_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void tqkv_log_set_level(tqkv_log_level level)
{
    tqkv__log_level = (int)level;
}

tqkv_log_level tqkv_log_get_level(void)
{
    return (tqkv_log_level)tqkv__log_level;
}

int tqkv_log_parse_level(const char *s, tqkv_log_level *out)
{
    for (int i = 0; i <= TQKV_LOG_TRACE; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (tqkv_log_level)i;
            return 0;
        }
    }
    return TQKV_EINVAL;
}

const char *tqkv_log_level_name(tqkv_log_level level)
{
    if ((int)level < 0 || level > TQKV_LOG_TRACE)
        return "unknown";
    return level_names[level];
}

void tqkv_log_set_fd(int fd)
{
    log_fd = fd;
}

void tqkv_log_write(tqkv_log_level level, const char *mod, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, tqkv_log_level_name(level), mod);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2; /* the prefix alone fills the line (snprintf cut it) */
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(log_fd, line, len);
    (void)w;
}
