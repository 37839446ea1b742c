/* Unit tests of libtqkv's transport against a scripted server thread (no daemon): responses that
 * come back in reverse order are matched to their requests by id and their payloads land in the
 * right caller buffers; the daemon's error message reaches tqkv_errmsg; a response to an unknown
 * request id breaks the connection instead of being given to the wrong caller; URLs that cannot
 * work are refused with the right code. */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "tqkv_alloc.h"
#include "tqkv_errors.h"
#include "tqkv.h"
#include "tqkv_test.h"

typedef enum {
    SCRIPT_REVERSE_GET,
    SCRIPT_ERROR,
    SCRIPT_BAD_ID,
    SCRIPT_MISS_IN_BATCH,
    SCRIPT_TOO_BIG,
    SCRIPT_EARLY_ANSWER,
    SCRIPT_BYTES_MISSING,
} script_kind;

typedef struct {
    int listen_fd;
    script_kind kind;
    int n_requests; /* GET requests the client will pipeline */
    int failures;
    char why[128];
} server;

static int read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one request frame (the tests send no request payloads). */
static Tqkv__Header *read_req(int fd)
{
    uint8_t pre[TQKV_PREAMBLE_SIZE];
    tqkv_preamble p;
    if (read_full(fd, pre, sizeof(pre)) || tqkv_preamble_parse(pre, sizeof(pre), 0, &p) ||
        p.payload_len != 0)
        return NULL;
    uint8_t *h = malloc(p.header_len ? p.header_len : 1);
    Tqkv__Header *hdr = NULL;
    if (h && !read_full(fd, h, p.header_len))
        tqkv_header_unpack(h, p.header_len, &hdr);
    free(h);
    return hdr;
}

static int send_resp(int fd, Tqkv__Header *h, const void *payload, uint32_t payload_len)
{
    void *head = NULL;
    size_t head_len = 0;
    h->response = 1;
    if (tqkv_frame_build(h, payload_len, &head, &head_len))
        return -1;
    int rc = write_full(fd, head, head_len);
    tqkv_free(head);
    if (!rc && payload_len)
        rc = write_full(fd, payload, payload_len);
    return rc;
}

/* Payload of the answer to request i: (i + 1) * 1000 bytes, each the key's first byte. */
static size_t answer_len(int i)
{
    return (size_t)(i + 1) * 1000;
}

