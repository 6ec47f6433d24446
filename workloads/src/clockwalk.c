/* clockwalk [probe|cover|wait]: read the clocks in a loop, checking that they agree with
 * themselves, then print what it found: 50,000 rounds without an argument, with one until
 * told to finish (SIGUSR1).
 *
 * Each round reads CLOCK_MONOTONIC through the C library (the vDSO where there is one) and
 * checks it never went backwards; every 64th round it also reads CLOCK_MONOTONIC,
 * CLOCK_REALTIME and CLOCK_PROCESS_CPUTIME_ID through the system call itself, between two
 * library reads, and checks the library's answers bracket the call's (the fast path and the
 * mediated one agree), and gettimeofday() and time() against CLOCK_REALTIME the same way.
 * It says "clockwalk: ready" once it has made its first rounds. Nothing printed depends on
 * how long it ran. With "probe" it also prints whether the vDSO's time page held a host
 * function at the last check (only under Tender: natively the page below the vDSO is the
 * host's own data, which need not be readable); "cover" does
 * the same after mapping (and filling) 64 KiB at 0xf0000, where that engine keeps the host's
 * vDSO in its host process.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t told;

static void finish(int sig)
{
    (void)sig;
    told = 1;
}

static int64_t ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static int64_t lib(clockid_t clk)
{
    struct timespec t;
    clock_gettime(clk, &t);
    return ns(&t);
}

static int64_t sys(clockid_t clk)
{
    struct timespec t;
    syscall(SYS_clock_gettime, clk, &t);
    return ns(&t);
}

int main(int argc, char **argv)
{
    int cover = argc > 1 && !strcmp(argv[1], "cover");
    int probe = cover || (argc > 1 && !strcmp(argv[1], "probe"));
    if (cover) {
        char *p = mmap((void *)0xf0000, 0x10000, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED)
            return 3;
        memset(p, 0xcc, 0x10000);
    }
    signal(SIGUSR1, finish);
    signal(SIGTERM, finish);
    long backwards = 0, disagree = 0, cpu_backwards = 0, checks = 0, fast = 0;
    int64_t last = 0, last_cpu = 0;
    unsigned long ehdr = getauxval(AT_SYSINFO_EHDR);
    long rounds = argc > 1 ? -1 : 50000;
    for (long round = 0; !told && round != rounds; round++) {
        int64_t now = lib(CLOCK_MONOTONIC);
        if (now < last)
            backwards++;
        last = now;
        if (round % 64)
            continue;
        checks++;
        clockid_t clocks[] = { CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME };
        for (int i = 0; i < 3; i++) {
            int64_t a = lib(clocks[i]), s = sys(clocks[i]), b = lib(clocks[i]);
            if (!(a <= s && s <= b))
                disagree++;
        }
        int64_t r1 = sys(CLOCK_REALTIME);
        struct timeval tv;
        gettimeofday(&tv, NULL);
        time_t t = time(NULL);
        int64_t r2 = sys(CLOCK_REALTIME);
        int64_t us = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
        if (us < r1 / 1000 || us > r2 / 1000 || t < r1 / 1000000000 || t > r2 / 1000000000)
            disagree++;
        int64_t cpu = lib(CLOCK_PROCESS_CPUTIME_ID);
        if (cpu < last_cpu)
            cpu_backwards++;
        last_cpu = cpu;
        if (probe && ehdr)
            fast = *(volatile uint64_t *)(ehdr - 4096) != 0;
        if (checks == 4) {
            fputs("clockwalk: ready\n", stdout);
            fflush(stdout);
        }
    }
    printf("monotonic backwards: %ld\nfast and system call disagree: %ld\n"
           "process cpu time backwards: %ld\n", backwards, disagree, cpu_backwards);
    if (probe)
        printf("vdso: %s, host function at the last check: %s\n", ehdr ? "yes" : "no",
               fast ? "yes" : "no");
    return 0;
}
