/* tqkvd_harness: start and stop a real tqkvd for integration tests (see tqkvd_harness.h). */
#include "tqkvd_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TQKVD_PATH
#define TQKVD_PATH "tqkvd"
#endif

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void tqkvd_harness_dump_log(const tqkvd_harness *h)
{
    FILE *f = fopen(h->log_path, "r");
    if (!f)
        return;
    char line[1024];
    fprintf(stderr, "---- tqkvd log ----\n");
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "---- end of tqkvd log ----\n");
    fclose(f);
}

/* Reads "tcp=127.0.0.1:PORT" from the ready file. @return 1 when ready, 0 not yet. */
static int read_ready(tqkvd_harness *h, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    int ok = 0;
    while (fgets(line, sizeof line, f)) {
        const char *colon;
        if (strncmp(line, "tcp=", 4) == 0 && (colon = strrchr(line, ':')) != NULL) {
            h->tcp_port = (uint16_t)atoi(colon + 1);
            ok = 1;
        }
        if (strncmp(line, "metrics=", 8) == 0 && (colon = strrchr(line, ':')) != NULL)
            h->metrics_port = (uint16_t)atoi(colon + 1);
    }
    fclose(f);
    return ok;
}

int tqkvd_harness_start(tqkvd_harness *h, const char *const *args)
{
    memset(h, 0, sizeof *h);
    h->pid = -1;
    snprintf(h->dir, sizeof h->dir, "/tmp/tqkvd-test-XXXXXX");
    if (!mkdtemp(h->dir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(h->unix_path, sizeof h->unix_path, "%s/tqkvd.sock", h->dir);
    snprintf(h->unix_url, sizeof h->unix_url, "unix://%s", h->unix_path);
    snprintf(h->log_path, sizeof h->log_path, "%s/tqkvd.log", h->dir);
    char ready[192];
    snprintf(ready, sizeof ready, "%s/ready", h->dir);

    const char *bin = getenv("TQKVD");
    if (!bin || !*bin)
        bin = TQKVD_PATH;
    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--unix-socket";
    argv[n++] = h->unix_path;
    argv[n++] = "--tcp";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--ready-file";
    argv[n++] = ready;
    int has_capacity = 0, has_metrics = 0;
    for (int i = 0; args && args[i]; i++) {
        if (strncmp(args[i], "--host-capacity", 15) == 0)
            has_capacity = 1;
        if (strncmp(args[i], "--metrics", 9) == 0)
            has_metrics = 1;
    }
    if (!has_capacity) {
        argv[n++] = "--host-capacity";
        argv[n++] = "64M";
    }
    if (!has_metrics) { /* tests run side by side: no fixed port */
        argv[n++] = "--metrics";
        argv[n++] = "";
    }
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        int fd = open(h->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    h->pid = pid;
    for (int waited = 0; waited < 10000; waited += 10) {
        if (read_ready(h, ready))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "tqkvd exited during start-up (status 0x%x)\n", st);
            h->pid = -1;
            tqkvd_harness_dump_log(h);
            tqkvd_harness_stop(h); /* removes the temp directory */
            return -1;
        }
        sleep_ms(10);
    }
    fprintf(stderr, "tqkvd not ready after 10 s\n");
    tqkvd_harness_dump_log(h);
    tqkvd_harness_stop(h);
    return -1;
}

int tqkvd_harness_alive(tqkvd_harness *h)
{
    if (h->pid <= 0)
        return 0;
    int st;
    pid_t r = waitpid(h->pid, &st, WNOHANG);
    if (r == h->pid) {
        h->pid = -1;
        return 0;
    }
    return r == 0;
}

static void remove_dir(const char *dir)
{
    static const char *const names[] = {"tqkvd.sock", "ready", "tqkvd.log", "tqkvd.conf", NULL};
    char p[256];
    for (int i = 0; names[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int tqkvd_harness_stop(tqkvd_harness *h)
{
    int result = -1;
    if (h->pid > 0) {
        kill(h->pid, SIGTERM);
        int st = 0;
        pid_t r = 0;
        for (int waited = 0; waited < 10000 && (r = waitpid(h->pid, &st, WNOHANG)) == 0;
             waited += 10)
            sleep_ms(10);
        if (r == 0) {
            fprintf(stderr, "tqkvd did not exit 10 s after SIGTERM; killing it\n");
            kill(h->pid, SIGKILL);
            waitpid(h->pid, &st, 0);
        }
        if (WIFEXITED(st))
            result = WEXITSTATUS(st);
        else if (WIFSIGNALED(st))
            result = 128 + WTERMSIG(st);
        if (result != 0)
            tqkvd_harness_dump_log(h);
        h->pid = -1;
    }
    if (h->dir[0]) {
        remove_dir(h->dir);
        h->dir[0] = 0;
    }
    return result;
}

int tqkvd_harness_connect_unix(const tqkvd_harness *h)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strlen(h->unix_path);
    if (n >= sizeof a.sun_path) {
        close(fd);
        return -1;
    }
    memcpy(a.sun_path, h->unix_path, n + 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int tqkvd_harness_connect_tcp(const tqkvd_harness *h)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(h->tcp_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}