static void *server_main(void *arg)
{
    server *s = arg;
    int fd = accept(s->listen_fd, NULL, NULL);
    Tqkv__Header *reqs[64] = {0};
    if (fd < 0) {
        s->failures++;
        return NULL;
    }
    Tqkv__Header *hello = read_req(fd);
    if (!hello || hello->op != TQKV__OP__OP_HELLO) {
        snprintf(s->why, sizeof(s->why), "no HELLO");
        s->failures++;
        goto out;
    }
    Tqkv__Header r = TQKV__HEADER__INIT;
    r.op = TQKV__OP__OP_HELLO;
    r.request_id = hello->request_id;
    r.server_version = "script";
    r.max_frame = 1u << 20;
    send_resp(fd, &r, NULL, 0);
    tqkv_header_free(hello);

    if (s->kind == SCRIPT_REVERSE_GET) {
        for (int i = 0; i < s->n_requests; i++)
            if (!(reqs[i] = read_req(fd)) || reqs[i]->op != TQKV__OP__OP_GET ||
                reqs[i]->n_items != 1) {
                snprintf(s->why, sizeof(s->why), "request %d malformed", i);
                s->failures++;
                goto out;
            }
        /* Every request is in before the first answer: the client pipelined them. */
        for (int i = s->n_requests - 1; i >= 0; i--) {
            size_t len = answer_len(i);
            uint8_t *pl = malloc(len);
            memset(pl, reqs[i]->items[0]->key.data[0], len);
            Tqkv__Item it = TQKV__ITEM__INIT, *itp = &it;
            it.key = reqs[i]->items[0]->key;
            it.payload_len = len;
            it.tier = TQKV__TIER__TIER_HOST;
            Tqkv__Header a = TQKV__HEADER__INIT;
            a.op = TQKV__OP__OP_GET;
            a.request_id = reqs[i]->request_id;
            a.n_items = 1;
            a.items = &itp;
            send_resp(fd, &a, pl, (uint32_t)len);
            free(pl);
        }
    } else if (s->kind == SCRIPT_EARLY_ANSWER) {
        /* Answers a PUT after reading only its preamble and header, then reads nothing more
         * until the client hangs up: the client is left with a frame it cannot finish. */
        uint8_t pre[TQKV_PREAMBLE_SIZE];
        tqkv_preamble p;
        Tqkv__Header *q = NULL;
        uint8_t *hb = NULL;
        if (read_full(fd, pre, sizeof(pre)) || tqkv_preamble_parse(pre, sizeof(pre), 0, &p) ||
            !(hb = malloc(p.header_len + 1)) || read_full(fd, hb, p.header_len) ||
            tqkv_header_unpack(hb, p.header_len, &q)) {
            free(hb);
            s->failures++;
            goto out;
        }
        free(hb);
        Tqkv__Item it = TQKV__ITEM__INIT, *itp = &it;
        it.key = q->items[0]->key;
        Tqkv__Header a = TQKV__HEADER__INIT;
        a.op = TQKV__OP__OP_PUT;
        a.request_id = q->request_id;
        a.n_items = 1;
        a.items = &itp;
        send_resp(fd, &a, NULL, 0);
        tqkv_header_free(q);
        struct pollfd pf = {.fd = fd, .events = POLLRDHUP};
        while (poll(&pf, 1, 10000) == 1 && !(pf.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            ;
    } else if (s->kind == SCRIPT_TOO_BIG) {
        /* GET of three keys: the first fits, the other two answer EFRAMETOOBIG with no bytes;
         * then each of those must be asked for again alone, and is answered. Key byte 0 says
         * which; its payload is 500 + 100 * that bytes of that value. */
        for (int round = 0; round < 3; round++) {
            Tqkv__Header *q = read_req(fd);
            size_t want = round == 0 ? 3 : 1;
            if (!q || q->op != TQKV__OP__OP_GET || q->n_items != want) {
                snprintf(s->why, sizeof(s->why), "round %d: bad request", round);
                s->failures++;
                tqkv_header_free(q);
                goto out;
            }
            Tqkv__Item it[3], *itp[3];
            uint8_t pl[800];
            size_t pl_len = 0;
            for (size_t i = 0; i < want; i++) {
                Tqkv__Item init = TQKV__ITEM__INIT;
                it[i] = init;
                it[i].key = q->items[i]->key;
                uint8_t id = q->items[i]->key.data[0];
                if (round == 0 && i > 0) {
                    it[i].status = TQKV_EFRAMETOOBIG;
                } else if (500 + 100 * (size_t)id > sizeof(pl) - pl_len) {
                    it[i].status = TQKV_EINVAL; /* a key this script never sends */
                    snprintf(s->why, sizeof(s->why), "round %d: unexpected key %u", round, id);
                    s->failures++;
                } else {
                    it[i].payload_len = 500 + 100 * (size_t)id;
                    it[i].tier = TQKV__TIER__TIER_HOST;
                    memset(pl + pl_len, id, it[i].payload_len);
                    pl_len += it[i].payload_len;
                }
                itp[i] = &it[i];
            }
            Tqkv__Header a = TQKV__HEADER__INIT;
            a.op = TQKV__OP__OP_GET;
            a.request_id = q->request_id;
            a.n_items = want;
            a.items = itp;
            send_resp(fd, &a, pl, (uint32_t)pl_len);
            tqkv_header_free(q);
        }
        char ch;
        while (read(fd, &ch, 1) > 0)
            ;
    } else if (s->kind == SCRIPT_BYTES_MISSING) {
        /* A GET of one key answered "hit, 500 bytes" in a frame that carries no payload. */
        Tqkv__Header *q = read_req(fd);
        if (!q || q->n_items != 1) {
            s->failures++;
            tqkv_header_free(q);
            goto out;
        }
        Tqkv__Item it = TQKV__ITEM__INIT, *itp = &it;
        it.key = q->items[0]->key;
        it.payload_len = 500;
        it.tier = TQKV__TIER__TIER_HOST;
        Tqkv__Header a = TQKV__HEADER__INIT;
        a.op = TQKV__OP__OP_GET;
        a.request_id = q->request_id;
        a.n_items = 1;
        a.items = &itp;
        send_resp(fd, &a, NULL, 0);
        tqkv_header_free(q);
        char ch;
        while (read(fd, &ch, 1) > 0)
            ;
    } else if (s->kind == SCRIPT_MISS_IN_BATCH) {
        /* One GET of three keys answered hit (500 bytes), miss (no bytes), hit (700 bytes), the
         * whole frame in one write so that the client finds it in its receive buffer. */
        Tqkv__Header *q = read_req(fd);
        if (!q || q->n_items != 3) {
            s->failures++;
            tqkv_header_free(q);
            goto out;
        }
        static const uint64_t lens[3] = {500, 0, 700};
        Tqkv__Item it[3], *itp[3];
        uint8_t pl[1200];
        memset(pl, 0x11, 500);
        memset(pl + 500, 0x33, 700);
        for (int i = 0; i < 3; i++) {
            Tqkv__Item init = TQKV__ITEM__INIT;
            it[i] = init;
            it[i].key = q->items[i]->key;
            it[i].payload_len = lens[i];
            it[i].tier = lens[i] ? TQKV__TIER__TIER_HOST : TQKV__TIER__TIER_NONE;
            it[i].status = lens[i] ? 0 : TQKV_ENOENT;
            itp[i] = &it[i];
        }
        Tqkv__Header a = TQKV__HEADER__INIT;
        a.op = TQKV__OP__OP_GET;
        a.request_id = q->request_id;
        a.n_items = 3;
        a.items = itp;
        a.response = 1;
        void *head = NULL;
        size_t head_len = 0;
        uint8_t frame[4096];
        if (tqkv_frame_build(&a, sizeof(pl), &head, &head_len) || head_len + sizeof(pl) > 4096) {
            s->failures++;
        } else {
            memcpy(frame, head, head_len);
            memcpy(frame + head_len, pl, sizeof(pl));
            write_full(fd, frame, head_len + sizeof(pl));
        }
        tqkv_free(head);
        tqkv_header_free(q);
        char ch;
        while (read(fd, &ch, 1) > 0)
            ;
    } else {
        Tqkv__Header *q = read_req(fd);
        if (!q) {
            s->failures++;
            goto out;
        }
        Tqkv__Header a = TQKV__HEADER__INIT;
        a.op = q->op;
        if (s->kind == SCRIPT_ERROR) {
            a.request_id = q->request_id;
            a.status = TQKV_ENONAMESPACE;
            a.message = "no namespace 'nope' here";
        } else {
            a.request_id = q->request_id + 1000; /* nobody asked for this one */
        }
        send_resp(fd, &a, NULL, 0);
        tqkv_header_free(q);
        /* wait for the client to close */
        char c;
        while (read(fd, &c, 1) > 0)
            ;
    }
out:
    for (int i = 0; i < 64; i++)
        tqkv_header_free(reqs[i]);
    close(fd);
    return NULL;
}

typedef struct {
    server srv;
    pthread_t th;
    char dir[64], path[128], url[160];
} fixture;

static int fixture_start(fixture *f, script_kind kind, int n_requests)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/tqkv-engine-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/s.sock", f->dir);
    snprintf(f->url, sizeof(f->url), "unix://%s", f->path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
    f->srv.listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (f->srv.listen_fd < 0 || bind(f->srv.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
        listen(f->srv.listen_fd, 4))
        return -1;
    f->srv.kind = kind;
    f->srv.n_requests = n_requests;
    return pthread_create(&f->th, NULL, server_main, &f->srv) ? -1 : 0;
}

static void fixture_stop(fixture *f)
{
    /* wakes a server still waiting in accept() for a client that never connected */
    shutdown(f->srv.listen_fd, SHUT_RDWR);
    pthread_join(f->th, NULL);
    close(f->srv.listen_fd);
    unlink(f->path);
    rmdir(f->dir);
}

static tqkv_client *connect_to(const fixture *f, uint32_t inflight)
{
    tqkv_options o;
    tqkv_options_init(&o);
    o.max_inflight = inflight;
    o.timeout_ms = 10000;
    tqkv_client *c = NULL;
    return tqkv_connect(f->url, &o, &c) == 0 ? c : NULL;
}

static void test_out_of_order_responses(void)
{
    enum { N = 12 };
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_REVERSE_GET, N));
    tqkv_client *c = connect_to(&f, N);
    ASSERT_TRUE(c != NULL);
    ASSERT_TRUE(strcmp(tqkv_server_version(c), "script") == 0);
    tqkv_key keys[N];
    tqkv_get_item items[N];
    static uint8_t bufs[N][N * 1000];
    memset(items, 0, sizeof(items));
    for (int i = 0; i < N; i++) {
        memset(keys[i].bytes, 0, TQKV_KEY_BYTES);
        keys[i].bytes[0] = (uint8_t)(0xA0 + i);
        if (i % 2 == 0) { /* half into caller buffers, half allocated by the library */
            items[i].buf = bufs[i];
            items[i].cap = sizeof(bufs[i]);
        }
    }
    tqkv_get_options o = {.keys_per_request = 1};
    ASSERT_OK(tqkv_get(c, "ns", keys, N, &o, items));
    for (int i = 0; i < N; i++) {
        ASSERT_EQ_INT(items[i].status, 0);
        ASSERT_EQ_INT(items[i].tier, TQKV_TIER_HOST);
        ASSERT_EQ_U64(items[i].len, answer_len(i));
        ASSERT_EQ_INT(items[i].allocated, i % 2);
        if (i % 2 == 0)
            ASSERT_TRUE(items[i].data == bufs[i]);
        const uint8_t *d = items[i].data;
        for (size_t k = 0; k < items[i].len; k++)
            if (d[k] != 0xA0 + i)
                TQKV__FAIL("item %d byte %zu: 0x%02x", i, k, d[k]);
    }
    tqkv_get_items_release(items, N);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

static void test_server_error_message(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_ERROR, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    uint32_t hits = 7;
    tqkv_key k;
    memset(&k, 1, sizeof(k));
    ASSERT_ERR(tqkv_lookup(c, "nope", &k, 1, 0, &hits, NULL, NULL), TQKV_ENONAMESPACE);
    ASSERT_TRUE(strstr(tqkv_errmsg(c), "no namespace 'nope' here") != NULL);
    ASSERT_TRUE(strstr(tqkv_errmsg(c), "TQKV_ENONAMESPACE") != NULL);
    ASSERT_EQ_INT(hits, 0);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

static void test_unknown_request_id_breaks_connection(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_BAD_ID, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    tqkv_kv_list l;
    ASSERT_ERR(tqkv_stats(c, NULL, &l), TQKV_EPROTO);
    ASSERT_ERR(tqkv_health(c, &l), TQKV_ECLOSED);
    tqkv_close(c);
    fixture_stop(&f);
}

/* Regression: an empty (miss) item between two hits in one buffered response made the copy
 * loop call memcpy with a NULL destination (UBSan). */
static void test_miss_between_hits_in_one_response(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_MISS_IN_BATCH, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    tqkv_key keys[3];
    memset(keys, 0, sizeof(keys));
    for (int i = 0; i < 3; i++)
        keys[i].bytes[0] = (uint8_t)i;
    tqkv_get_item items[3];
    memset(items, 0, sizeof(items));
    ASSERT_OK(tqkv_get(c, "ns", keys, 3, NULL, items));
    ASSERT_EQ_INT(items[0].status, 0);
    ASSERT_EQ_U64(items[0].len, 500);
    ASSERT_EQ_INT(items[1].status, TQKV_ENOENT);
    ASSERT_EQ_INT(items[1].tier, TQKV_TIER_NONE);
    ASSERT_EQ_U64(items[1].len, 0);
    ASSERT_EQ_INT(items[2].status, 0);
    ASSERT_EQ_U64(items[2].len, 700);
    const uint8_t *a = items[0].data, *b = items[2].data;
    ASSERT_TRUE(a[0] == 0x11 && a[499] == 0x11 && b[0] == 0x33 && b[699] == 0x33);
    tqkv_get_items_release(items, 3);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

/* Regression: an item announced with bytes in a frame without payload was reported as a hit
 * with no data (status 0, data NULL, len 0); the response is malformed and must fail. */
static void test_item_bytes_missing_from_frame(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_BYTES_MISSING, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    tqkv_key k;
    memset(&k, 5, sizeof(k));
    tqkv_get_item item;
    memset(&item, 0, sizeof(item));
    ASSERT_ERR(tqkv_get(c, "ns", &k, 1, NULL, &item), TQKV_EPROTO);
    ASSERT_EQ_INT(item.status, TQKV_EPROTO);
    ASSERT_TRUE(item.data == NULL);
    tqkv_get_items_release(&item, 1);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

/* Regression guard: a response that comes before its request was fully written completes the
 * call, but the half-written frame makes the stream unusable: the client must not send another
 * frame after it (the daemon would read it as the rest of the payload). */
static void test_answer_before_payload_breaks_connection(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_EARLY_ANSWER, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    const size_t len = 900u << 10; /* more than the socket buffers hold, under max_frame */
    uint8_t *big = calloc(1, len);
    ASSERT_TRUE(big != NULL);
    tqkv_put_item it = {.data = big, .len = len};
    memset(it.key.bytes, 7, TQKV_KEY_BYTES);
    int st = 1;
    ASSERT_OK(tqkv_put_blocks(c, "ns", &it, 1, &st));
    ASSERT_EQ_INT(st, 0);
    tqkv_kv_list l;
    ASSERT_ERR(tqkv_health(c, &l), TQKV_ECLOSED);
    free(big);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

/* Items the daemon could not fit in one reply (TQKV_EFRAMETOOBIG, no bytes) are fetched again
 * on their own, and land where the caller asked. */
static void test_too_big_items_are_retried(void)
{
    fixture f;
    ASSERT_OK(fixture_start(&f, SCRIPT_TOO_BIG, 0));
    tqkv_client *c = connect_to(&f, 4);
    ASSERT_TRUE(c != NULL);
    tqkv_key keys[3];
    memset(keys, 0, sizeof(keys));
    for (int i = 0; i < 3; i++)
        keys[i].bytes[0] = (uint8_t)i;
    static uint8_t buf2[1000];
    tqkv_get_item items[3];
    memset(items, 0, sizeof(items));
    items[2].buf = buf2;
    items[2].cap = sizeof(buf2);
    ASSERT_OK(tqkv_get(c, "ns", keys, 3, NULL, items));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_INT(items[i].status, 0);
        ASSERT_EQ_U64(items[i].len, 500 + 100 * i);
        const uint8_t *d = items[i].data;
        ASSERT_TRUE(d[0] == i && d[items[i].len - 1] == i);
    }
    ASSERT_TRUE(items[2].data == buf2);
    tqkv_get_items_release(items, 3);
    tqkv_close(c);
    fixture_stop(&f);
    ASSERT_EQ_INT(f.srv.failures, 0);
}

/* Failing allocator: the n-th allocation made by the armed thread (the client's) fails. The
 * scripted server thread is never armed. */
static __thread int oom_armed;
static __thread long oom_countdown;

static int oom_fail_now(void)
{
    return oom_armed && oom_countdown-- == 0;
}
static void *oom_malloc(size_t n)
{
    return oom_fail_now() ? NULL : malloc(n);
}
static void *oom_realloc(void *p, size_t n)
{
    return oom_fail_now() ? NULL : realloc(p, n);
}
static void *oom_calloc(size_t c, size_t n)
{
    return oom_fail_now() ? NULL : calloc(c, n);
}

/* Every allocation of connect + a batched GET + close fails in turn: each failure is reported as
 * TQKV_ENOMEM (never a crash, never another code), and nothing leaks (ASan build). */
static void test_out_of_memory_everywhere(void)
{
    ASSERT_OK(tqkv_replace_allocator(oom_malloc, oom_realloc, oom_calloc, free));
    int completed = 0;
    long n = 0;
    for (; n < 500 && !completed; n++) {
        fixture f;
        if (fixture_start(&f, SCRIPT_MISS_IN_BATCH, 0))
            TQKV__FAIL("fixture");
        oom_armed = 1;
        oom_countdown = n;
        tqkv_options o;
        tqkv_options_init(&o);
        o.timeout_ms = 10000;
        tqkv_client *c = NULL;
        int rc = tqkv_connect(f.url, &o, &c);
        if (rc == 0) {
            tqkv_key keys[3];
            tqkv_get_item items[3];
            memset(keys, 0, sizeof(keys));
            memset(items, 0, sizeof(items));
            rc = tqkv_get(c, "ns", keys, 3, NULL, items);
            int item_oom = 0;
            for (int i = 0; i < 3; i++)
                item_oom |= items[i].status == TQKV_ENOMEM;
            completed = rc == 0 && !item_oom && oom_countdown >= 0;
            tqkv_get_items_release(items, 3);
            tqkv_close(c);
        }
        oom_armed = 0;
        fixture_stop(&f);
        if (rc != 0 && rc != TQKV_ENOMEM)
            TQKV__FAIL("allocation %ld failing: got %s", n, tqkv_err_name(rc));
    }
    ASSERT_OK(tqkv_replace_allocator(NULL, NULL, NULL, NULL));
    fprintf(stderr, "failed each of the first %ld allocations in turn\n", n - 1);
    ASSERT_TRUE(completed);
    ASSERT_TRUE(n > 5);
}

static void test_bad_urls(void)
{
    static const struct {
        const char *url;
        int want;
    } cases[] = {
        {"http://127.0.0.1:1", TQKV_EINVAL},  {"tcp://127.0.0.1", TQKV_EINVAL},
        {"tcp://:80", TQKV_EINVAL},           {"tcp://127.0.0.1:99999", TQKV_EINVAL},
        {"tcp://[::1:80", TQKV_EINVAL},       {"unix://", TQKV_EINVAL},
        {"unix:///nonexistent/tqkvd.sock", TQKV_ECONNECT},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        tqkv_options o;
        tqkv_options_init(&o);
        o.errbuf = err;
        o.errbuf_len = sizeof(err);
        tqkv_client *c = (tqkv_client *)(uintptr_t)1; /* must be reset to NULL on failure */
        ASSERT_ERR(tqkv_connect(cases[i].url, &o, &c), cases[i].want);
        ASSERT_TRUE(c == NULL);
        ASSERT_TRUE(err[0] != '\0');
    }
}

static const tqkv_test_case cases[] = {
    {"out_of_order_responses", test_out_of_order_responses},
    {"server_error_message", test_server_error_message},
    {"unknown_request_id_breaks_connection", test_unknown_request_id_breaks_connection},
    {"miss_between_hits_in_one_response", test_miss_between_hits_in_one_response},
    {"item_bytes_missing_from_frame", test_item_bytes_missing_from_frame},
    {"too_big_items_are_retried", test_too_big_items_are_retried},
    {"answer_before_payload_breaks_connection", test_answer_before_payload_breaks_connection},
    {"out_of_memory_everywhere", test_out_of_memory_everywhere},
    {"bad_urls", test_bad_urls},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return tqkv_test_main(argc, argv, cases);
}
