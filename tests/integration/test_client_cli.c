/* Integration tests of the tqkv CLI against a real tqkvd: each case runs the binary as an
 * operator would and checks its exit code and its output (--json where the output is parsed):
 * status, register, put of a block file, get -o, lookup, delete, config, clear, bench, and the
 * exit codes of a usage error (2), a refused operation (1) and an unreachable daemon (3). */
#include <stdarg.h>
#include <sys/wait.h>

#include "test_client_util.h"
#include "tqkv_test.h"

static tqkvd_harness daemon_h;
static char tmpdir[64];

/* Runs `tqkv ARGS` (a shell-quoted string); stdout into out (NUL-terminated, truncated to cap).
 * @return the exit code, or -1. */
static int cli(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int cli(char *out, size_t cap, const char *fmt, ...)
{
    char args[1024], cmd[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "%s --url %s %s 2>>%s/stderr", TQKV_CLI_PATH, daemon_h.unix_url,
             args, tmpdir);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_status_json(void)
{
    char out[8192];
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json status"), 0);
    ASSERT_TRUE(strstr(out, "\"status\":\"ok\"") != NULL);
    ASSERT_TRUE(strstr(out, "\"server_version\":") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "status"), 0);
    ASSERT_TRUE(strstr(out, "tier.host.capacity") != NULL);
}

static void test_put_get_lookup_delete(void)
{
    char out[8192], path[128], back[128], hex[2 * TQKV_KEY_BYTES + 1];
    ASSERT_EQ_INT(cli(out, sizeof(out),
                      "register --ns cli --layers %d --heads %d --head-dim %d --preset tq4 "
                      "--chunk-size %d",
                      TC_LAYERS, TC_HEADS, TC_HEAD_DIM, TC_TOKENS),
                  0);
    tc_geom g = tc_geom_small("tq4");
    tqkv_key key = tc_key(1, 60);
    uint16_t *raw = tc_make_raw(&g, g.tokens, 61);
    size_t len = 0;
    void *blk = tc_encode(&g, &key, raw, g.tokens, &len);
    ASSERT_TRUE(blk != NULL);
    snprintf(path, sizeof(path), "%s/block.tqb", tmpdir);
    snprintf(back, sizeof(back), "%s/back.tqb", tmpdir);
    FILE *f = fopen(path, "wb");
    ASSERT_TRUE(f && fwrite(blk, 1, len, f) == len);
    fclose(f);
    tqkv_key_hex(&key, hex);

    ASSERT_EQ_INT(cli(out, sizeof(out), "--json put --ns cli %s", path), 0);
    ASSERT_TRUE(strstr(out, "\"stored\":1") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json lookup --ns cli %s", hex), 0);
    ASSERT_TRUE(strstr(out, "\"hits\":1") != NULL);
    ASSERT_TRUE(strstr(out, "\"host\"") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "get --ns cli %s -o %s", hex, back), 0);
    size_t blen = 0;
    f = fopen(back, "rb");
    ASSERT_TRUE(f != NULL);
    uint8_t *got = malloc(len + 16);
    blen = fread(got, 1, len + 16, f);
    fclose(f);
    ASSERT_EQ_U64(blen, len);
    ASSERT_MEM_EQ(got, blk, len);
    ASSERT_EQ_INT(cli(out, sizeof(out), "pin --ns cli %s", hex), 0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "unpin --ns cli %s", hex), 0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json delete --ns cli %s", hex), 0);
    ASSERT_TRUE(strstr(out, "\"result\":\"ok\"") != NULL);
    /* a miss is exit code 1 for get, and a 0-hit answer for lookup */
    ASSERT_EQ_INT(cli(out, sizeof(out), "get --ns cli %s -o %s", hex, back), 1);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json lookup --ns cli %s", hex), 0);
    ASSERT_TRUE(strstr(out, "\"hits\":0") != NULL);
    /* a raw put of the same KV under the same key: the daemon encodes it to the same block */
    snprintf(path, sizeof(path), "%s/raw.kv", tmpdir);
    f = fopen(path, "wb");
    ASSERT_TRUE(f && fwrite(raw, 1, tc_raw_len(&g, g.tokens), f) == tc_raw_len(&g, g.tokens));
    fclose(f);
    ASSERT_EQ_INT(cli(out, sizeof(out), "put --ns cli --raw --key %s --tokens-in-chunk %d %s", hex,
                      TC_TOKENS, path),
                  0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "get --ns cli %s -o %s", hex, back), 0);
    f = fopen(back, "rb");
    ASSERT_TRUE(f != NULL);
    blen = fread(got, 1, len + 16, f);
    fclose(f);
    ASSERT_EQ_U64(blen, len);
    ASSERT_MEM_EQ(got, blk, len);
    free(got);
    free(blk);
    free(raw);
}

