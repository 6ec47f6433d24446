/* malloc/realloc/free of random sizes (1 B .. 1 MiB, fixed seed) with content
 * verification.  argv[1] = iterations (default 200000). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define SLOTS 512

static uint64_t rs = 0x2545f4914f6cdd1dULL;
static uint64_t rnd(void)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return rs;
}

static size_t rand_size(void)
{
    uint64_t r = rnd();
    unsigned pick = r % 1000;
    r >>= 10;
    if (pick < 970) return 1 + r % 4096;            /* small */
    if (pick < 999) return 1 + r % 65536;           /* medium */
    return 1 + r % (1 << 20);                       /* large: up to 1 MiB */
}

static unsigned char *slot[SLOTS];
static size_t slen[SLOTS];
static unsigned char stag[SLOTS];

static void fill(unsigned char *p, size_t from, size_t to, unsigned char tag)
{
    for (size_t i = from; i < to; i++) p[i] = (unsigned char)(tag + i * 13);
}

static int verify(unsigned char *p, size_t n, unsigned char tag, uint64_t *ck)
{
    /* check every byte of the first/last 64 and every 61st byte in between */
    for (size_t i = 0; i < n; i = (i < 64 || i + 64 >= n) ? i + 1 : i + 61) {
        if (p[i] != (unsigned char)(tag + i * 13)) return 0;
        *ck = (*ck ^ p[i]) * 0x100000001b3ULL;
    }
    return 1;
}

int main(int argc, char **argv)
{
    unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 0) : 200000;
    uint64_t ck = 0xcbf29ce484222325ULL;
    unsigned long nmalloc = 0, nrealloc = 0, nfree = 0, bad = 0;
    printf("mallocstress: iterations=%lu\n", iters);

    for (unsigned long it = 0; it < iters; it++) {
        unsigned s = rnd() % SLOTS;
        if (!slot[s]) {
            size_t n = rand_size();
            unsigned char *p = malloc(n);
            if (!p) { printf("malloc(%zu) failed\n", n); return 1; }
            stag[s] = (unsigned char)rnd();
            fill(p, 0, n, stag[s]);
            slot[s] = p; slen[s] = n; nmalloc++;
        } else {
            if (!verify(slot[s], slen[s], stag[s], &ck)) bad++;
            if (rnd() & 1) {
                size_t n = rand_size();
                unsigned char *p = realloc(slot[s], n);
                if (!p) { printf("realloc(%zu) failed\n", n); return 1; }
                size_t keep = n < slen[s] ? n : slen[s];
                if (!verify(p, keep, stag[s], &ck)) bad++;
                if (n > slen[s]) fill(p, slen[s], n, stag[s]);
                slot[s] = p; slen[s] = n; nrealloc++;
            } else {
                free(slot[s]);
                slot[s] = NULL; nfree++;
            }
        }
        ck = (ck ^ slen[s]) * 0x100000001b3ULL;
        if (iters >= 4 && (it + 1) % (iters / 4) == 0 && (it + 1) / (iters / 4) <= 4)
            printf("progress %lu: malloc=%lu realloc=%lu free=%lu\n",
                   it + 1, nmalloc, nrealloc, nfree);
    }
    for (int s = 0; s < SLOTS; s++)
        if (slot[s]) {
            if (!verify(slot[s], slen[s], stag[s], &ck)) bad++;
            free(slot[s]);
        }
    printf("malloc=%lu realloc=%lu free=%lu corrupt=%lu\n", nmalloc, nrealloc, nfree, bad);
    printf("checksum: %016llx\n", (unsigned long long)ck);
    return bad ? 1 : 0;
}
