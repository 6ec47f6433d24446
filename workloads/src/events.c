/* events [rounds=20]: eventfd, timerfd, epoll and poll over a pipe, an eventfd and a timer,
 * as an event loop (asyncio, libuv) uses them; errors of epoll_ctl; pipe sizes; membarrier.
 * Output is deterministic: counts of timer ticks and elapsed times only as ok/bad. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    struct epoll_event ev, evs[8];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int efd = eventfd(0, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int pfd[2];
    if (ep < 0 || efd < 0 || tfd < 0 || pipe2(pfd, O_NONBLOCK)) { perror("setup"); return 1; }
    int fds[3] = {efd, tfd, pfd[0]};
    for (int i = 0; i < 3; i++) {
        ev.events = EPOLLIN;
        ev.data.u64 = i + 1;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev)) { perror("epoll_ctl"); return 1; }
    }
    show("empty wait", epoll_wait(ep, evs, 8, 0));
    struct itimerspec its = {{0, 5000000}, {0, 5000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    uint64_t ticks = 0, sum = 0;
    for (int r = 0; r < rounds; r++) {
        uint64_t add = r + 1, v;
        char c = 'a' + r % 26, got = '?';
        write(efd, &add, 8);
        write(pfd[1], &c, 1);
        int seen_e = 0, seen_p = 0, seen_t = 0;
        while (!(seen_e && seen_p && seen_t)) {
            int n = epoll_wait(ep, evs, 8, 2000);
            if (n <= 0) { printf("round %d: wait %d\n", r, n); return 1; }
            for (int i = 0; i < n; i++) {
                switch (evs[i].data.u64) {
                case 1: read(efd, &v, 8); sum += v; seen_e = 1; break;
                case 2: if (read(tfd, &v, 8) == 8) ticks += v; seen_t = 1; break;
                case 3: read(pfd[0], &got, 1); seen_p = 1; break;
                }
            }
        }
        printf("round %d: pipe %c sum %llu\n", r, got, (unsigned long long)sum);
    }
    printf("timer ticked: %s\n", ticks >= (uint64_t)rounds ? "ok" : "bad");
    its = (struct itimerspec){{0, 0}, {0, 0}};
    timerfd_settime(tfd, 0, &its, NULL);
    timerfd_gettime(tfd, &its);
    printf("disarmed: %ld %ld\n", (long)its.it_value.tv_sec, (long)its.it_value.tv_nsec);

    /* A blocking read of a one-shot timer waits for it (30 ms). */
    int bt = timerfd_create(CLOCK_MONOTONIC, 0);
    its = (struct itimerspec){{0, 0}, {0, 30000000}};
    double t0 = now();
    timerfd_settime(bt, 0, &its, NULL);
    uint64_t n;
    read(bt, &n, 8);
    printf("blocking timer read: %llu, waited %s\n", (unsigned long long)n,
           now() - t0 >= 0.029 ? "ok" : "bad");
    /* An absolute timer already in the past fires at once. */
    struct timespec past;
    clock_gettime(CLOCK_MONOTONIC, &past);
    its = (struct itimerspec){{0, 0}, {past.tv_sec, past.tv_nsec}};
    timerfd_settime(bt, TFD_TIMER_ABSTIME, &its, NULL);
    read(bt, &n, 8);
    printf("absolute timer: %llu\n", (unsigned long long)n);

    /* epoll_wait on nothing ready waits its whole timeout. */
    int idle = epoll_create1(0);
    t0 = now();
    show("idle wait", epoll_wait(idle, evs, 8, 60));
    printf("idle waited: %s\n", now() - t0 >= 0.059 ? "ok" : "bad");

    /* The semaphore flavour and the counter's limit. */
    int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    for (int i = 0; i < 4; i++) {
        uint64_t v = 0;
        long r = read(sem, &v, 8);
        printf("semaphore read %d: %ld %llu%s\n", i, r, (unsigned long long)v,
               r < 0 && errno == EAGAIN ? " EAGAIN" : "");
    }
    uint64_t big = 0xfffffffffffffffeULL, one = 1;
    show("fill counter", write(sem, &big, 8));
    show("overflow", write(sem, &one, 8));
    uint64_t bad = ~0ULL;
    show("write all ones", write(sem, &bad, 8));
    show("short read", read(sem, &one, 4));

    /* What epoll_ctl refuses. */
    int reg = open("/proc/self/exe", O_RDONLY);
    if (reg < 0) reg = open(argv[0], O_RDONLY);
    ev.events = EPOLLIN;
    show("add a regular file", epoll_ctl(ep, EPOLL_CTL_ADD, reg, &ev));
    show("add twice", epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev));
    show("delete unknown", epoll_ctl(ep, EPOLL_CTL_DEL, sem, &ev));
    show("mod unknown", epoll_ctl(ep, EPOLL_CTL_MOD, sem, &ev));
    show("add itself", epoll_ctl(ep, EPOLL_CTL_ADD, ep, &ev));
    show("delete", epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL));
    show("wait on a non-epoll", epoll_wait(efd, evs, 8, 0));
    /* A oneshot entry reports once. */
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = 9;
    epoll_ctl(ep, EPOLL_CTL_ADD, sem, &ev);
    show("oneshot first", epoll_wait(ep, evs, 8, 0));
    show("oneshot again", epoll_wait(ep, evs, 8, 0));

    /* poll: a pipe's write end is ready, its read end is not until written; a closed
     * descriptor answers POLLNVAL. */
    struct pollfd pf[3] = {{pfd[1], POLLOUT, 0}, {pfd[0], POLLIN, 0}, {999, POLLIN, 0}};
    show("poll", poll(pf, 3, 0));
    printf("revents: %x %x %x\n", pf[0].revents, pf[1].revents, pf[2].revents);
    write(pfd[1], "y", 1);
    show("poll after write", poll(pf, 2, 100));
    printf("revents: %x %x\n", pf[0].revents, pf[1].revents);
    close(pfd[1]);
    char drain;
    read(pfd[0], &drain, 1);
    show("poll after close", poll(&pf[1], 1, 0));
    printf("revents: %x\n", pf[1].revents);

    /* Pipe sizes. */
    int q[2];
    pipe(q);
    show("pipe size", fcntl(q[0], F_GETPIPE_SZ));
    show("set 100000", fcntl(q[1], F_SETPIPE_SZ, 100000));
    show("pipe size now", fcntl(q[0], F_GETPIPE_SZ));
    show("set 1", fcntl(q[1], F_SETPIPE_SZ, 1));
    show("not a pipe", fcntl(efd, F_GETPIPE_SZ));
    static char chunk[8192];
    fcntl(q[1], F_SETFL, O_NONBLOCK);
    long total = 0, w;
    while ((w = write(q[1], chunk, sizeof chunk)) > 0) total += w;
    printf("a full pipe holds %ld (then %s)\n", total, strerror(errno));
    show("shrink below contents", fcntl(q[1], F_SETPIPE_SZ, 4096));

    /* membarrier: one thread, every command at once. */
    long mask = syscall(SYS_membarrier, 0, 0);
    printf("membarrier query: %s\n", mask > 0 && (mask & 1) ? "ok" : "bad");
    show("membarrier private expedited registration", syscall(SYS_membarrier, 16, 0));
    show("membarrier private expedited", syscall(SYS_membarrier, 8, 0));
    show("membarrier bad flags", syscall(SYS_membarrier, 1, 1));
    return 0;
}
