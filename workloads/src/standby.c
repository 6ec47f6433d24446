/* standby [MiB=1] [sleep|spin] [nap_ms=2]: touch MiB of heap with a pattern,
 * say "standby: ready" on stdout, then keep running until it is told to finish with SIGUSR1
 * (or SIGTERM), and finally verify the pattern and print a checksum.
 *
 * A process that is still there when a test moves it, however slow the host is: the test
 * waits for the ready line, moves it as often as it likes, then sends the signal and compares
 * the output with a native run told the same way. While waiting it either sleeps in naps of
 * nap_ms (`sleep`, the default) or computes (`spin`: rounds of a small sieve and a pass over
 * the memory, each round checked against the first, plus memory-operand increments whose
 * count is checked against a register copy, so an instruction that ran twice shows).
 * Nothing printed depends on how long it waited. */
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

static void say(const char *line)
{
    size_t n = strlen(line);
    while (n) {
        ssize_t w = write(1, line, n);
        if (w <= 0) _exit(3);
        line += w;
        n -= (size_t)w;
    }
}

/* One round of work: primes below 20000 and an FNV hash of every 64th word. */
static uint64_t round_of_work(const uint64_t *mem, size_t words)
{
    static unsigned char composite[20000];
    memset(composite, 0, sizeof composite);
    uint64_t primes = 0;
    for (size_t i = 2; i < sizeof composite; i++) {
        if (composite[i]) continue;
        primes++;
        for (size_t j = i * i; j < sizeof composite; j += i) composite[j] = 1;
    }
    uint64_t h = 1469598103934665603ULL ^ primes;
    for (size_t i = 0; i < words; i += 64) {
        h ^= mem[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1;
    int spin = argc > 2 && strcmp(argv[2], "spin") == 0;
    long nap_ms = argc > 3 ? strtol(argv[3], 0, 10) : 2;
    if (argc > 2 && !spin && strcmp(argv[2], "sleep") != 0) {
        fputs("usage: standby [MiB] [sleep|spin] [nap_ms]\n", stderr);
        return 2;
    }
    size_t words = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *mem = malloc(words * sizeof(uint64_t) + sizeof(uint64_t));
    if (!mem) { puts("malloc failed"); return 1; }
    for (size_t i = 0; i < words; i++)
        mem[i] = i * 0x9e3779b97f4a7c15ULL ^ mib;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = finish;  /* no SA_RESTART: a nap ends early with EINTR */
    sigaction(SIGUSR1, &sa, 0);
    sigaction(SIGTERM, &sa, 0);

    uint64_t first = round_of_work(mem, words);
    say("standby: ready\n");

    volatile uint64_t *counter = &mem[words];  /* incremented in memory, counted in a register */
    *counter = 0;
    uint64_t counted = 0, disagree = 0;
    struct timespec nap = { nap_ms / 1000, (nap_ms % 1000) * 1000000L };
    while (!told) {
        if (spin) {
            if (round_of_work(mem, words) != first) disagree++;
            for (int k = 0; k < 1000; k++) {
                __asm__ volatile("incq %0" : "+m"(*counter));
                counted++;
            }
        } else {
            nanosleep(&nap, 0);
        }
    }

    size_t bad = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++) {
        if (mem[i] != (i * 0x9e3779b97f4a7c15ULL ^ mib)) bad++;
        sum = sum * 31 + mem[i];
    }
    printf("standby: told to finish; rounds %s, counter %s\n",
           disagree ? "DISAGREE" : "agree", *counter == counted ? "exact" : "WRONG");
    printf("verify: %s (%zu bad words) checksum %016llx\n", bad ? "BAD" : "ok", bad,
           (unsigned long long)sum);
    return bad != 0 || disagree != 0 || *counter != counted;
}
