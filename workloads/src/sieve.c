/* Sieve of Eratosthenes up to N (argv[1], default 30000000). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 30000000UL;
    if (n < 2) n = 2;
    unsigned char *comp = malloc(n + 1);
    if (!comp) { printf("malloc failed\n"); return 1; }
    memset(comp, 0, n + 1);
    printf("sieve: n=%lu\n", n);

    for (unsigned long i = 2; i * i <= n; i++)
        if (!comp[i])
            for (unsigned long j = i * i; j <= n; j += i)
                comp[j] = 1;
    printf("sieve: marking done\n");

    unsigned long count = 0, last = 0;
    uint64_t sum = 0, mix = 0;
    unsigned long quarter = n / 4, next_report = quarter;
    for (unsigned long i = 2; i <= n; i++) {
        if (!comp[i]) {
            count++;
            sum += i;
            mix = (mix ^ i) * 0x100000001b3ULL;
            last = i;
        }
        if (i == next_report && next_report < n) {
            printf("sieve: primes <= %lu: %lu\n", i, count);
            next_report += quarter;
        }
    }
    printf("primes: %lu\n", count);
    printf("largest: %lu\n", last);
    printf("sum: %llu\n", (unsigned long long)sum);
    printf("checksum: %016llx\n", (unsigned long long)(mix ^ sum));
    free(comp);
    return 0;
}
