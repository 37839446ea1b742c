/* Integration tests of authentication through libtqkv: with a user token and an admin token
 * configured, a TCP client without a token (or with a wrong one) is refused at HELLO, a user
 * token can store and fetch but cannot run admin ops (EVICT, CLEAR, CONFIG SET), and the admin
 * token can. */
#include "test_client_util.h"
#include "tqkv_test.h"

#define USER_TOKEN "user-secret-1"
#define ADMIN_TOKEN "admin-secret-2"

static tqkvd_harness daemon_h;

static int try_connect(const char *token)
{
    tqkv_options o;
    char err[256];
    tqkv_options_init(&o);
    o.token = token;
    o.errbuf = err;
    o.errbuf_len = sizeof(err);
    tqkv_client *c = NULL;
    int rc = tqkv_connect(daemon_h.tcp_url, &o, &c);
    tqkv_close(c);
    return rc;
}

static void test_no_token_refused(void)
{
    ASSERT_ERR(try_connect(NULL), TQKV_EAUTH);
    ASSERT_ERR(try_connect(""), TQKV_EAUTH);
}

static void test_wrong_token_refused(void)
{
    ASSERT_ERR(try_connect("user-secret-"), TQKV_EAUTH);
    ASSERT_ERR(try_connect("user-secret-1x"), TQKV_EAUTH);
    ASSERT_ERR(try_connect("ADMIN-SECRET-2"), TQKV_EAUTH);
}

static void test_user_token_no_admin_ops(void)
{
    tqkv_client *c = tc_connect(daemon_h.tcp_url, USER_TOKEN);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_INT(tqkv_is_admin(c), 0);
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(c, "auth-user", &g));
    uint16_t *raw = tc_make_raw(&g, g.tokens, 1);
    tqkv_key key = tc_key(0, 20);
    tqkv_put_item it = {.key = key, .data = raw, .len = tc_raw_len(&g, g.tokens),
                        .n_tokens = g.tokens};
    ASSERT_OK(tqkv_put_raw(c, "auth-user", &it, 1, NULL));
    uint32_t hits = 0;
    ASSERT_OK(tqkv_lookup(c, "auth-user", &key, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 1);
    tqkv_kv_list l;
    ASSERT_OK(tqkv_stats(c, NULL, &l));
    tqkv_kv_list_free(&l);
    ASSERT_ERR(tqkv_clear(c, NULL), TQKV_EPERM);
    ASSERT_ERR(tqkv_clear(c, "auth-user"), TQKV_EPERM);
    ASSERT_ERR(tqkv_evict(c, NULL, 1 << 20, NULL), TQKV_EPERM);
    ASSERT_ERR(tqkv_config_set(c, "log_level", "debug"), TQKV_EPERM);
    /* refused admin ops changed nothing and the connection still works */
    ASSERT_OK(tqkv_lookup(c, "auth-user", &key, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 1);
    free(raw);
    tqkv_close(c);
}

static void test_admin_token_allowed(void)
{
    tqkv_client *c = tc_connect(daemon_h.tcp_url, ADMIN_TOKEN);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_INT(tqkv_is_admin(c), 1);
    tc_geom g = tc_geom_small("tq4");
    ASSERT_OK(tc_register(c, "auth-admin", &g));
    uint16_t *raw = tc_make_raw(&g, g.tokens, 2);
    tqkv_key key = tc_key(0, 21);
    tqkv_put_item it = {.key = key, .data = raw, .len = tc_raw_len(&g, g.tokens),
                        .n_tokens = g.tokens};
    ASSERT_OK(tqkv_put_raw(c, "auth-admin", &it, 1, NULL));
    ASSERT_OK(tqkv_config_set(c, "log_level", "debug"));
    tqkv_kv_list l;
    ASSERT_OK(tqkv_config_get(c, "log_level", &l));
    const char *v = tqkv_kv_list_get(&l, "log_level");
    ASSERT_TRUE(v && strcmp(v, "debug") == 0);
    tqkv_kv_list_free(&l);
    ASSERT_OK(tqkv_config_set(c, "log_level", "info"));
    ASSERT_ERR(tqkv_config_set(c, "workers", "3"), TQKV_EREADONLY);
    uint64_t freed = 0;
    ASSERT_OK(tqkv_evict(c, NULL, 1, &freed));
    ASSERT_TRUE(freed > 0);
    ASSERT_OK(tqkv_put_raw(c, "auth-admin", &it, 1, NULL));
    ASSERT_OK(tqkv_clear(c, "auth-admin"));
    uint32_t hits = 9;
    ASSERT_OK(tqkv_lookup(c, "auth-admin", &key, 1, 0, &hits, NULL, NULL));
    ASSERT_EQ_INT(hits, 0);
    free(raw);
    tqkv_close(c);
}

static const tqkv_test_case cases[] = {
    {"no_token_refused", test_no_token_refused},
    {"wrong_token_refused", test_wrong_token_refused},
    {"user_token_no_admin_ops", test_user_token_no_admin_ops},
    {"admin_token_allowed", test_admin_token_allowed},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    static const char *const args[] = {"--token", USER_TOKEN, "--admin-token", ADMIN_TOKEN,
                                       "--encode-device", "cpu", NULL};
    if (tc_start(&daemon_h, args))
        return 1;
    int rc = tqkv_test_main(argc, argv, cases);
    if (rc == 1)
        tqkvd_harness_dump_log(&daemon_h);
    if (tqkvd_harness_stop(&daemon_h) != 0) {
        fprintf(stderr, "tqkvd did not shut down cleanly\n");
        rc = 1;
    }
    return rc;
}
