/* Anonymous mmap of N MiB (argv[1], default 64): touch every page, checksum,
 * mprotect a page read-only and back, munmap; then malloc/free many blocks
 * (some > 128 KiB so musl serves them with mmap). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096UL

static uint64_t fnv(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ULL; }

int main(int argc, char **argv)
{
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 64;
    if (mib < 1) mib = 1;
    size_t len = mib << 20;
    printf("bigmmap: %lu MiB\n", mib);

    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { printf("mmap failed\n"); return 1; }
    size_t pages = len / PAGE;
    int zero_ok = 1;
    for (size_t i = 0; i < pages; i++) {
        uint64_t *w = (uint64_t *)(p + i * PAGE);
        if (w[0] != 0 || w[PAGE / 8 - 1] != 0) zero_ok = 0;  /* fresh pages are zero */
        w[0] = i * 0x9e3779b97f4a7c15ULL;
        w[7] = ~i;
        w[PAGE / 8 - 1] = i ^ 0x5555;
    }
    uint64_t ck = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < pages; i++) {
        uint64_t *w = (uint64_t *)(p + i * PAGE);
        ck = fnv(ck, w[0]); ck = fnv(ck, w[7]); ck = fnv(ck, w[PAGE / 8 - 1]);
        ck = fnv(ck, w[100]);   /* untouched word: must read 0 */
    }
    printf("zero-fill: %s\n", zero_ok ? "ok" : "bad");
    printf("mmap checksum: %016llx\n", (unsigned long long)ck);

    unsigned char *pg = p + 3 * PAGE;
    int rc1 = mprotect(pg, PAGE, PROT_READ);
    uint64_t ro = *(volatile uint64_t *)pg;          /* read while read-only */
    int rc2 = mprotect(pg, PAGE, PROT_READ | PROT_WRITE);
    *(volatile uint64_t *)pg = ro + 1;               /* writable again */
    printf("mprotect: %d %d value=%016llx\n", rc1, rc2,
           (unsigned long long)*(volatile uint64_t *)pg);
    printf("munmap: %d\n", munmap(p, len));

    /* malloc/free of many block sizes */
    static const size_t sizes[] = { 1, 7, 16, 24, 100, 255, 1000, 4096, 5000,
                                    65536, 100000, 131072, 200000, 500000,
                                    1 << 20, 3 << 20 };
    enum { NS = sizeof sizes / sizeof sizes[0] };
    int rounds = mib >= 64 ? 8 : mib >= 16 ? 4 : 2;   /* keep small runs fast */
    uint64_t mck = 0xcbf29ce484222325ULL;
    for (int r = 0; r < rounds; r++) {
        unsigned char *blk[NS];
        for (int i = 0; i < NS; i++) {
            size_t sz = sizes[i] + r;
            blk[i] = malloc(sz);
            if (!blk[i]) { printf("malloc(%zu) failed\n", sz); return 1; }
            memset(blk[i], (i * 31 + r) & 0xff, sz);
            blk[i][sz - 1] = (unsigned char)(sz & 0xff);
        }
        for (int i = NS - 1; i >= 0; i--) {
            size_t sz = sizes[i] + r;
            for (size_t j = 0; j < sz; j += 509) mck = fnv(mck, blk[i][j]);
            mck = fnv(mck, blk[i][sz - 1]);
            free(blk[i]);
        }
    }
    printf("malloc rounds=%d checksum: %016llx\n", rounds, (unsigned long long)mck);
    printf("checksum: %016llx\n", (unsigned long long)(ck ^ mck));
    return 0;
}
