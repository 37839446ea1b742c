/* tqkvd's settings: one table (config.c) defines every setting — name, type, default, bounds,
 * whether it can change at run time, and the callback that applies a change. The same table
 * drives the config file (INI, read with libinih), the command-line flags (--name-with-dashes),
 * CONFIG GET/SET on the wire, --help and docs/operations.md.
 *
 * Precedence: built-in defaults < config file (--config FILE) < command-line flags < CONFIG SET.
 * Loop-thread only, except tqkvd_config_load which runs before the loop starts. */
#ifndef TQKVD_CONFIG_H
#define TQKVD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct tqkvd_server;

typedef enum { TQKVD_ENC_AUTO = 0, TQKVD_ENC_CPU = 1, TQKVD_ENC_CUDA = 2 } tqkvd_encode_device;

typedef struct {
    char *unix_socket;  /* "" disables the Unix listener */
    char *tcp;          /* "host:port"; "" disables TCP; port 0 picks an ephemeral port */
    char *token;        /* "" none */
    char *admin_token;  /* "" none */
    char *ready_file;   /* "" none */
    char *metrics;      /* HTTP host:port of /metrics and /healthz; "" off; port 0: ephemeral */
    int64_t host_capacity;
    int64_t max_frame;
    int64_t max_connections;
    int64_t max_inflight_bytes;
    int64_t workers;
    int64_t log_level;     /* tqkv_log_level */
    int64_t encode_device; /* tqkvd_encode_device */
    int64_t verify_checksums;
    int64_t shutdown_timeout_ms;
    /* lower tiers (daemon/lower.c) */
    char *ssd_dir; /* "" disables the SSD tier */
    int64_t ssd_capacity;
    int64_t ssd_fsync; /* tqkv_ssd_fsync */
    int64_t ssd_fsync_interval_ms;
    int64_t ssd_direct_io;
    int64_t ssd_lz4;
    int64_t ssd_io_threads;
    int64_t ssd_write; /* tqkv_write_policy */
    char *redis;       /* "host:port[,host:port...]"; "" disables the Redis tier */
    int64_t redis_cluster;
    char *redis_user;
    char *redis_password;
    char *redis_prefix;
    int64_t redis_ttl_s;
    int64_t redis_timeout_ms;
    int64_t redis_lz4;
    int64_t redis_write; /* tqkv_write_policy */
    /* across nodes (daemon/cluster.c) */
    int64_t cluster; /* 0 auto (on when redis is set), 1 on, 2 off */
    char *node_id;   /* "" : hostname:port */
    char *advertise; /* "" : the bound TCP address */
    int64_t heartbeat_ms;
    int64_t member_ttl_ms;
    int64_t peer_fetch;
    int64_t peer_timeout_ms;
} tqkvd_config;

/* Fills c with the built-in defaults (the Unix socket in the runtime dir, TCP on
 * 127.0.0.1:7070, host capacity 25% of MemTotal, ...). Strings are owned by c.
 * @return 0 or TQKV_ENOMEM. */
int tqkvd_config_defaults(tqkvd_config *c);

/* Frees c's strings. */
void tqkvd_config_free(tqkvd_config *c);

/* Parses argv (flags, --config FILE) over the defaults: the file first, then the flags,
 * whatever their order. Writes why it failed in err (errlen bytes).
 * @return 0; 1 if --help or --version was printed (exit 0); TQKV_EBADCONFIG, TQKV_ERANGE,
 *   TQKV_ENOENT (unknown setting or unreadable file). */
int tqkvd_config_load(tqkvd_config *c, int argc, char **argv, char *err, size_t errlen);

/* Sets one setting from text (file, flag or CONFIG SET). When `server` is non-NULL the setting
 * must be mutable and its apply callback runs; a failing callback restores the old value.
 * @return 0, TQKV_ENOENT (unknown name), TQKV_EREADONLY, TQKV_EBADCONFIG (unparsable),
 *   TQKV_ERANGE (out of bounds), or the callback's error. */
int tqkvd_config_set(tqkvd_config *c, struct tqkvd_server *server, const char *name,
                     const char *value, char *err, size_t errlen);

/* Current value of a setting as text into out (secrets print as "(set)" or ""), or NULL for an
 * unknown name. */
const char *tqkvd_config_get(const tqkvd_config *c, const char *name, char *out, size_t outlen);

/* Number of settings and the name of setting i (0-based; NULL past the end). */
size_t tqkvd_config_count(void);
const char *tqkvd_config_name(size_t i);

/* Prints --help. */
void tqkvd_config_usage(const char *prog);

/* Parses a size: "1048576", "64K", "64M", "2G", "1T" (binary units, optional "iB"/"B"), or
 * "N%" of MemTotal. @return 0 or TQKV_EBADCONFIG. */
int tqkvd_parse_size(const char *s, int64_t *out);

/* MemTotal from /proc/meminfo in bytes (4 GiB if it cannot be read). */
uint64_t tqkvd_mem_total(void);

#endif
