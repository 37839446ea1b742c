/* Benchmark of the SSD engine against dd on the same disk, in the same run: sequential write and
 * read throughput of 1-16 MiB records (engine with O_DIRECT vs `dd oflag=direct` / `iflag=direct`
 * with the same block size), and start-up recovery time (index rebuilt by scanning) for 100K
 * small records (4-16 KiB).
 * Prints one JSON object per line on stdout.
 *
 *   ssd_bench [--dir DIR] [--total-mb N] [--sizes-mb 1,4,16] [--recovery-records N]
 *             [--io-threads N]
 *
 * DIR (default: a new directory under the current one) must be on the disk to measure; it is
 * removed at the end. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tqkv_log.h"
#include "tqkv_ssd.h"
#include "tqkv_time.h"

/* Engine operations in flight: enough for 64 MiB, at least 8 (an event loop feeding the engine
 * keeps many requests outstanding; dd is synchronous, one block at a time). */
static uint32_t qd_for(size_t size)
{
    size_t q = (64u << 20) / (size ? size : 1);
    return q < 8 ? 8 : (uint32_t)q;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = splitmix(&seed);
        memcpy(p + i, &v, 8);
    }
}

static void make_key(uint32_t tag, uint32_t i, uint8_t key[32])
{
    uint64_t s = ((uint64_t)tag << 32) | i;
    for (int k = 0; k < 4; k++) {
        uint64_t v = splitmix(&s);
        memcpy(key + 8 * k, &v, 8);
    }
}

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static double run_cmd(const char *cmd)
{
    double t0 = tqkv_now_s();
    int rc = system(cmd);
    double dt = tqkv_now_s() - t0;
    if (rc != 0) {
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
        return -1;
    }
    return dt;
}

static void emit(const char *test, const char *impl, size_t rec_bytes, uint64_t bytes,
                 double seconds, const char *extra)
{
    printf("{\"bench\":\"ssd\",\"test\":\"%s\",\"impl\":\"%s\",\"record_bytes\":%zu,"
           "\"bytes\":%llu,\"seconds\":%.4f,\"gbps\":%.3f%s%s}\n",
           test, impl, rec_bytes, (unsigned long long)bytes, seconds,
           seconds > 0 ? (double)bytes / seconds / 1e9 : 0.0, extra ? "," : "", extra ? extra : "");
    fflush(stdout);
}

typedef struct {
    int pending;
    int errors;
} ctr_t;

static void on_done(void *arg, int status)
{
    ctr_t *c = arg;
    c->pending--;
    if (status != 0) c->errors++;
}

static void on_got(void *arg, int status, void *data, size_t len)
{
    (void)data;
    (void)len;
    ctr_t *c = arg;
    c->pending--;
    if (status != TQKV_SSD_HIT) c->errors++;
}

static uint32_t g_io_threads;

static void open_opts(tqkv_ssd_options *o, const char *dir, tqkv_ssd_fsync fs, uint64_t cap)
{
    tqkv_ssd_options_init(o);
    o->dir = dir;
    o->capacity = cap;
    o->segment_bytes = 256ull << 20;
    o->direct_io = 1;
    o->fsync = fs;
    o->batch_bytes = 8u << 20;
    o->io_threads = g_io_threads;
}

/* Writes n records of `size` bytes; @return seconds (first put to last completion), -1 on
 * error. */
static double engine_write(tqkv_ssd *ssd, uint32_t tag, uint32_t n, uint8_t **bufs, size_t size)
{
    ctr_t c = {0};
    int qd = (int)qd_for(size);
    double t0 = tqkv_now_s();
    for (uint32_t i = 0; i < n; i++) {
        while (c.pending >= qd)
            tqkv_ssd_wait(ssd, 1000);
        uint8_t key[32];
        make_key(tag, i, key);
        if (tqkv_ssd_put(ssd, 1, key, bufs[i % 4], size, on_done, &c) != 0) return -1;
        c.pending++;
    }
    while (c.pending > 0)
        tqkv_ssd_wait(ssd, 1000);
    double dt = tqkv_now_s() - t0;
    return c.errors ? -1 : dt;
}

static double engine_read(tqkv_ssd *ssd, uint32_t tag, uint32_t n, size_t size)
{
    ctr_t c = {0};
    int qd = (int)qd_for(size);
    double t0 = tqkv_now_s();
    for (uint32_t i = 0; i < n; i++) {
        while (c.pending >= qd)
            tqkv_ssd_wait(ssd, 1000);
        uint8_t key[32];
        make_key(tag, i, key);
        if (tqkv_ssd_get(ssd, 1, key, NULL, NULL, on_got, &c) != 0) return -1;
        c.pending++;
    }
    while (c.pending > 0)
        tqkv_ssd_wait(ssd, 1000);
    double dt = tqkv_now_s() - t0;
    return c.errors ? -1 : dt;
}

