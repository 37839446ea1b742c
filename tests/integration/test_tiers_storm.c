/* 20 rounds of kill -9 during a put storm against tqkvd with an SSD tier (write-through,
 * fsync=always): every round starts the daemon on the same data directory, checks that every
 * block acknowledged so far reads back byte-identical, then puts blocks from two client threads
 * until a third thread kills the daemon at a random moment. Blocks whose PUT was not
 * acknowledged may be present or not, but a block that is served must be the exact bytes put:
 * 0 acknowledged blocks lost, 0 corrupt blocks served. Label slow. */
#include <inttypes.h>
#include <pthread.h>
#include <time.h>

#include "test_tiers_util.h"
#include "tqkv_test.h"

#define ROUNDS 20
#define WRITERS 2
#define MAX_KEYS 20000

static tc_geom geom;
static char ssd_dir[64];
static uint8_t state[MAX_KEYS]; /* 0 never put, 1 put without an answer, 2 acknowledged */
static uint32_t next_key;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    const char *url;
    int stop;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *w = p;
    tqkv_client *c = tc_connect(w->url, NULL);
    if (!c)
        return NULL;
    for (;;) {
        pthread_mutex_lock(&mu);
        uint32_t k = next_key < MAX_KEYS ? next_key++ : MAX_KEYS;
        if (k < MAX_KEYS)
            state[k] = 1;
        pthread_mutex_unlock(&mu);
        if (k == MAX_KEYS)
            break;
        if (tt_put(c, "storm", &geom, k, 9) != 0)
            break; /* the daemon is gone: this one was not acknowledged */
        pthread_mutex_lock(&mu);
        state[k] = 2;
        pthread_mutex_unlock(&mu);
    }
    tqkv_close(c);
    return NULL;
}

/* Checks every key put so far. */
static void verify(tqkv_client *c, uint64_t *acked, uint64_t *unacked_present)
{
    *acked = *unacked_present = 0;
    for (uint32_t k = 0; k < next_key; k++) {
        if (!state[k])
            continue;
        int r = tt_get(c, "storm", &geom, k, 9, NULL);
        ASSERT_TRUE(r != -1); /* never other bytes */
        if (state[k] == 2) {
            ASSERT_EQ_INT(r, 1);
            ++*acked;
        } else if (r == 1) {
            ++*unacked_present;
        }
    }
}

static void test_kill9_storm(void)
{
    static const char *const args_tpl[] = {"--ssd-dir", NULL, "--ssd-capacity", "256M",
                                           "--host-capacity", "64M", "--encode-device", "cpu",
                                           NULL};
    const char *args[9];
    memcpy(args, args_tpl, sizeof args);
    args[1] = ssd_dir;
    srand((unsigned)time(NULL));
    uint64_t lost_checks = 0;
    for (int round = 0; round <= ROUNDS; round++) {
        tqkvd_harness h;
        ASSERT_OK(tc_start(&h, args));
        tqkv_client *c = tc_connect(h.unix_url, NULL);
        ASSERT_TRUE(c);
        ASSERT_OK(tc_register(c, "storm", &geom));
        uint64_t acked = 0, present = 0;
        verify(c, &acked, &present);
        lost_checks += acked;
        printf("round %d: %" PRIu64 " acknowledged blocks read back identical, %" PRIu64
               " unacknowledged present, %u keys put\n",
               round, acked, present, next_key);
        tqkv_close(c);
        if (round == ROUNDS) {
            ASSERT_EQ_INT(tqkvd_harness_stop(&h), 0);
            break;
        }
        pthread_t th[WRITERS];
        writer_arg wa = {h.unix_url, 0};
        for (int i = 0; i < WRITERS; i++)
            ASSERT_OK(pthread_create(&th[i], NULL, writer, &wa));
        usleep((useconds_t)(50000 + rand() % 250000)); /* kill at a random moment */
        tt_kill9(&h);
        for (int i = 0; i < WRITERS; i++)
            pthread_join(th[i], NULL);
    }
    ASSERT_TRUE(lost_checks > 0);
}

static const tqkv_test_case cases[] = {
    {"kill9_storm", test_kill9_storm},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    geom = tc_geom_small("tq4");
    if (tt_mkdir(ssd_dir, sizeof ssd_dir))
        return 1;
    int rc = tqkv_test_main(argc, argv, cases);
    tt_rmdir(ssd_dir);
    return rc;
}
