/* tqkvd's monitoring endpoint: Prometheus `/metrics` and `/healthz` over HTTP (libmicrohttpd,
 * setting `metrics`), and the per-op latency histograms and error counts it exposes (the other
 * figures are the counters STATS already reports). The histograms and counts are kept on the
 * loop thread; the HTTP thread never reads the daemon's state itself (metrics.c says how it gets
 * the text). */
#ifndef TQKVD_METRICS_H
#define TQKVD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct tqkvd_server;

typedef struct tqkvd_metrics tqkvd_metrics;

/* Creates s->metrics and, when s->cfg.metrics is not "", binds the HTTP listener (host:port,
 * port 0: ephemeral) and starts its thread. Loop thread, after s->loop is initialised.
 * @return 0, TQKV_EBADCONFIG (unparsable address), TQKV_EIO (cannot bind or start),
 *   TQKV_ENOMEM. On error s->metrics may be set; tqkvd_metrics_stop/_free clean it up. */
int tqkvd_metrics_start(struct tqkvd_server *s);

/* The bound HTTP address ("127.0.0.1:9470"), or "" when the listener is off. Valid while
 * s->metrics lives. */
const char *tqkvd_metrics_bound(const struct tqkvd_server *s);

/* From now on /healthz answers 503 (graceful shutdown started); /metrics still answers. */
void tqkvd_metrics_shutting_down(struct tqkvd_server *s);

/* Stops the HTTP thread (a scrape waiting for the loop is answered 503 at once) and closes the
 * loop handle. Loop thread; idempotent; NULL s->metrics is a no-op. */
void tqkvd_metrics_stop(struct tqkvd_server *s);

/* Frees s->metrics after tqkvd_metrics_stop and after the loop has run its close callbacks. */
void tqkvd_metrics_free(struct tqkvd_server *s);

/* Records a request whose response was made: `status` counts in the errors by op and code when
 * non-zero; `written` says the response reached the socket, and then `ns` (arrival of the frame
 * to the response written) goes into the op's latency histogram. Loop thread. */
void tqkvd_metrics_request_done(struct tqkvd_server *s, int op, int status, int written,
                                uint64_t ns);

#endif
