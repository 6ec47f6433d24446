/* sigfd [rounds=20]: signalfd and pidfd of itself. Blocks SIGUSR1 and SIGUSR2, makes a
 * signalfd for them, sends them to itself (kill, and pidfd_send_signal through a pidfd of its
 * own pid) and reads the records back (signo, code, pid is its own); poll and epoll say when
 * one is waiting; the mask is changed with signalfd(fd, ...); a pidfd of another pid is ESRCH.
 * Output is deterministic: no pids or times. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

static int sfd;

static void take(const char *what) {
    struct signalfd_siginfo si[4];
    ssize_t n = read(sfd, si, sizeof si);
    printf("%s:", what);
    if (n < 0) { printf(" %s\n", strerror(errno)); return; }
    for (int i = 0; i < n / (ssize_t)sizeof si[0]; i++)
        printf(" sig %u code %d own %d", si[i].ssi_signo, si[i].ssi_code,
               si[i].ssi_pid == (uint32_t)getpid());
    printf("\n");
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { printf("signalfd: %s\n", strerror(errno)); return 1; }
    take("empty");
    char small[16];
    ssize_t r = read(sfd, small, sizeof small);
    printf("small: %zd %s\n", r, strerror(errno));
    int pfd = syscall(SYS_pidfd_open, getpid(), 0);
    printf("pidfd: %d\n", pfd >= 0);
    r = syscall(SYS_pidfd_open, 4000000, 0);  /* no such process */
    printf("other pid: %zd %s\n", r, strerror(errno));
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 9}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    for (int i = 0; i < rounds; i++) {
        struct pollfd p = {sfd, POLLIN, 0};
        int before = poll(&p, 1, 0);
        kill(getpid(), SIGUSR1);
        if (syscall(SYS_pidfd_send_signal, pfd, SIGUSR2, NULL, 0)) perror("pidfd_send_signal");
        int after = poll(&p, 1, 0);
        int e = epoll_wait(ep, &got, 1, 0);
        printf("round %d: poll %d->%d epoll %d\n", i, before, after, e);
        take(" read");
        usleep(2000);
    }
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR2);
    printf("remask: %d\n", signalfd(sfd, &mask, 0) == sfd);
    kill(getpid(), SIGUSR1);
    kill(getpid(), SIGUSR2);
    take("only usr2");
    sigset_t pending;
    sigpending(&pending);
    printf("usr1 still pending: %d\n", sigismember(&pending, SIGUSR1));
    /* blocking read: a signal sent first is taken at once */
    int blocking = signalfd(-1, &mask, 0);
    kill(getpid(), SIGUSR2);
    struct signalfd_siginfo si;
    r = read(blocking, &si, sizeof si);
    printf("blocking read: %zd sig %u\n", r, si.ssi_signo);
    printf("done\n");
    return 0;
}
