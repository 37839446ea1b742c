/* tqkvd's server: the libuv loop, the Unix and TCP listeners, signals and the graceful shutdown
 * (stop accepting, stop reading, let in-flight requests answer, then close). The store and the
 * settings live here; connections and requests are in conn.c and dispatch.c. */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster.h"
#include "metrics.h"
#include "tqkv_alloc.h"
#include "tqkv_log.h"
#include "tqkv_time.h"

#define MOD "server"

int tqkvd_server_apply_capacity(tqkvd_server *s)
{
    if (!s->store)
        return 0;
    return tqkv_store_set_capacity(s->store, TQKV_TIER_HOST, (uint64_t)s->cfg.host_capacity);
}

int tqkvd_server_apply_log_level(tqkvd_server *s)
{
    tqkv_log_set_level((tqkv_log_level)s->cfg.log_level);
    return 0;
}

int tqkvd_server_apply_encode_device(tqkvd_server *s)
{
    return tqkvd_codec_select((int)s->cfg.encode_device);
}

static void on_connection(uv_stream_t *listener, int status)
{
    tqkvd_server *s = listener->data;
    if (status < 0) {
        TQKV_LOGW(MOD, "msg=\"accept failed\" err=%s", uv_strerror(status));
        return;
    }
    tqkvd_conn_accept(s, listener, listener == (uv_stream_t *)&s->tcp_srv);
}

/* Splits "host:port" ("[v6]:port" too). @return 0 or TQKV_EBADCONFIG. */
static int split_hostport(const char *in, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(in, ':');
    if (!colon || colon == in)
        return TQKV_EBADCONFIG;
    size_t n = (size_t)(colon - in);
    if (in[0] == '[' && n >= 2 && in[n - 1] == ']') {
        in++;
        n -= 2;
    }
    if (n >= hostlen)
        return TQKV_EBADCONFIG;
    memcpy(host, in, n);
    host[n] = 0;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return TQKV_EBADCONFIG;
    *port = (int)p;
    return 0;
}

static int listen_tcp(tqkvd_server *s)
{
    char host[128];
    int port, r;
    if (split_hostport(s->cfg.tcp, host, sizeof host, &port) != 0) {
        TQKV_LOGE(MOD, "msg=\"bad tcp address\" tcp=%s", s->cfg.tcp);
        return TQKV_EBADCONFIG;
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        TQKV_LOGE(MOD, "msg=\"bad tcp host\" host=%s", host);
        return TQKV_EBADCONFIG;
    }
    uv_tcp_init(s->loop, &s->tcp_srv);
    s->tcp_srv.data = s;
    s->tcp_on = 1;
    if ((r = uv_tcp_bind(&s->tcp_srv, (struct sockaddr *)&ss, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&s->tcp_srv, 512, on_connection)) != 0) {
        TQKV_LOGE(MOD, "msg=\"cannot listen\" tcp=%s err=%s", s->cfg.tcp, uv_strerror(r));
        return TQKV_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->tcp_srv, (struct sockaddr *)&bound, &blen);
    char ip[48];
    if (bound.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof ip);
        snprintf(s->tcp_bound, sizeof s->tcp_bound, "[%s]:%d", ip,
                 ntohs(((struct sockaddr_in6 *)&bound)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof ip);
        snprintf(s->tcp_bound, sizeof s->tcp_bound, "%s:%d", ip,
                 ntohs(((struct sockaddr_in *)&bound)->sin_port));
    }
    return 0;
}

