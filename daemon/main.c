/* tqkvd: the tqkv daemon. Reads its settings (defaults, config file, flags), listens on a Unix
 * socket and TCP, serves until SIGTERM/SIGINT, then shuts down gracefully. Exit status: 0 after
 * a clean shutdown, 1 after an error, 2 for bad settings. */
#include <malloc.h>
#include <stdio.h>

#include "server.h"
#include "tqkv_errors.h"
#include "tqkv_log.h"

int main(int argc, char **argv)
{
    /* Payload buffers are large and short-lived. A fixed mmap threshold keeps glibc from raising
     * it dynamically after the first frees, which would serve them from heap arenas that are not
     * given back, and the resident size would drift above the host capacity. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    tqkvd_config cfg;
    char err[512] = "";
    if (tqkvd_config_defaults(&cfg) != 0) {
        fprintf(stderr, "tqkvd: out of memory\n");
        return 1;
    }
    int r = tqkvd_config_load(&cfg, argc, argv, err, sizeof err);
    if (r == 1) {
        tqkvd_config_free(&cfg);
        return 0;
    }
    if (r) {
        fprintf(stderr, "tqkvd: %s\n", err[0] ? err : tqkv_strerror(r));
        tqkvd_config_free(&cfg);
        return 2;
    }
    tqkvd_server s;
    r = tqkvd_server_init(&s, &cfg);
    if (r) {
        fprintf(stderr, "tqkvd: cannot start: %s (%s)\n", tqkv_strerror(r), tqkv_err_name(r));
        tqkvd_server_close(&s);
        return 1;
    }
    int code = tqkvd_server_run(&s);
    tqkvd_server_close(&s);
    TQKV_LOGI("server", "msg=\"stopped\" exit=%d", code);
    return code;
}
