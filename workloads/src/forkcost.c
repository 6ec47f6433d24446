/* The cost of fork + exit + wait with MIB MiB of touched heap: forkcost MIB ROUNDS prints
 * the mean microseconds per round (a benchmark; its output is a time, not compared).
 * Without both arguments it measures nothing: it prints a usage line and exits 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        printf("usage: forkcost MIB ROUNDS (measures nothing without them)\n");
        return 2;
    }
    long mib = atol(argv[1]), rounds = atol(argv[2]);
    char *heap = malloc((size_t)mib << 20);
    if (!heap)
        return 2;
    memset(heap, 1, (size_t)mib << 20);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rounds; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(heap[i % ((size_t)mib << 20)]);
        int st;
        waitpid(pid, &st, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / rounds;
    printf("forkcost %ld MiB: %.0f us per fork+exit+wait\n", mib, us);
    return 0;
}
