/* redis-server processes for tests: see redis_harness.h. Servers run in the foreground as our
 * children (so we can signal and reap them), log to a file in their temp dir, never persist, and
 * listen on 127.0.0.1 only. */
#include "redis_harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t live[64];
static int hooked;

static void kill_all(void)
{
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
        if (live[i] > 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
    }
}

static void track(pid_t pid, int add)
{
    if (!hooked) {
        atexit(kill_all);
        hooked = 1;
    }
    for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
        if (add ? live[i] == 0 : live[i] == pid) {
            live[i] = add ? pid : 0;
            return;
        }
    }
}

static int on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    char buf[1024];
    while (*path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && n + strlen(prog) + 2 < sizeof(buf)) {
            memcpy(buf, path, n);
            buf[n] = '/';
            strcpy(buf + n + 1, prog);
            if (access(buf, X_OK) == 0) return 1;
        }
        path += n + (path[n] == ':');
    }
    return 0;
}

int tqkv_test_redis_available(void)
{
    return on_path("redis-server") && on_path("redis-cli");
}

static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static int random_port(void)
{
    static int seeded;
    if (!seeded) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        srand((unsigned)(tv.tv_usec ^ (getpid() << 8)));
        seeded = 1;
    }
    /* The cluster bus listens on port + 10000: keep both below 65536 and free. Both also stay
     * below the kernel's ephemeral range when it leaves room: a server that a test kills and
     * restarts on its port leaves that port free meanwhile, and any outgoing connection on the
     * machine (other tests' clients, cluster buses) could otherwise be given it as its local
     * port, so that the restart fails. */
    int lo = 20000, span = 30000, eph_lo = 32768, eph_hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &eph_lo, &eph_hi) != 2) eph_lo = 32768;
        fclose(f);
    }
    if (eph_lo - 10000 - 10000 >= 2000) {
        lo = 10000;
        span = eph_lo - 10000 - lo;
    }
    for (int i = 0; i < 200; i++) {
        int p = lo + rand() % span;
        if (port_free(p) && port_free(p + 10000)) return p;
    }
    return -1;
}

static pid_t spawn(char *const *argv, const char *log)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static redisContext *connect_port(int port, const char *password)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){10, 0});
    if (password) {
        redisReply *r = redisCommand(c, "AUTH %s", password);
        if (r) freeReplyObject(r);
    }
    return c;
}

redisReply *tqkv_test_redis_cmd(int port, const char *password, const char *fmt, ...)
{
    redisContext *c = connect_port(port, password);
    if (!c) return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

redisReply *tqkv_test_redis_cmd_argv(int port, const char *password, int argc, const char **argv,
                                     const size_t *lens)
{
    redisContext *c = connect_port(port, password);
    if (!c) return NULL;
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    redisFree(c);
    return r;
}

/* Copies the end of redis-server's log to stderr: why it did not start (port taken, ...). */
static void dump_log_tail(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    char buf[2048];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "redis harness: redis-server exited; end of %s:\n%s\n", path, buf);
}

static int launch(tqkv_test_redis *s)
{
    char port[16], log[160];
    snprintf(port, sizeof(port), "%d", s->port);
    snprintf(log, sizeof(log), "%s/redis.log", s->dir);
    char *argv[TQKV_TEST_REDIS_MAX_ARGS + 16];
    int a = 0;
    argv[a++] = "redis-server";
    argv[a++] = "--port";
    argv[a++] = port;
    argv[a++] = "--bind";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--dir";
    argv[a++] = s->dir;
    argv[a++] = "--save";
    argv[a++] = "";
    argv[a++] = "--appendonly";
    argv[a++] = "no";
    for (int i = 0; i < s->n_args; i++)
        argv[a++] = (char *)s->args[i];
    argv[a] = NULL;
    s->pid = spawn(argv, log);
    if (s->pid < 0) {
        s->pid = 0;
        return -1;
    }
    track(s->pid, 1);
    for (int i = 0; i < 500; i++) { /* up to ~10 s on a loaded machine */
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            track(s->pid, 0);
            s->pid = 0;
            dump_log_tail(log);
            return -1; /* exited: port taken meanwhile, or bad arguments */
        }
        redisContext *c = connect_port(s->port, NULL);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            redisFree(c);
            if (r) { /* PONG, or NOAUTH: either way it serves */
                freeReplyObject(r);
                return 0;
            }
        }
        sleep_ms(20);
    }
    tqkv_test_redis_kill(s);
    return -1;
}

int tqkv_test_redis_start(tqkv_test_redis *s, const char *const *args)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; args && args[i] && i < TQKV_TEST_REDIS_MAX_ARGS; i++) {
        s->args[s->n_args++] = args[i];
        if (strcmp(args[i], "--requirepass") == 0 && args[i + 1]) s->password = args[i + 1];
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof(s->dir), "%s/tqkv-redis-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(s->dir)) {
        fprintf(stderr, "redis harness: mkdtemp: %s\n", strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = random_port();
        if (s->port > 0 && launch(s) == 0) return 0;
    }
    fprintf(stderr, "redis harness: cannot start redis-server (see %s/redis.log)\n", s->dir);
    return -1;
}

int tqkv_test_redis_restart(tqkv_test_redis *s)
{
    if (s->pid) tqkv_test_redis_kill(s);
    return launch(s);
}

void tqkv_test_redis_signal(tqkv_test_redis *s, int sig)
{
    if (s->pid > 0) kill(s->pid, sig);
}

