/* Writes a known, changing set of pages in phases and says which, for write-tracking tests.
 * Before each phase it reads one line from stdin (the go-ahead), so a tracker can look at
 * the pages written between two phases without timing anything.
 * argv[1] = rounds of the read-modify-write phase (default 2000000); argv[2] = "none": the
 * last phase makes its page PROT_NONE instead of read-only.
 * Pages are indexes into `pages`, a page-aligned array (same address natively and in a
 * guest: a static non-PIE program). The last phase writes to a page it made read-only (or
 * PROT_NONE): the program dies by SIGSEGV, as natively. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define NPAGES 64
#define PAGE 4096

static char pages[NPAGES * PAGE] __attribute__((aligned(PAGE)));

static void go(void)
{
    char c = 0;
    while (read(0, &c, 1) == 1 && c != '\n')
        ;
}

static void wrote(int phase, const int *which, int n)
{
    printf("phase %d wrote", phase);
    for (int i = 0; i < n; i++)
        printf(" %d", which[i]);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned long rounds = argc > 1 ? strtoul(argv[1], NULL, 0) : 2000000UL;
    int none = argc > 2 && strcmp(argv[2], "none") == 0;
    int which[NPAGES], n;

    printf("dirtyphases: base %p pages %d\n", (void *)pages, NPAGES);
    fflush(stdout);

    go();  /* phase 0: every third page */
    n = 0;
    for (int i = 0; i < NPAGES; i += 3) {
        pages[i * PAGE + i] = (char)(i + 1);
        which[n++] = i;
    }
    wrote(0, which, n);

    go();  /* phase 1: pages 1, 6, 11, ... (some written before, some not) */
    n = 0;
    for (int i = 1; i < NPAGES; i += 5) {
        pages[i * PAGE + 100] ^= 0x5a;
        which[n++] = i;
    }
    wrote(1, which, n);

    go();  /* phase 2: the kernel writes page 7 (read() into it); the program writes none */
    for (int got = 0; got < 16;) {
        ssize_t r = read(0, pages + 7 * PAGE + got, 16 - got);
        if (r <= 0)
            return 3;
        got += (int)r;
    }
    printf("phase 2 read %.16s\n", pages + 7 * PAGE);
    fflush(stdout);

    go();  /* phase 3: pages 56-63 unmapped (they drop out), page 20 made read-only and
              writable again (the area splits: nothing is written), page 2 written */
    if (munmap(pages + 56 * PAGE, 8 * PAGE) != 0)
        return 4;
    if (mprotect(pages + 20 * PAGE, PAGE, PROT_READ) != 0 ||
        mprotect(pages + 20 * PAGE, PAGE, PROT_READ | PROT_WRITE) != 0)
        return 4;
    pages[2 * PAGE] = 9;
    which[0] = 2;
    wrote(3, which, 1);

    go();  /* phase 4: read-modify-write counters on four pages, long enough to be preempted */
    volatile unsigned long *c[4] = {
        (unsigned long *)(pages + 1 * PAGE + 2048), (unsigned long *)(pages + 9 * PAGE + 2048),
        (unsigned long *)(pages + 17 * PAGE + 2048), (unsigned long *)(pages + 33 * PAGE + 2048)};
    for (unsigned long r = 0; r < rounds; r++)
        for (int k = 0; k < 4; k++)
            asm volatile("incq %0" : "+m"(*c[k]));
    printf("phase 4 counters %lu %lu %lu %lu of %lu\n", *c[0], *c[1], *c[2], *c[3], rounds);
    which[0] = 1, which[1] = 9, which[2] = 17, which[3] = 33;
    wrote(4, which, 4);

    go();  /* phase 5: page 51 made read-only (or PROT_NONE) by the program, then written */
    if (mprotect(pages + 51 * PAGE, PAGE, none ? PROT_NONE : PROT_READ) != 0)
        return 5;
    printf("phase 5 writes a %s page\n", none ? "PROT_NONE" : "read-only");
    fflush(stdout);
    *(volatile char *)(pages + 51 * PAGE + 1) = 1;
    printf("still alive?!\n");
    return 0;
}
