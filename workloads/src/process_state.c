/* process_state [spins=3]: what a process keeps about itself and its memory, read back after
 * it set it — prctl (name, dumpable, no_new_privs, pdeath signal, timer slack), resource
 * limits (RLIMIT_NOFILE enforced), CPU-time interval timers (ITIMER_VIRTUAL, ITIMER_PROF),
 * mremap (grow in place, move, shrink, contents kept), mincore. Deterministic output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/times.h>
#include <unistd.h>

static volatile sig_atomic_t vtalrm, prof;
static void on_vtalrm(int s) { (void)s; vtalrm++; }
static void on_prof(int s) { (void)s; prof++; }

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
}

static uint64_t sum(const unsigned char *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s = s * 31 + p[i];
    return s;
}

int main(int argc, char **argv) {
    int spins = argc > 1 ? atoi(argv[1]) : 3;
    char name[32] = {0};
    show("set name", prctl(PR_SET_NAME, "renamed-process-long", 0, 0, 0));
    prctl(PR_GET_NAME, name, 0, 0, 0);
    printf("name: %s\n", name);
    show("dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    show("set dumpable 0", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    show("dumpable now", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    show("set dumpable 5", prctl(PR_SET_DUMPABLE, 5, 0, 0, 0));
    show("no_new_privs", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    show("set no_new_privs", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    show("no_new_privs now", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    show("set pdeathsig", prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0));
    int sig = 0;
    prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
    printf("pdeathsig: %d\n", sig);
    show("set timer slack", prctl(PR_SET_TIMERSLACK, 12345, 0, 0, 0));
    show("timer slack", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));

    struct rlimit rl = {16, 64};
    show("set nofile 16/64", setrlimit(RLIMIT_NOFILE, &rl));
    getrlimit(RLIMIT_NOFILE, &rl);
    printf("nofile: %lu %lu\n", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
    int last = -1, n = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) { printf("opened %d more, the last %d, then %s\n", n, last,
                            strerror(errno)); break; }
        last = fd;
        n++;
    }
    for (int fd = 3; fd <= last; fd++) close(fd);
    rl.rlim_cur = 32;
    show("raise soft to 32", setrlimit(RLIMIT_NOFILE, &rl));
    rl.rlim_cur = 100;
    show("soft above hard", setrlimit(RLIMIT_NOFILE, &rl));
    struct rlimit core = {4096, 8192};
    show("set core", setrlimit(RLIMIT_CORE, &core));
    memset(&core, 0, sizeof core);
    prlimit(0, RLIMIT_CORE, NULL, &core);
    printf("core: %lu %lu\n", (unsigned long)core.rlim_cur, (unsigned long)core.rlim_max);
    show("bad resource", setrlimit(99, &core));

    /* CPU-time timers: a handler counts SIGVTALRM and SIGPROF while the process computes. */
    signal(SIGVTALRM, on_vtalrm);
    signal(SIGPROF, on_prof);
    struct itimerval it = {{0, 10000}, {0, 10000}}, got;
    show("virtual timer", setitimer(ITIMER_VIRTUAL, &it, NULL));
    show("prof timer", setitimer(ITIMER_PROF, &it, NULL));
    getitimer(ITIMER_VIRTUAL, &got);
    printf("virtual interval: %ld.%06ld, armed: %s\n", (long)got.it_interval.tv_sec,
           (long)got.it_interval.tv_usec, got.it_value.tv_usec || got.it_value.tv_sec
           ? "yes" : "no");
    volatile uint64_t x = 1;
    while (vtalrm < spins || prof < spins)
        for (int i = 0; i < 100000; i++) x = x * 6364136223846793005ULL + 1;
    it = (struct itimerval){{0, 0}, {0, 0}};
    setitimer(ITIMER_VIRTUAL, &it, NULL);
    setitimer(ITIMER_PROF, &it, NULL);
    printf("cpu timers fired: %s\n", vtalrm >= spins && prof >= spins ? "ok" : "bad");
    getitimer(ITIMER_PROF, &got);
    printf("prof disarmed: %ld %ld\n", (long)got.it_value.tv_sec, (long)got.it_value.tv_usec);
    show("bad timer", setitimer(7, &it, NULL));

    /* ids, CPU accounting, closing ranges */
    uid_t ru, eu, su;
    getresuid(&ru, &eu, &su);
    printf("getresuid agrees: %s\n", ru == getuid() && eu == geteuid() && su == geteuid()
           ? "yes" : "no");
    struct tms tm;
    printf("times: %s\n", times(&tm) != (clock_t)-1 && tm.tms_cutime == 0 ? "ok" : "bad");
    struct rusage ru_self;
    show("getrusage", getrusage(RUSAGE_SELF, &ru_self));
    printf("cpu time counted: %s, max rss: %s\n",
           ru_self.ru_utime.tv_sec + ru_self.ru_stime.tv_sec > 0 ||
           ru_self.ru_utime.tv_usec + ru_self.ru_stime.tv_usec > 0 ? "yes" : "no",
           ru_self.ru_maxrss > 0 ? "yes" : "no");
    show("getrusage bad who", getrusage(5, &ru_self));
    for (int i = 0; i < 4; i++) open("/dev/null", O_RDONLY);
    show("close_range cloexec", syscall(SYS_close_range, 3, 4, 4));
    printf("fd 3 cloexec: %d, fd 5 cloexec: %d\n", fcntl(3, F_GETFD), fcntl(5, F_GETFD));
    show("close_range", syscall(SYS_close_range, 3, ~0U, 0));
    show("fd 6 after", fcntl(6, F_GETFD));
    show("close_range backwards", syscall(SYS_close_range, 5, 3, 0));

    /* mremap: contents follow the mapping wherever it goes. */
    size_t page = 4096;
    unsigned char *a = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 4 * page; i++) a[i] = (unsigned char)(i * 7 + 3);
    uint64_t before = sum(a, 4 * page);
    /* a guard mapping right after it, so growing must move */
    void *guard = mmap(a + 4 * page, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                       -1, 0);
    void *r = mremap(a, 4 * page, 16 * page, 0);
    printf("grow without moving: %s\n", r == MAP_FAILED ? strerror(errno) : "grew");
    unsigned char *b = mremap(a, 4 * page, 16 * page, MREMAP_MAYMOVE);
    printf("moved: %s, contents %s, old gone: %s\n", b != a ? "yes" : "no",
           sum(b, 4 * page) == before ? "kept" : "lost",
           mincore(a, page, (unsigned char[1]){0}) < 0 && errno == ENOMEM ? "yes" : "no");
    b[16 * page - 1] = 9;
    unsigned char *c = mremap(b, 16 * page, 2 * page, 0);
    printf("shrunk in place: %s, contents %s\n", c == b ? "yes" : "no",
           sum(c, 2 * page) == sum((unsigned char *)b, 2 * page) ? "kept" : "lost");
    munmap(guard, page);
    unsigned char *d = mremap(c, 2 * page, 3 * page, 0);
    printf("grow in place: %s\n", d == c ? "yes" : "no");
    show("unaligned", (long)mremap(c + 1, page, 2 * page, MREMAP_MAYMOVE));
    show("not mapped", (long)mremap((void *)0x10000, page, 2 * page, MREMAP_MAYMOVE));
    unsigned char *fixed = mmap(NULL, 8 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *e = mremap(d, 3 * page, 3 * page, MREMAP_MAYMOVE | MREMAP_FIXED,
                              fixed + 2 * page);
    printf("fixed move: %s, contents %s\n", e == fixed + 2 * page ? "there" : "elsewhere",
           e[0] == 3 && e[1] == 10 ? "kept" : "lost");

    /* mincore: untouched pages are not resident, touched ones are. */
    unsigned char vec[8];
    unsigned char *m = mmap(NULL, 8 * page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    m[0] = 1;
    m[5 * page] = 1;
    /* (Untouched pages are not asked about: a machine may give every mapped page its frame
     * at once, and then answers them resident.) */
    show("mincore", mincore(m, 8 * page, vec));
    printf("touched pages resident: %d %d\n", vec[0] & 1, vec[5] & 1);
    show("mincore unaligned", mincore(m + 1, page, vec));
    munmap(m + 2 * page, page);
    show("mincore over a hole", mincore(m, 8 * page, vec));
    return 0;
}