void tqkv_test_redis_kill(tqkv_test_redis *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        track(s->pid, 0);
        s->pid = 0;
    }
}

void tqkv_test_redis_stop(tqkv_test_redis *s)
{
    tqkv_test_redis_kill(s);
    if (s->dir[0]) {
        DIR *d = opendir(s->dir);
        if (d) {
            struct dirent *e;
            char path[512];
            while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                snprintf(path, sizeof(path), "%s/%s", s->dir, e->d_name);
                unlink(path);
            }
            closedir(d);
        }
        rmdir(s->dir);
        s->dir[0] = '\0';
    }
}

static int cluster_ok(int port)
{
    redisReply *r = tqkv_test_redis_cmd(port, NULL, "CLUSTER INFO");
    int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok") != NULL;
    if (r) freeReplyObject(r);
    return ok;
}

int tqkv_test_redis_cluster_start(tqkv_test_redis_cluster *c, int n)
{
    return tqkv_test_redis_cluster_start_replicas(c, n, 0);
}

int tqkv_test_redis_cluster_start_replicas(tqkv_test_redis_cluster *c, int masters, int replicas)
{
    int n = masters * (1 + replicas);
    static const char *const args[] = {"--cluster-enabled",
                                       "yes",
                                       "--cluster-config-file",
                                       "nodes.conf",
                                       "--cluster-node-timeout",
                                       "5000",
                                       NULL};
    memset(c, 0, sizeof(*c));
    if (masters < 3 || replicas < 0 || n > TQKV_TEST_REDIS_MAX_NODES) return -1;
    for (int i = 0; i < n; i++) {
        c->n = i + 1;
        if (tqkv_test_redis_start(&c->node[i], args) < 0) goto fail;
    }
    char addr[TQKV_TEST_REDIS_MAX_NODES][32];
    char *argv[TQKV_TEST_REDIS_MAX_NODES + 8];
    int a = 0;
    argv[a++] = "redis-cli";
    argv[a++] = "--cluster";
    argv[a++] = "create";
    for (int i = 0; i < n; i++) {
        snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", c->node[i].port);
        argv[a++] = addr[i];
    }
    char nrep[16];
    snprintf(nrep, sizeof(nrep), "%d", replicas);
    argv[a++] = "--cluster-replicas";
    argv[a++] = nrep;
    argv[a++] = "--cluster-yes";
    argv[a] = NULL;
    char log[160];
    snprintf(log, sizeof(log), "%s/cluster-create.log", c->node[0].dir);
    pid_t pid = spawn(argv, log);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "redis harness: redis-cli --cluster create failed (see %s)\n", log);
        goto fail;
    }
    if (tqkv_test_redis_cluster_wait(c) == 0) return 0;
fail:
    tqkv_test_redis_cluster_stop(c);
    return -1;
}

int tqkv_test_redis_cluster_wait(tqkv_test_redis_cluster *c)
{
    for (int t = 0; t < 1000; t++) { /* up to ~20 s: gossip converges in a second or two */
        int ok = 1;
        for (int i = 0; i < c->n && ok; i++)
            ok = cluster_ok(c->node[i].port);
        if (ok) return 0;
        sleep_ms(20);
    }
    fprintf(stderr, "redis harness: cluster did not reach cluster_state:ok\n");
    return -1;
}

void tqkv_test_redis_cluster_stop(tqkv_test_redis_cluster *c)
{
    for (int i = 0; i < c->n; i++)
        tqkv_test_redis_stop(&c->node[i]);
    c->n = 0;
}

int tqkv_test_redis_cluster_owner(tqkv_test_redis_cluster *c, int slot)
{
    return tqkv_test_redis_cluster_owner_on(c, 0, slot);
}

int tqkv_test_redis_cluster_owner_on(tqkv_test_redis_cluster *c, int on, int slot)
{
    redisReply *r = tqkv_test_redis_cmd(c->node[on].port, NULL, "CLUSTER SLOTS");
    int owner = -1;
    if (!r || r->type != REDIS_REPLY_ARRAY) goto out;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->elements < 3 || slot < e->element[0]->integer || slot > e->element[1]->integer)
            continue;
        long long port = e->element[2]->element[1]->integer;
        for (int k = 0; k < c->n; k++)
            if (c->node[k].port == port) owner = k;
    }
out:
    if (r) freeReplyObject(r);
    return owner;
}

int tqkv_test_redis_cluster_id(tqkv_test_redis_cluster *c, int i, char id[41])
{
    redisReply *r = tqkv_test_redis_cmd(c->node[i].port, NULL, "CLUSTER MYID");
    int rc = -1;
    if (r && r->type == REDIS_REPLY_STRING && r->len == 40) {
        memcpy(id, r->str, 41);
        rc = 0;
    }
    if (r) freeReplyObject(r);
    return rc;
}

static void wake(uv_timer_t *t)
{
    (void)t; /* only there so that UV_RUN_ONCE returns regularly */
}

static int loop_until(uv_loop_t *loop, const int *counter, double max_s)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, wake, 5, 5);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = -1;
    for (;;) {
        if (counter && *counter <= 0) {
            rc = 0;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9 > max_s)
            break;
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return rc;
}

int tqkv_test_loop_wait(uv_loop_t *loop, const int *counter, double max_s)
{
    return loop_until(loop, counter, max_s);
}

void tqkv_test_loop_for(uv_loop_t *loop, int ms)
{
    loop_until(loop, NULL, ms / 1000.0);
}