/* Keys computed by the library for a token sequence are the keys the CLI computes from a token
 * file: store the first two chunks, then `lookup --tokens` must find exactly those two. */
static void test_lookup_from_token_file(void)
{
    char out[8192], path[128];
    uint32_t toks[3 * TC_TOKENS];
    for (uint32_t i = 0; i < 3 * TC_TOKENS; i++)
        toks[i] = 1000 + 17 * i;
    tqkv_key keys[3];
    size_t n = 0;
    ASSERT_OK(tqkv_chunk_keys("cli-tok", toks, 3 * TC_TOKENS, TC_TOKENS, 0, NULL, keys, 3, &n));
    ASSERT_EQ_INT(n, 3);
    tqkv_client *c = tc_connect(daemon_h.unix_url, NULL);
    ASSERT_TRUE(c != NULL);
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(c, "cli-tok", &g));
    uint16_t *raw = tc_make_raw(&g, g.tokens, 5);
    for (int i = 0; i < 2; i++) {
        tqkv_put_item it = {.key = keys[i], .data = raw, .len = tc_raw_len(&g, g.tokens),
                            .n_tokens = g.tokens};
        ASSERT_OK(tqkv_put_raw(c, "cli-tok", &it, 1, NULL));
    }
    free(raw);
    tqkv_close(c);
    snprintf(path, sizeof(path), "%s/tokens.txt", tmpdir);
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f != NULL);
    for (uint32_t i = 0; i < 3 * TC_TOKENS; i++)
        fprintf(f, "%u%c", toks[i], i % 10 == 9 ? '\n' : ' ');
    fclose(f);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json lookup --ns cli-tok --tokens %s --chunk-size %d",
                      path, TC_TOKENS),
                  0);
    ASSERT_TRUE(strstr(out, "\"keys\":3,\"hits\":2") != NULL);
}

/* Bulk put: several block files and one that is not a block, in one command: the blocks are
 * stored, the bad file is reported, the exit code says something failed. */
