/* Large heap (N MiB, argv[1], default 24) as N malloc'd 1 MiB chunks, filled
 * with xorshift data, then dependent pseudo-random walks with RMW updates. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

#define CHUNK_SHIFT 17                     /* 2^17 words = 1 MiB per chunk */
#define CHUNK_WORDS (1UL << CHUNK_SHIFT)
#define PASSES 4

static uint64_t xs_state = 0x9e3779b97f4a7c15ULL;
static uint64_t xorshift64(void)
{
    uint64_t x = xs_state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return xs_state = x;
}

int main(int argc, char **argv)
{
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 24;
    if (mib < 1) mib = 1;
    unsigned long nchunk = mib;
    uint64_t chunk_words = CHUNK_WORDS;
    uint64_t total_words = (uint64_t)nchunk * CHUNK_WORDS;
    uint64_t **chunk = malloc(nchunk * sizeof *chunk);
    if (!chunk) { printf("malloc failed\n"); return 1; }
    printf("hashwalk: %lu MiB in %lu chunks of %llu words\n", mib, nchunk,
           (unsigned long long)chunk_words);

    for (unsigned long c = 0; c < nchunk; c++) {
        chunk[c] = malloc(chunk_words * 8);
        if (!chunk[c]) { printf("malloc failed\n"); return 1; }
        for (uint64_t i = 0; i < chunk_words; i++)
            chunk[c][i] = xorshift64();
    }
    uint64_t fill = 0;
    for (unsigned long c = 0; c < nchunk; c++)
        for (uint64_t i = 0; i < chunk_words; i += 4097)
            fill ^= chunk[c][i] + i;
    printf("fill digest: %016llx\n", (unsigned long long)fill);

    uint64_t steps = total_words / 8;
    uint64_t all = 0xcbf29ce484222325ULL;
    for (int p = 0; p < PASSES; p++) {
        uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)p;
        uint64_t idx = (uint64_t)p * 7919 % total_words;
        for (uint64_t s = 0; s < steps; s++) {
            uint64_t *w = &chunk[idx >> CHUNK_SHIFT][idx & (CHUNK_WORDS - 1)];
            uint64_t v = *w;
            /* FNV-1a over the 8 bytes of v, folded with xorshift mixing */
            h = (h ^ (v & 0xffffffff)) * 0x100000001b3ULL;
            h = (h ^ (v >> 32)) * 0x100000001b3ULL;
            h ^= h >> 29;
            *w = v ^ (h << 1) ^ s;               /* read-modify-write */
            idx = (uint64_t)(((unsigned __int128)(v ^ h) * total_words) >> 64); /* dependent */
        }
        all = (all ^ h) * 0x100000001b3ULL;
        printf("pass %d digest: %016llx\n", p, (unsigned long long)h);
    }
    uint64_t fin = 0;
    for (unsigned long c = 0; c < nchunk; c++)
        for (uint64_t i = 0; i < chunk_words; i++)
            fin = (fin ^ chunk[c][i]) * 0x100000001b3ULL;
    for (unsigned long c = 0; c < nchunk; c++)
        free(chunk[c]);
    printf("heap digest: %016llx\n", (unsigned long long)fin);
    printf("checksum: %016llx\n", (unsigned long long)(all ^ fin));
    return 0;
}
