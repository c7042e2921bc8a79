// Core-to-core round trip on CPUs 0 and 1: two threads, each pinned to one CPU, hand a flag back and forth
// through one cache line 200,000 times; prints the mean round trip in nanoseconds. For
// docs/bench/placement_trace.py, which runs it between timing windows to tell where the host put the vCPUs.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

enum { ROUNDS = 200000 };
static _Atomic int flag = 0;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void* answer(void* unused) {
    (void)unused;
    pin(1);
    for (int i = 0; i < ROUNDS; ++i) {
        while (atomic_load(&flag) != 1) {}
        atomic_store(&flag, 0);
    }
    return NULL;
}

int main(void) {
    pthread_t other;
    pthread_create(&other, NULL, answer, NULL);
    pin(0);
    struct timespec start, stop;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < ROUNDS; ++i) {
        atomic_store(&flag, 1);
        while (atomic_load(&flag) != 0) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &stop);
    pthread_join(other, NULL);
    printf("%.1f\n", ((stop.tv_sec - start.tv_sec) * 1e9 + (stop.tv_nsec - start.tv_nsec)) / ROUNDS);
    return 0;
}
