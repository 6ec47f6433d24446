/* A fixed amount of work split over threads: `threadsplit T [MILLIONS=128]` computes 64
 * parts, each a dependent chain of MILLIONS/64 million multiply-xorshift steps over a 4 KiB
 * table of its own, part i by thread i % T (1..16 threads started with pthread_create, then
 * joined), and prints the parts' digests folded in part order: the same output for any T, so
 * the one-thread native run is the reference for every run. The work does not grow with T:
 * the time with 2 threads over the time with 1 is the program's speed-up. Without T or with
 * T outside 1..16: a usage line, exit 2. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PARTS 64
#define TABLE 512

static uint64_t digests[PARTS];
static long threads, steps;

static uint64_t part(long index)
{
    uint64_t table[TABLE];
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(index + 1);
    for (int i = 0; i < TABLE; i++) {
        x ^= x >> 31;
        x *= 0xbf58476d1ce4e5b9ull;
        table[i] = x;
    }
    for (long s = 0; s < steps; s++) {
        uint64_t *slot = &table[x % TABLE];
        x ^= *slot;
        x *= 0x2545f4914f6cdd1dull;
        x ^= x >> 29;
        *slot += x;
    }
    return x;
}

static void *worker(void *arg)
{
    for (long p = (long)arg; p < PARTS; p += threads)
        digests[p] = part(p);
    return 0;
}

int main(int argc, char **argv)
{
    threads = argc >= 2 ? atol(argv[1]) : 0;
    long millions = argc >= 3 ? atol(argv[2]) : 128;
    if (threads < 1 || threads > 16 || millions < 1) {
        printf("usage: threadsplit T [MILLIONS=128] (1..16 threads, MILLIONS of steps)\n");
        return 2;
    }
    steps = millions * 1000000 / PARTS;
    pthread_t t[16];
    for (long i = 0; i < threads; i++)
        if (pthread_create(&t[i], 0, worker, (void *)i)) {
            printf("threadsplit: pthread_create failed\n");
            return 1;
        }
    for (long i = 0; i < threads; i++)
        pthread_join(t[i], 0);
    uint64_t folded = 0xcbf29ce484222325ull;
    for (int p = 0; p < PARTS; p++)
        folded = (folded ^ digests[p]) * 0x100000001b3ull;
    printf("threadsplit: %d parts of %ld steps, digest %016llx\n", PARTS, steps,
           (unsigned long long)folded);
    return 0;
}
