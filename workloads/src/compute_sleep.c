/* argv[1] rounds (default 20): ~5 ms integer compute, then nanosleep 10 ms. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#define ITERS 2000000UL

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    uint64_t x = 88172645463325252ULL, ck = 0;
    struct timespec ts = { 0, 10 * 1000 * 1000 };
    for (int r = 0; r < rounds; r++) {
        for (unsigned long i = 0; i < ITERS; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            x += i;
        }
        printf("round %d: %016llx\n", r, (unsigned long long)x);
        ck = (ck ^ x) * 0x100000001b3ULL;
        nanosleep(&ts, NULL);
    }
    printf("checksum: %016llx\n", (unsigned long long)ck);
    return 0;
}