/* Syncs and drops the page cache of every file in dir (posix_fadvise DONTNEED), so the next
 * open reads the segments from the disk. */
static void drop_cache(const char *dir)
{
    for (uint32_t id = 1; id < 100000; id++) {
        char p[8192];
        snprintf(p, sizeof(p), "%s/seg-%06u.tqs", dir, id);
        int fd = open(p, O_RDONLY);
        if (fd < 0) {
            if (id > 10000) break;
            continue;
        }
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

int main(int argc, char **argv)
{
    const char *dir_arg = NULL;
    uint64_t total_mb = 1024;
    const char *sizes = "1,4,16";
    uint32_t rec_records = 100000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir_arg = argv[++i];
        else if (!strcmp(argv[i], "--total-mb") && i + 1 < argc)
            total_mb = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--sizes-mb") && i + 1 < argc)
            sizes = argv[++i];
        else if (!strcmp(argv[i], "--io-threads") && i + 1 < argc)
            g_io_threads = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--recovery-records") && i + 1 < argc)
            rec_records = (uint32_t)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr,
                    "usage: %s [--dir DIR] [--total-mb N] [--sizes-mb 1,4,16] "
                    "[--recovery-records N] [--io-threads N]\n",
                    argv[0]);
            return 2;
        }
    }
    tqkv_log_set_level(TQKV_LOG_WARN);
    char dir[4096];
    if (dir_arg) {
        snprintf(dir, sizeof(dir), "%s/ssd-bench-%d", dir_arg, (int)getpid());
    } else {
        char cwd[2048];
        if (!getcwd(cwd, sizeof(cwd))) return 1;
        snprintf(dir, sizeof(dir), "%s/ssd-bench-%d", cwd, (int)getpid());
    }
    if (mkdir(dir, 0755) != 0) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char engdir[4200], ddfile[4200], cmd[9000];
    snprintf(engdir, sizeof(engdir), "%s/engine", dir);
    snprintf(ddfile, sizeof(ddfile), "%s/dd.bin", dir);

    size_t maxsz = 0;
    {
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%s", sizes);
        for (char *t = strtok(tmp, ","); t; t = strtok(NULL, ","))
            if ((size_t)atoi(t) << 20 > maxsz) maxsz = (size_t)atoi(t) << 20;
    }
    uint8_t *bufs[4];
    for (int b = 0; b < 4; b++) {
        bufs[b] = malloc(maxsz ? maxsz : 1);
        fill_random(bufs[b], maxsz, 1234 + (uint64_t)b);
    }

    int rc = 0;
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s", sizes);
    for (char *t = strtok(tmp, ","); t && rc == 0; t = strtok(NULL, ",")) {
        size_t size = (size_t)atoi(t) << 20;
        uint32_t n = (uint32_t)((total_mb << 20) / size);
        uint64_t bytes = (uint64_t)n * size;
        char extra[128];
        snprintf(extra, sizeof(extra), "\"records\":%u", n);

        /* dd with direct I/O, the same block size, the same directory. */
        snprintf(cmd, sizeof(cmd),
                 "dd if=/dev/zero of='%s' bs=%zu count=%u oflag=direct "
                 "status=none",
                 ddfile, size, n);
        double w_dd = run_cmd(cmd);
        snprintf(cmd, sizeof(cmd), "dd if='%s' of=/dev/null bs=%zu iflag=direct status=none",
                 ddfile, size);
        double r_dd = run_cmd(cmd);
        unlink(ddfile);
        /* The durable baseline for fsync=always: every block synchronised (dsync). */
        snprintf(cmd, sizeof(cmd),
                 "dd if=/dev/zero of='%s' bs=%zu count=%u oflag=direct,dsync "
                 "status=none",
                 ddfile, size, n);
        double w_dds = run_cmd(cmd);
        unlink(ddfile);
        if (w_dd < 0 || r_dd < 0 || w_dds < 0) {
            rc = 1;
            break;
        }
        emit("write", "dd_oflag_direct", size, bytes, w_dd, extra);
        emit("write", "dd_oflag_direct_dsync", size, bytes, w_dds, extra);
        emit("read", "dd_iflag_direct", size, bytes, r_dd, extra);

        /* The engine, O_DIRECT, fsync=none (what dd does), then fsync=always (group commit). */
        tqkv_ssd_fsync pol[2] = {TQKV_SSD_FSYNC_NONE, TQKV_SSD_FSYNC_ALWAYS};
        const char *pname[2] = {"tqkv_ssd_direct_fsync_none", "tqkv_ssd_direct_fsync_always"};
        for (int k = 0; k < 2 && rc == 0; k++) {
            tqkv_ssd_options o;
            open_opts(&o, engdir, pol[k], bytes * 2 + (2048ull << 20));
            tqkv_ssd *ssd = NULL;
            if (tqkv_ssd_open(&o, &ssd) != 0) {
                rc = 1;
                break;
            }
            double w = engine_write(ssd, (uint32_t)k, n, bufs, size);
            double r = k == 0 ? engine_read(ssd, (uint32_t)k, n, size) : 0;
            tqkv_ssd_stats st;
            tqkv_ssd_stats_get(ssd, &st);
            tqkv_ssd_close(ssd);
            rm_rf(engdir);
            if (w < 0 || r < 0) {
                fprintf(stderr, "engine run failed\n");
                rc = 1;
                break;
            }
            char ex2[256];
            /* fsync=none is compared with plain direct dd, fsync=always with dd dsync. */
            snprintf(ex2, sizeof(ex2),
                     "\"records\":%u,\"in_flight\":%u,\"syncs\":%llu,\"vs_dd\":%.3f", n,
                     qd_for(size), (unsigned long long)st.syncs, (k == 0 ? w_dd : w_dds) / w);
            emit("write", pname[k], size, bytes, w, ex2);
            if (k == 0) {
                snprintf(ex2, sizeof(ex2), "\"records\":%u,\"in_flight\":%u,\"vs_dd\":%.3f", n,
                         qd_for(size), r_dd / r);
                emit("read", pname[k], size, bytes, r, ex2);
            }
        }
    }

    /* Recovery: rec_records records of 4-16 KiB (random sizes, incompressible). */
    if (rc == 0 && rec_records) {
        tqkv_ssd_options o;
        open_opts(&o, engdir, TQKV_SSD_FSYNC_NONE, 64ull << 30);
        tqkv_ssd *ssd = NULL;
        if (tqkv_ssd_open(&o, &ssd) != 0) return 1;
        ctr_t c = {0};
        uint64_t seed = 99, bytes = 0;
        double t0 = tqkv_now_s();
        for (uint32_t i = 0; i < rec_records; i++) {
            while (c.pending >= 256)
                tqkv_ssd_wait(ssd, 1000);
            size_t len = 4096 + (size_t)(splitmix(&seed) % (12 * 1024 + 1));
            uint8_t key[32];
            make_key(9, i, key);
            size_t off = (size_t)(splitmix(&seed) % (maxsz - len));
            tqkv_ssd_put(ssd, 1, key, bufs[i % 4] + off, len, on_done, &c);
            c.pending++;
            bytes += len;
        }
        while (c.pending > 0)
            tqkv_ssd_wait(ssd, 1000);
        double wt = tqkv_now_s() - t0;
        tqkv_ssd_close(ssd);
        char extra[128];
        snprintf(extra, sizeof(extra), "\"records\":%u,\"errors\":%d", rec_records, c.errors);
        emit("write_small", "tqkv_ssd_direct_fsync_none", 0, bytes, wt, extra);

        /* The scan reads with O_DIRECT where the file system allows it, so it never runs from
         * the page cache; the cache is dropped anyway (buffered fallback) and the open timed
         * twice. */
        const char *mode[2] = {"after_cache_drop", "repeat"};
        for (int k = 0; k < 2; k++) {
            if (k == 0) drop_cache(engdir);
            double t1 = tqkv_now_s();
            if (tqkv_ssd_open(&o, &ssd) != 0) return 1;
            double dt = tqkv_now_s() - t1;
            tqkv_ssd_stats st;
            tqkv_ssd_stats_get(ssd, &st);
            tqkv_ssd_close(ssd);
            printf("{\"bench\":\"ssd\",\"test\":\"recovery\",\"mode\":\"%s\",\"records\":%llu,"
                   "\"segments\":%llu,\"bytes\":%llu,\"seconds\":%.4f}\n",
                   mode[k], (unsigned long long)st.records, (unsigned long long)st.segments,
                   (unsigned long long)st.used, dt);
            fflush(stdout);
        }
        rm_rf(engdir);
    }
    for (int b = 0; b < 4; b++)
        free(bufs[b]);
    rm_rf(dir);
    return rc;
}
