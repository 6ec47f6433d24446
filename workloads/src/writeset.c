/* writeset MiB write_MiB [nap_us=0]: touch MiB of heap with a pattern, say
 * "writeset: ready" on stdout, then keep rewriting the first write_MiB of it (a word in every
 * 64 bytes, so every page of that working set is written in each pass) until it is told to
 * finish with SIGUSR1 (or SIGTERM), napping nap_us between passes; finally verify the whole
 * heap (the written part must hold the last pass's values) and print a checksum.
 *
 * A process with a known resident size and a known writing set, for pre-copy migration: the
 * pages it writes while it moves must arrive as it last wrote them. Nothing printed depends
 * on how long it ran or how many passes it made. Without both sizes: a usage line, status 2. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t told;

static void finish(int sig)
{
    (void)sig;
    told = 1;
}

static uint64_t pattern(size_t i, size_t mib)
{
    return i * 0x9e3779b97f4a7c15ULL ^ mib;
}

int main(int argc, char **argv)
{
    if (argc < 3) {  /* it runs until told: no default run */
        fputs("usage: writeset MiB write_MiB [nap_us]\n", stderr);
        return 2;
    }
    size_t mib = strtoul(argv[1], 0, 10);
    size_t wmib = strtoul(argv[2], 0, 10);
    long nap_us = argc > 3 ? strtol(argv[3], 0, 10) : 0;
    if (wmib > mib) wmib = mib;
    size_t words = mib * (1u << 20) / sizeof(uint64_t);
    size_t wwords = wmib * (1u << 20) / sizeof(uint64_t);
    uint64_t *mem = malloc(words * sizeof(uint64_t) + sizeof(uint64_t));
    if (!mem) { puts("malloc failed"); return 1; }
    for (size_t i = 0; i < words; i++)
        mem[i] = pattern(i, mib);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = finish;
    sigaction(SIGUSR1, &sa, 0);
    sigaction(SIGTERM, &sa, 0);
    const char *ready = "writeset: ready\n";
    if (write(1, ready, strlen(ready)) < 0) return 3;

    struct timespec nap = { nap_us / 1000000, (nap_us % 1000000) * 1000L };
    uint64_t pass = 0;
    while (!told) {
        pass++;
        for (size_t i = 0; i < wwords; i += 8)
            mem[i] = pattern(i, mib) + pass;
        if (nap_us > 0) nanosleep(&nap, 0);
        else if (!wwords) { struct timespec ms = { 0, 1000000L }; nanosleep(&ms, 0); }
    }

    size_t bad = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++) {
        uint64_t want = pattern(i, mib) + (i < wwords && i % 8 == 0 ? pass : 0);
        if (mem[i] != want) bad++;
        sum = sum * 31 + pattern(i, mib);
    }
    printf("writeset: %zu MiB, %zu MiB written\n", mib, wmib);
    printf("verify: %s (%zu bad words) checksum %016llx\n", bad ? "BAD" : "ok", bad,
           (unsigned long long)sum);
    return bad != 0;
}