static int listen_unix(tqkvd_server *s)
{
    const char *path = s->cfg.unix_socket;
    int r;
    /* Create the runtime directory (one level) when it is ours to create, e.g. /run/tqkv. */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir(dir, 0770) == 0)
            TQKV_LOGI(MOD, "msg=\"created runtime dir\" dir=%s", dir);
    }
    /* A socket file left by a previous run would make bind fail: remove it if nobody answers. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    uv_pipe_init(s->loop, &s->unix_srv, 0);
    s->unix_srv.data = s;
    s->unix_on = 1;
    mode_t old = umask(0117); /* the socket file is created 0660 */
    r = uv_pipe_bind(&s->unix_srv, path);
    umask(old);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->unix_srv, 512, on_connection);
    if (r != 0) {
        TQKV_LOGE(MOD, "msg=\"cannot listen\" unix=%s err=%s", path, uv_strerror(r));
        return TQKV_EIO;
    }
    chmod(path, 0660);
    return 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
    tqkvd_server *s = h->data;
    if (signum == SIGPIPE)
        return;
    if (s->shutting_down) {
        TQKV_LOGW(MOD, "msg=\"second signal: exiting now\" signal=%d", signum);
        s->exit_code = 1;
        uv_stop(s->loop);
        return;
    }
    tqkvd_server_shutdown(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* Destroys the store and its tiers; only once no request or worker can touch it. */
static void destroy_store(tqkvd_server *s)
{
    if (!s->store || s->works_inflight || s->n_conns)
        return;
    tqkvd__dispatch_cleanup(s);
    tqkv_store_destroy(s->store);
    s->store = NULL;
    tqkvd_lower_close(s);
}

static uint64_t shutdown_deadline_ns;

/* Every 10 ms during shutdown: close connections that have nothing in flight (all of them once
 * the deadline has passed), and stop the loop's last handles when everything is gone. */
static void on_shutdown_tick(uv_timer_t *t)
{
    tqkvd_server *s = t->data;
    int late = tqkv_now_ns() >= shutdown_deadline_ns;
    for (tqkvd_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        if (c->inflight_reqs == 0) {
            tqkvd_conn_close(c, "shutdown");
        } else if (late) {
            TQKV_LOGW(MOD, "msg=\"closing connection with requests in flight\" conn=%" PRIu64
                           " inflight=%u",
                      c->id, c->inflight_reqs);
            tqkvd_conn_close(c, "shutdown deadline");
        }
    }
    if (s->n_conns == 0 && s->works_inflight == 0) {
        uv_timer_stop(t);
        /* Nothing uses the store any more: close it here, on the loop, so that its tiers' queued
         * writes finish and their handles (SSD completions, Redis connections) close while the
         * loop still runs. */
        destroy_store(s);
        tqkvd_metrics_stop(s);
        uv_close((uv_handle_t *)&s->sig_term, NULL);
        uv_close((uv_handle_t *)&s->sig_int, NULL);
        uv_close((uv_handle_t *)&s->sig_pipe, NULL);
        uv_close((uv_handle_t *)t, NULL);
    }
}

void tqkvd_server_shutdown(tqkvd_server *s, const char *why)
{
    if (s->shutting_down)
        return;
    s->shutting_down = 1;
    tqkvd_cluster_stop(s); /* leave the cluster before the store and its Redis engine go */
    tqkvd_metrics_shutting_down(s); /* /healthz: 503 */
    TQKV_LOGI(MOD, "msg=\"shutting down\" why=%s connections=%u", why, s->n_conns);
    if (s->unix_on) {
        uv_close((uv_handle_t *)&s->unix_srv, NULL);
        s->unix_on = 0;
        unlink(s->cfg.unix_socket);
    }
    if (s->tcp_on) {
        uv_close((uv_handle_t *)&s->tcp_srv, NULL);
        s->tcp_on = 0;
    }
    /* Stop reading everywhere: requests already read are answered, nothing new is taken. */
    for (tqkvd_conn *c = s->conns; c; c = c->next)
        if (c->reading && !c->closing) {
            uv_read_stop(&c->h.stream);
            c->reading = 0;
        }
    shutdown_deadline_ns = tqkv_now_ns() + (uint64_t)s->cfg.shutdown_timeout_ms * 1000000ull;
    s->shutdown_timer.data = s;
    uv_timer_start(&s->shutdown_timer, on_shutdown_tick, 0, 10);
}

static int write_ready_file(tqkvd_server *s)
{
    if (!s->cfg.ready_file[0])
        return 0;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", s->cfg.ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return TQKV_EIO;
    fprintf(f, "pid=%d\n", (int)getpid());
    if (s->unix_on)
        fprintf(f, "unix=%s\n", s->cfg.unix_socket);
    if (s->tcp_on)
        fprintf(f, "tcp=%s\n", s->tcp_bound);
    if (tqkvd_metrics_bound(s)[0])
        fprintf(f, "metrics=%s\n", tqkvd_metrics_bound(s));
    if (fclose(f) != 0 || rename(tmp, s->cfg.ready_file) != 0)
        return TQKV_EIO;
    return 0;
}

int tqkvd_server_init(tqkvd_server *s, tqkvd_config *cfg)
{
    memset(s, 0, sizeof *s);
    s->nsreg_fd = -1;
    s->cfg = *cfg; /* takes the strings */
    memset(cfg, 0, sizeof *cfg);
    s->started_ns = tqkv_now_ns();
    tqkv_log_set_level((tqkv_log_level)s->cfg.log_level);

    /* The worker pool's size is read by libuv when it first queues work. */
    char n[16];
    snprintf(n, sizeof n, "%d", (int)s->cfg.workers);
    setenv("UV_THREADPOOL_SIZE", n, 1);

    int r = tqkvd_codec_select((int)s->cfg.encode_device);
    if (r) {
        TQKV_LOGE(MOD, "msg=\"encode_device unavailable\" encode_device=%s",
                  s->cfg.encode_device == TQKVD_ENC_CUDA ? "cuda" : "?");
        return r;
    }

    tqkv_store_config sc;
    memset(&sc, 0, sizeof sc);
    sc.host_capacity = (uint64_t)s->cfg.host_capacity;
    /* Room to grow the capacity at run time up to physical memory. */
    uint64_t mem = tqkvd_mem_total();
    sc.host_max_capacity = sc.host_capacity > mem ? sc.host_capacity : mem;
    r = tqkv_store_create(&sc, &s->store);
    if (r) {
        TQKV_LOGE(MOD, "msg=\"cannot create the store\" host_capacity=%lld err=%s",
                  (long long)s->cfg.host_capacity, tqkv_err_name(r));
        return r;
    }

    s->loop = tqkv_malloc(sizeof *s->loop);
    if (!s->loop)
        return TQKV_ENOMEM;
    uv_loop_init(s->loop);
    uv_timer_init(s->loop, &s->shutdown_timer);
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_pipe);
    s->sig_term.data = s->sig_int.data = s->sig_pipe.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_pipe, on_signal, SIGPIPE);

    /* Lower tiers and the namespaces registered before a restart, before anyone can connect. */
    if ((r = tqkvd_lower_open(s)) != 0)
        return r;

    if (!s->cfg.unix_socket[0] && !s->cfg.tcp[0]) {
        TQKV_LOGE(MOD, "msg=\"no listener configured (unix_socket and tcp both empty)\"");
        return TQKV_EBADCONFIG;
    }
    if (s->cfg.unix_socket[0] && (r = listen_unix(s)) != 0)
        return r;
    if (s->cfg.tcp[0] && (r = listen_tcp(s)) != 0)
        return r;
    if (s->unix_on)
        TQKV_LOGI(MOD, "msg=\"listening\" unix=%s", s->cfg.unix_socket);
    if (s->tcp_on)
        TQKV_LOGI(MOD, "msg=\"listening\" tcp=%s auth=%s", s->tcp_bound,
                  s->cfg.token[0] ? "token" : "none");
    if ((r = tqkvd_metrics_start(s)) != 0)
        return r;
    TQKV_LOGI(MOD, "msg=\"ready\" version=%s host_capacity=%lld workers=%lld encoder=%s",
              TQKVD_VERSION, (long long)s->cfg.host_capacity, (long long)s->cfg.workers,
              tqkvd_codec_name());
    if ((r = tqkvd_cluster_start(s)) != 0)
        return r;
    if ((r = write_ready_file(s)) != 0) {
        TQKV_LOGE(MOD, "msg=\"cannot write ready file\" file=%s", s->cfg.ready_file);
        return r;
    }
    return 0;
}

int tqkvd_server_run(tqkvd_server *s)
{
    uv_run(s->loop, UV_RUN_DEFAULT);
    return s->exit_code;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void tqkvd_server_close(tqkvd_server *s)
{
    if (s->loop) {
        /* An init failure: the store's tiers close their handles themselves, first. */
        destroy_store(s);
        tqkvd_metrics_stop(s); /* the HTTP thread first: it wakes the loop */
        /* Anything still open (an init failure, a second signal) is closed here. */
        uv_walk(s->loop, close_walk, NULL);
        uv_run(s->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(s->loop) != 0)
            TQKV_LOGW(MOD, "msg=\"loop closed with handles left\"");
        tqkv_free(s->loop);
        s->loop = NULL;
    }
    if (s->cfg.ready_file && s->cfg.ready_file[0])
        unlink(s->cfg.ready_file);
    /* Requests hold store references; after a forced exit some may be left, so only destroy
     * the store when every request is gone. */
    destroy_store(s); /* created before the loop */
    tqkvd_cluster_free(s);
    tqkvd_metrics_free(s);
    s->store = NULL;
    tqkvd_lower_close(s);
    tqkvd_config_free(&s->cfg);
}
