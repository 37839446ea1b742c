/* Starts a real tqkvd for an integration test: a fresh temp directory holds its Unix socket, TCP
 * listens on an ephemeral 127.0.0.1 port chosen by the kernel, and the call returns once the
 * daemon has written its ready file (so it is accepting connections). tqkvd_harness_stop sends
 * SIGTERM, waits for the exit and removes the directory.
 *
 * Build: add tests/integration/tqkvd_harness.c to the test's SOURCES and give the daemon's path:
 *   target_compile_definitions(NAME PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
 * (the environment variable TQKVD overrides it at run time). Guard with if(TARGET tqkvd).
 * Not thread-safe; one harness per daemon. */
#ifndef TQKVD_HARNESS_H
#define TQKVD_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    char dir[128];        /* temp directory (socket, ready file, log) */
    char unix_path[192];  /* the daemon's Unix socket */
    char unix_url[208];   /* "unix:///..." */
    char tcp_url[64];     /* "tcp://127.0.0.1:PORT" */
    char log_path[192];   /* the daemon's stderr */
    uint16_t tcp_port;
    uint16_t metrics_port; /* the HTTP metrics port when args set --metrics, else 0 */
} tqkvd_harness;

/* Starts tqkvd with `args` (NULL-terminated extra flags, e.g. {"--token", "s3cret", NULL}; may
 * be NULL) after the harness's own --unix-socket, --tcp and --ready-file flags, and waits up to
 * 10 s for it to be ready. A small host capacity (64 MiB) is the default unless args set one;
 * the HTTP metrics listener is off (--metrics "") unless args set one (e.g. 127.0.0.1:0).
 * @return 0, or -1 (the reason is printed on stderr, the daemon's log included). */
int tqkvd_harness_start(tqkvd_harness *h, const char *const *args);

/* 1 if the daemon process is still running. */
int tqkvd_harness_alive(tqkvd_harness *h);

/* SIGTERM, wait up to 10 s (then SIGKILL), remove the temp directory.
 * @return the daemon's exit status (0 for a clean shutdown), 128+signal if it was killed by a
 *   signal, or -1 if it was not running. */
int tqkvd_harness_stop(tqkvd_harness *h);

/* Raw connected sockets (blocking) to the daemon. @return an fd, or -1. */
int tqkvd_harness_connect_unix(const tqkvd_harness *h);
int tqkvd_harness_connect_tcp(const tqkvd_harness *h);

/* Prints the daemon's log on stderr (for a failing test). */
void tqkvd_harness_dump_log(const tqkvd_harness *h);

#endif