static void test_bulk_put_files(void)
{
    char out[8192], paths[4][128], junk[128], hexes[3][2 * TQKV_KEY_BYTES + 1];
    tc_geom g = tc_geom_small("tq4");
    ASSERT_EQ_INT(cli(out, sizeof(out),
                      "register --ns cli-bulk --layers %d --heads %d --head-dim %d --preset tq4 "
                      "--chunk-size %d",
                      TC_LAYERS, TC_HEADS, TC_HEAD_DIM, TC_TOKENS),
                  0);
    for (int i = 0; i < 3; i++) {
        tqkv_key key = tc_key((uint32_t)i, 62);
        uint16_t *raw = tc_make_raw(&g, g.tokens, 620 + (uint64_t)i);
        size_t len = 0;
        void *blk = tc_encode(&g, &key, raw, g.tokens, &len);
        ASSERT_TRUE(blk != NULL);
        snprintf(paths[i], sizeof(paths[i]), "%s/bulk%d.tqb", tmpdir, i);
        FILE *f = fopen(paths[i], "wb");
        ASSERT_TRUE(f && fwrite(blk, 1, len, f) == len);
        fclose(f);
        tqkv_key_hex(&key, hexes[i]);
        free(raw);
        free(blk);
    }
    snprintf(junk, sizeof(junk), "%s/junk.bin", tmpdir);
    FILE *f = fopen(junk, "wb");
    ASSERT_TRUE(f && fputs("this is not a block, it is some text long enough", f) >= 0);
    fclose(f);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json put --ns cli-bulk %s %s %s %s", paths[0],
                      paths[1], junk, paths[2]),
                  1);
    ASSERT_TRUE(strstr(out, "\"stored\":3,\"failed\":1") != NULL);
    ASSERT_TRUE(strstr(out, "TQKV_EBADMAGIC") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json lookup --ns cli-bulk %s %s %s", hexes[0],
                      hexes[1], hexes[2]),
                  0);
    ASSERT_TRUE(strstr(out, "\"hits\":3") != NULL);
}

static void test_admin_commands(void)
{
    char out[16384];
    ASSERT_EQ_INT(cli(out, sizeof(out), "config set log_level debug"), 0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json config get log_level"), 0);
    ASSERT_TRUE(strstr(out, "\"log_level\":\"debug\"") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "config set log_level info"), 0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "config set workers 3"), 1); /* not mutable */
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json evict 1M"), 0);
    ASSERT_TRUE(strstr(out, "\"evicted\":") != NULL);
    ASSERT_EQ_INT(cli(out, sizeof(out), "clear --ns cli"), 0);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json stats --ns cli"), 0);
    ASSERT_TRUE(strstr(out, "\"ns.cli.entries\":0") != NULL);
}

static void test_bench_command(void)
{
    char out[4096];
    ASSERT_EQ_INT(cli(out, sizeof(out),
                      "--json bench --size 64k --count 4 --layers 4 --heads 2 --ns cli-bench"),
                  0);
    ASSERT_TRUE(strstr(out, "\"get_GBps\":") != NULL);
    ASSERT_TRUE(strstr(out, "\"misses\":0") != NULL);
}

static void test_exit_codes(void)
{
    char out[4096], cmd[512];
    ASSERT_EQ_INT(cli(out, sizeof(out), "no-such-command"), 2);
    ASSERT_EQ_INT(cli(out, sizeof(out), "lookup --ns cli not-a-key"), 2);
    ASSERT_EQ_INT(cli(out, sizeof(out), "--json get --ns no-such-ns %064d", 0), 1);
    ASSERT_TRUE(strstr(out, "TQKV_ENONAMESPACE") != NULL);
    /* a daemon that is not there */
    snprintf(cmd, sizeof(cmd), "%s --url unix://%s/nothing.sock status 2>/dev/null",
             TQKV_CLI_PATH, tmpdir);
    int st = system(cmd);
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ_INT(WEXITSTATUS(st), 3);
}

static const tqkv_test_case cases[] = {
    {"status_json", test_status_json},
    {"put_get_lookup_delete", test_put_get_lookup_delete},
    {"lookup_from_token_file", test_lookup_from_token_file},
    {"bulk_put_files", test_bulk_put_files},
    {"admin_commands", test_admin_commands},
    {"bench_command", test_bench_command},
    {"exit_codes", test_exit_codes},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--encode-device", "cpu", NULL};
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tqkv-cli-XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    if (tc_start(&daemon_h, args))
        return 1;
    int rc = tqkv_test_main(argc, argv, cases);
    if (rc == 1) {
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "cat %s/stderr >&2", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "(no CLI stderr)\n");
        tqkvd_harness_dump_log(&daemon_h);
    }
    if (tqkvd_harness_stop(&daemon_h) != 0) {
        fprintf(stderr, "tqkvd did not shut down cleanly\n");
        rc = 1;
    }
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return rc;
}
