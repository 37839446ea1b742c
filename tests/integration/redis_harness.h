/* Starts and stops real redis-server processes for the Redis engine's tests and benchmark: one
 * server on a random loopback port in a temp dir, or a Redis Cluster of masters created with
 * `redis-cli --cluster create`. Every server dies with the process that started it (parent-death
 * signal, plus an atexit hook), so a failing or crashing test leaves nothing running. */
#ifndef TQKV_REDIS_HARNESS_H
#define TQKV_REDIS_HARNESS_H

#include <sys/types.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#define TQKV_TEST_REDIS_MAX_ARGS 16
#define TQKV_TEST_REDIS_MAX_NODES 6

typedef struct {
    pid_t pid; /* 0 when not running */
    int port;
    char dir[128];
    const char *args[TQKV_TEST_REDIS_MAX_ARGS]; /* extra arguments, borrowed, kept for restart */
    int n_args;
    const char *password; /* for the harness' own commands (requirepass), borrowed */
} tqkv_test_redis;

typedef struct {
    tqkv_test_redis node[TQKV_TEST_REDIS_MAX_NODES];
    int n;
} tqkv_test_redis_cluster;

/* 1 if redis-server (and redis-cli) can be run. */
int tqkv_test_redis_available(void);

/* Starts a server on 127.0.0.1 and a random free port, in a new temp dir, with `args` (a NULL-
 * terminated list of extra arguments, e.g. {"--requirepass", "pw", NULL}; may be NULL), and waits
 * until it answers. @return 0, or -1 (message on stderr). */
int tqkv_test_redis_start(tqkv_test_redis *s, const char *const *args);
/* Starts it again, same port, dir and arguments (after tqkv_test_redis_kill). @return 0 or -1. */
int tqkv_test_redis_restart(tqkv_test_redis *s);
/* Sends `sig` (SIGSTOP, SIGCONT, ...) to the server. */
void tqkv_test_redis_signal(tqkv_test_redis *s, int sig);
/* SIGKILL and reap; the dir stays for a restart. */
void tqkv_test_redis_kill(tqkv_test_redis *s);
/* Kills the server if running and removes its dir. Safe on a zeroed or stopped struct. */
void tqkv_test_redis_stop(tqkv_test_redis *s);

/* A synchronous command to the server on `port` (AUTH first if `password`). @return the reply
 * (free with freeReplyObject), or NULL if the server cannot be reached. */
redisReply *tqkv_test_redis_cmd(int port, const char *password, const char *fmt, ...);
/* The same with an argument vector (binary-safe). */
redisReply *tqkv_test_redis_cmd_argv(int port, const char *password, int argc, const char **argv,
                                     const size_t *lens);

/* Starts `n` (3..TQKV_TEST_REDIS_MAX_NODES) cluster-enabled servers and joins them into one
 * cluster of masters; waits until every node reports cluster_state:ok. @return 0 or -1. */
int tqkv_test_redis_cluster_start(tqkv_test_redis_cluster *c, int n);
/* The same with `replicas` replicas per master (masters * (1 + replicas) nodes at most
 * TQKV_TEST_REDIS_MAX_NODES); redis-cli decides which node replicates which. */
int tqkv_test_redis_cluster_start_replicas(tqkv_test_redis_cluster *c, int masters, int replicas);
/* Waits until every node reports cluster_state:ok (e.g. after a restart). @return 0 or -1. */
int tqkv_test_redis_cluster_wait(tqkv_test_redis_cluster *c);
void tqkv_test_redis_cluster_stop(tqkv_test_redis_cluster *c);
/* Index of the node owning `slot` (from CLUSTER SLOTS on node 0), or -1. */
int tqkv_test_redis_cluster_owner(tqkv_test_redis_cluster *c, int slot);
/* The same as node `on` sees it. */
int tqkv_test_redis_cluster_owner_on(tqkv_test_redis_cluster *c, int on, int slot);
/* Writes node i's cluster id (CLUSTER MYID) into id (41 bytes). @return 0 or -1. */
int tqkv_test_redis_cluster_id(tqkv_test_redis_cluster *c, int i, char id[41]);

/* Runs `loop` until *counter <= 0 or `max_s` seconds have passed (a guard against hanging, not a
 * timing assertion). @return 0 if the counter got there, -1 otherwise. */
int tqkv_test_loop_wait(uv_loop_t *loop, const int *counter, double max_s);
/* Runs `loop` for about `ms` milliseconds. */
void tqkv_test_loop_for(uv_loop_t *loop, int ms);

#endif
