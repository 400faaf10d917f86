/*
 * driver.c -- loads modpython.so the way gmond does (dlopen RTLD_NOW|RTLD_GLOBAL,
 * fills the mmodule fields gmond fills, calls init) and then calls handler(i)
 * in a tight loop, to measure the host's own cost per call without gmond.
 *
 *   driver SO CONF ITERATIONS [SYMBOL]
 *     -> prints "metric_name  WALL ns/call  CPU ns/call  calls" per metric
 *        (at most ITERATIONS calls per metric, stopping after ~3 s), and
 *        "CHILD child-cpu-ns/call" when the module has child processes
 *        (isolated mode: the module process's CPU, every thread)
 *
 * SYMBOL (default python_module) is the exported mmodule record, and the name
 * of the module block in CONF whose `params` and `param` list are handed to
 * it, as gmond does. CPU is the whole process's (every thread, so a worker
 * thread spinning for the caller counts).
 */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "../ganglia-headers/gmond_abi.h"

/* The few APR, libconfuse and libganglia calls we need, declared here so our
 * own ABI header (which names apr_array_header_t itself) stays the only one. */
extern int apr_initialize(void);
extern int apr_pool_create_ex(apr_pool_t **newpool, apr_pool_t *parent, void *abort_fn, void *allocator);
extern apr_array_header_t *apr_array_make(apr_pool_t *p, int nelts, int elt_size);
extern cfg_t *cfg_getsec(cfg_t *cfg, const char *name);
extern unsigned int cfg_size(cfg_t *cfg, const char *name);
extern cfg_t *cfg_getnsec(cfg_t *cfg, const char *name, unsigned int index);
extern char *cfg_getstr(cfg_t *cfg, const char *name);
extern const char *cfg_title(cfg_t *cfg);
extern void *apr_array_push(apr_array_header_t *arr);
extern cfg_t *Ganglia_gmond_config_create(char *path, int fallback_to_default);

static double clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* CPU ns of every thread of this process's children (schedstat), or -1
 * when it has none: an isolated module's process. */
static double children_cpu_ns(void) {
    double total = -1;
    DIR *proc = opendir("/proc");
    if (!proc) return -1;
    struct dirent *e;
    while ((e = readdir(proc))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        char *close = strrchr(buf, ')');
        int ppid = 0;
        if (!close || sscanf(close + 2, "%*c %d", &ppid) != 1 || ppid != getpid()) continue;
        snprintf(path, sizeof path, "/proc/%s/task", e->d_name);
        DIR *tasks = opendir(path);
        if (!tasks) continue;
        struct dirent *t;
        while ((t = readdir(tasks))) {
            if (t->d_name[0] < '0' || t->d_name[0] > '9') continue;
            char spath[600];
            unsigned long long ns;
            snprintf(spath, sizeof spath, "/proc/%s/task/%s/schedstat", e->d_name, t->d_name);
            FILE *sf = fopen(spath, "r");
            if (!sf) continue;
            if (fscanf(sf, "%llu", &ns) == 1) total = (total < 0 ? 0 : total) + (double)ns;
            fclose(sf);
        }
        closedir(tasks);
    }
    closedir(proc);
    return total;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s SO CONF ITERATIONS [SYMBOL]\n", argv[0]); return 2; }
    long iterations = atol(argv[3]);
    const char *symbol = argc > 4 ? argv[4] : "python_module";
    apr_initialize();
    apr_pool_t *pool;
    apr_pool_create_ex(&pool, NULL, NULL, NULL);
    cfg_t *config = Ganglia_gmond_config_create(argv[2], 0);
    void *so = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!so) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    mmodule *m = dlsym(so, symbol);
    if (!m) { fprintf(stderr, "no symbol %s\n", symbol); return 1; }
    /* Fill what gmond fills, from the first block named SYMBOL: its params
     * and its `param NAME { value = ... }` list (mmparam, 16 bytes each). */
    m->module_params_list = apr_array_make(pool, 1, sizeof(mmparam));
    cfg_t *modules = cfg_getsec(config, "modules");
    for (unsigned i = 0; modules && i < cfg_size(modules, "module"); i++) {
        cfg_t *b = cfg_getnsec(modules, "module", i);
        const char *name = cfg_getstr(b, "name");
        if (!name || strcmp(name, symbol) != 0) continue;
        m->module_name = (char *)name;
        m->module_params = cfg_getstr(b, "params");
        for (unsigned j = 0; j < cfg_size(b, "param"); j++) {
            cfg_t *p = cfg_getnsec(b, "param", j);
            mmparam *slot = apr_array_push(m->module_params_list);
            slot->name = (char *)cfg_title(p);
            slot->value = cfg_getstr(p, "value");
        }
        break;
    }
    m->config_file = config;
    if (m->init(pool) != 0) { fprintf(stderr, "init failed\n"); return 1; }
    int n = 0;
    while (m->metrics_info[n].name) n++;
    for (int i = 0; i < n; i++) {
        g_val_t v = m->handler(i); /* warm up */
        (void)v;
        double k0 = children_cpu_ns();
        double c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = clock_ns(CLOCK_MONOTONIC);
        long done = 0;
        /* At most ITERATIONS calls, and no more than ~3 s per metric. */
        while (done < iterations) {
            for (int k = 0; k < 1024 && done < iterations; k++, done++) {
                v = m->handler(i);
                __asm__ volatile("" : : "m"(v) : "memory"); /* keep every call */
            }
            if (clock_ns(CLOCK_MONOTONIC) - t0 > 3e9) break;
        }
        double t1 = clock_ns(CLOCK_MONOTONIC), c1 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        double k1 = children_cpu_ns();
        printf("%-24s %10.1f ns/call %10.1f cpu-ns/call %ld calls", m->metrics_info[i].name,
               (t1 - t0) / done, (c1 - c0) / done, done);
        if (k0 >= 0 && k1 >= 0) printf(" %10.1f child-cpu-ns/call", (k1 - k0) / done);
        printf("\n");
        fflush(stdout);
    }
    if (m->cleanup) m->cleanup();
    return 0;
}
