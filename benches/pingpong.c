/*
 * pingpong.c -- the physical floor of handing a call to another thread and
 * back: two threads spinning on one atomic, as protected mode's fast path
 * does. Only meaningful when the two threads run on different CPUs at once.
 *
 *   pingpong ROUND_TRIPS  -> "pingpong  N ns/call" (one round trip)
 *
 * Build: gcc -O2 -o pingpong benches/pingpong.c -lpthread
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic int state;
static long rounds;

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < rounds; i++) {
        while (atomic_load(&state) != 1) __builtin_ia32_pause();
        atomic_store(&state, 2);
    }
    return NULL;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 2000000;
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rounds; i++) {
        atomic_store(&state, 1);
        while (atomic_load(&state) != 2) __builtin_ia32_pause();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, NULL);
    printf("%-10s %10.1f ns/call\n", "pingpong",
           ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / rounds);
    return 0;
}
