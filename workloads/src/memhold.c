/* memhold [MiB=16] [rounds=200] [sleep_ms=10]: touch MiB of heap with a pattern, then
 * wait in rounds (sleeping sleep_ms each, a little compute between), and finally verify the
 * whole pattern and print a checksum. A process with a known amount of touched memory that
 * lives long enough to be migrated many times. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 16;
    long rounds = argc > 2 ? strtol(argv[2], 0, 10) : 200;
    long sleep_ms = argc > 3 ? strtol(argv[3], 0, 10) : 10;
    size_t words = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *mem = malloc(words * sizeof(uint64_t));
    if (!mem) { puts("malloc failed"); return 1; }
    for (size_t i = 0; i < words; i++)
        mem[i] = i * 0x9e3779b97f4a7c15ULL ^ mib;
    printf("touched %zu MiB\n", mib);
    fflush(stdout);
    struct timespec ts = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
    uint64_t acc = 0;
    for (long r = 0; r < rounds; r++) {
        for (size_t i = (size_t)r % 512; i < words; i += 4096)
            acc += mem[i];
        if (sleep_ms) nanosleep(&ts, 0);
    }
    size_t bad = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++) {
        if (mem[i] != (i * 0x9e3779b97f4a7c15ULL ^ mib)) bad++;
        sum = sum * 31 + mem[i];
    }
    printf("rounds %ld acc %016llx\n", rounds, (unsigned long long)acc);
    printf("verify: %s (%zu bad words) checksum %016llx\n", bad ? "BAD" : "ok", bad,
           (unsigned long long)sum);
    return bad != 0;
}
