/* growsdown: a MAP_GROWSDOWN mapping grows when a page just below it is touched, as the main
 * stack does (which goes past 8 MiB once RLIMIT_STACK allows it): it grows page by page and by a jump of 64 pages, keeps what was written, shows
 * its new size in /proc/self/maps; a touch that would take it past RLIMIT_STACK, or closer
 * than the guard gap to an accessible mapping below, is a SIGSEGV (caught and reported).
 * Output is deterministic: sizes in KiB, no addresses. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

static sigjmp_buf back;
static char buf[1 << 16];

static void segv(int sig) { siglongjmp(back, sig); }

static long area_kib(void *inside) {
    FILE *f = fopen("/proc/self/maps", "r");
    unsigned long lo, hi, at = (unsigned long)inside;
    long found = -1;
    while (f && fgets(buf, sizeof buf, f))
        if (sscanf(buf, "%lx-%lx", &lo, &hi) == 2 && lo <= at && at < hi) found = (hi - lo) / 1024;
    if (f) fclose(f);
    return found;
}

/* Recursion taking about `kib` KiB of the main stack: the sum of what it wrote. Each frame
 * is used after the call it makes, so the compiler keeps every frame. */
static long __attribute__((noinline)) deep(long kib) {
    volatile char frame[4000];
    frame[0] = 1;
    frame[sizeof frame - 1] = 2;
    long below = kib <= 4 ? 0 : deep(kib - 4);
    __asm__ volatile("" : : "r"(frame) : "memory");
    return below + frame[0] + frame[sizeof frame - 1];
}

/* Run deep(kib) on the main stack: 1 when it came back, 0 when it was a SIGSEGV. */
static int recurse(long kib) {
    if (sigsetjmp(back, 1)) return 0;
    return deep(kib) == 3 * (kib / 4);
}

/* Touch `p`: 1 when it worked, 0 when it was a SIGSEGV. */
static int touch(volatile char *p, char value) {
    if (sigsetjmp(back, 1)) return 0;
    *p = value;
    return *p == value;
}

int main(void) {
    struct sigaction sa = {0};
    static char altstack[1 << 16];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, NULL);
    sa.sa_handler = segv;
    sa.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    long page = sysconf(_SC_PAGESIZE);
    /* A reserve far from everything, so what lies below the stack is known. */
    char *reserve = mmap(NULL, 64 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *top = reserve + (48 << 20);
    munmap(reserve + (16 << 20), 48 << 20);  /* [reserve, +16 MiB) stays, PROT_NONE */
    char *g = mmap(top - 16 * page, 16 * page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED, -1, 0);
    if (g == MAP_FAILED) { perror("mmap"); return 1; }
    g[0] = 'g';
    printf("mapped: %ld KiB\n", area_kib(g));
    int ok = 1;
    for (int i = 1; i <= 8; i++) ok &= touch(g - i * page, 'a' + i);
    printf("page by page: %d, %ld KiB, first kept %d\n", ok, area_kib(g), g[0] == 'g');
    ok = touch(g - 72 * page, 'j');
    printf("jump of 64 pages: %d, %ld KiB\n", ok, area_kib(g));
    ok = 1;
    for (int i = 1; i <= 8; i++) ok &= g[-i * page] == 'a' + i;
    printf("kept: %d\n", ok);
    /* RLIMIT_STACK: 1 MiB in all */
    struct rlimit rl = {1 << 20, RLIM_INFINITY};
    setrlimit(RLIMIT_STACK, &rl);
    printf("within the limit: %d\n", touch(top - (1 << 20) + page, 'l'));
    ok = touch(top - (1 << 20) - page, 'x');
    printf("past the limit: %d, %ld KiB\n", ok, area_kib(top - 1));
    rl.rlim_cur = RLIM_INFINITY;
    setrlimit(RLIMIT_STACK, &rl);
    /* An accessible mapping below: the guard gap (1 MiB) stays free. */
    mprotect(reserve, 16 << 20, PROT_READ);
    char *low = reserve + (16 << 20);
    char *h = mmap(low + (2 << 20), 16 * page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED, -1, 0);
    printf("second: %ld KiB\n", area_kib(h));
    printf("outside the gap: %d\n", touch(low + (1 << 20) + page, 'o'));
    ok = touch(low + (1 << 20) - page, 'i');
    printf("inside the gap: %d, %ld KiB\n", ok, area_kib(h));
    printf("not a stack: %d\n", touch(low - (32 << 20), 'n'));
    /* The main stack: past 8 MiB only with a larger RLIMIT_STACK. */
    rl.rlim_cur = 8 << 20;
    setrlimit(RLIMIT_STACK, &rl);
    printf("main stack, 9 MiB deep, limit 8 MiB: %d\n", recurse(9 << 10));
    rl.rlim_cur = 16 << 20;
    setrlimit(RLIMIT_STACK, &rl);
    printf("main stack, 9 MiB deep, limit 16 MiB: %d\n", recurse(9 << 10));
    printf("done\n");
    return 0;
}
