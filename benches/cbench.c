/*
 * cbench.c -- the C baseline: a gmond metric module as small as one can be,
 * written from ganglia-headers/gmond_abi.h (no Ganglia headers needed).
 *
 * Two module records live in this one .so (gmond dlopens the same path for
 * each block and looks up the block's `name`):
 *
 *   cbench_module         N uint metrics named PREFIX00000, PREFIX00001, ...
 *                         each returning the constant 42 -- what gmond itself
 *                         costs per metric. Params (module_params_list):
 *                           param count  { value = "N" }     (default 100)
 *                           param prefix { value = "bm_" }   (default "bm_")
 *   cbench_rounds_module  one uint metric `bench_rounds` that counts its own
 *                         calls into an 8-byte counter in a shared file, so
 *                         the benchmark knows exactly how many collection
 *                         rounds ran. Params: param file { value = PATH }.
 *                         A second metric, `bench_round_begin`, listed first
 *                         in the group, stamps when a round began; each
 *                         `bench_rounds` call then stores that round's
 *                         (begin, end) in a ring in the same file, so the
 *                         benchmark can tell how long gmond's thread spent
 *                         in each round (CLOCK_MONOTONIC ns; layout below).
 *
 * Build: gcc -O2 -shared -fPIC -o cbench.so benches/cbench.c
 * (APR symbols resolve from gmond's global scope, as for Debian's modules.)
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "../ganglia-headers/gmond_abi.h"

/* From gmond's global scope (libapr-1); what MMETRIC_INIT_METADATA and
 * MMETRIC_ADD_METADATA expand to. */
typedef struct apr_table_t apr_table_t;
extern apr_table_t *apr_table_make(apr_pool_t *p, int nelts);
extern void apr_table_add(apr_table_t *t, const char *key, const char *val);

extern mmodule cbench_module;
extern mmodule cbench_rounds_module;

static const char *param(mmodule *m, const char *name, const char *fallback) {
    apr_array_header_t *list = m->module_params_list;
    if (!list) return fallback;
    mmparam *p = (mmparam *)list->elts;
    for (int i = 0; i < list->nelts; i++)
        if (p[i].name && strcmp(p[i].name, name) == 0 && p[i].value) return p[i].value;
    return fallback;
}

static void describe(Ganglia_25metric *m, apr_pool_t *pool, char *name, const char *desc) {
    memset(m, 0, sizeof *m);
    m->name = name;
    m->tmax = 90;
    m->type = GANGLIA_VALUE_UNSIGNED_INT;
    m->units = "";
    m->slope = "both";
    m->fmt = "%u";
    m->msg_size = 8;
    m->desc = (char *)desc;
    apr_table_t *t = apr_table_make(pool, 2);
    apr_table_add(t, "GROUP", "bench");
    m->metadata = (int *)t;
}

/* ---- cbench_module: N constant metrics ---- */

static int cb_init(apr_pool_t *pool) {
    long n = atol(param(&cbench_module, "count", "100"));
    const char *prefix = param(&cbench_module, "prefix", "bm_");
    if (n < 1 || n > 1000000) n = 100;
    Ganglia_25metric *info = calloc((size_t)n + 1, sizeof *info);
    if (!info) return 1;
    for (long i = 0; i < n; i++) {
        char *name = malloc(strlen(prefix) + 16);
        if (!name) return 1;
        sprintf(name, "%s%05ld", prefix, i);
        describe(&info[i], pool, name, "cbench constant");
    }
    cbench_module.metrics_info = info; /* info[n] is all zero: name NULL ends it */
    return 0;
}

static g_val_t cb_handler(int i) {
    (void)i;
    g_val_t v;
    v.uint32 = 42; /* as Ganglia's own modules do: set the member, no zeroing */
    return v;
}

mmodule cbench_module = {
    MMODULE_MAGIC_NUMBER_MAJOR, MMODULE_MAGIC_NUMBER_MINOR, __FILE__,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    MMODULE_MAGIC_COOKIE,
    cb_init, NULL, NULL, cb_handler,
};

/* ---- cbench_rounds_module: one metric counting collection rounds ---- */

/* The shared file's 4096 bytes, as 64-bit words: [0] the rounds counter,
 * [1] when the current round began (bench_round_begin), then a ring of
 * ROUND_RING (begin, end) pairs, round k at [2 + 2 * (k % ROUND_RING)]. */
#define ROUND_RING 255
static volatile uint64_t *rounds;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int rounds_init(apr_pool_t *pool) {
    const char *path = param(&cbench_rounds_module, "file", NULL);
    if (!path) { fprintf(stderr, "cbench_rounds_module: param file missing\n"); return 1; }
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, 4096) != 0) { perror(path); return 1; }
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    rounds = p;
    Ganglia_25metric *info = calloc(3, sizeof *info);
    if (!info) return 1;
    describe(&info[0], pool, "bench_rounds", "collection rounds so far");
    describe(&info[1], pool, "bench_round_begin", "stamps the start of a round");
    cbench_rounds_module.metrics_info = info;
    return 0;
}

static g_val_t rounds_handler(int i) {
    g_val_t v;
    if (i == 1) { /* bench_round_begin */
        rounds[1] = now_ns();
        v.uint32 = 0;
        return v;
    }
    uint64_t end = now_ns();
    uint64_t k = *rounds + 1;
    volatile uint64_t *slot = rounds + 2 + 2 * (k % ROUND_RING);
    slot[0] = rounds[1];
    slot[1] = end;
    *rounds = k; /* last: the round's slot is written when the counter moves */
    v.uint32 = (uint32_t)k;
    return v;
}

mmodule cbench_rounds_module = {
    MMODULE_MAGIC_NUMBER_MAJOR, MMODULE_MAGIC_NUMBER_MINOR, __FILE__,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    MMODULE_MAGIC_COOKIE,
    rounds_init, NULL, NULL, rounds_handler,
};
