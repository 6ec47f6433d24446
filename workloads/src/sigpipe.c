/* SIGPIPE: writes to a pipe whose read end is closed. With SIGPIPE ignored, handled (SA_SIGINFO)
   or blocked, write and writev answer -1 EPIPE (pwrite on a pipe is ESPIPE first); with the
   default action the first write kills the process by SIGPIPE, as it does natively.
   sigpipe [ignore|handle|block|default]...: the cases named, in order (default: all four). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static volatile sig_atomic_t seen_signo, seen_code, seen_self;

static void on_pipe(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    seen_signo = sig;
    seen_code = si->si_code;
    seen_self = si->si_pid == getpid();
}

static int broken_pipe(void)
{
    int fds[2];
    if (pipe(fds) != 0) {
        printf("pipe: errno=%d\n", errno);
        return -1;
    }
    close(fds[0]);
    return fds[1];
}

static void try_writes(const char *what)
{
    int w = broken_pipe();
    errno = 0;
    long r = write(w, "x", 1);
    printf("%s: write %ld errno=%d (%s)\n", what, r, errno, strerror(errno));
    struct iovec iov[2] = {{"ab", 2}, {"cd", 2}};
    errno = 0;
    r = writev(w, iov, 2);
    printf("%s: writev %ld errno=%d\n", what, r, errno);
    errno = 0;
    r = pwrite(w, "x", 1, 0);
    printf("%s: pwrite %ld errno=%d\n", what, r, errno);
    close(w);
    fflush(stdout);
}

static void run(const char *mode)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (!strcmp(mode, "ignore")) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, 0);
        try_writes("ignore");
    } else if (!strcmp(mode, "handle")) {
        sa.sa_sigaction = on_pipe;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGPIPE, &sa, 0);
        try_writes("handle");
        printf("handle: handler saw signal %d code %d from itself %d\n", seen_signo,
               seen_code, seen_self);
    } else if (!strcmp(mode, "block")) {
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, 0);
        sigset_t set, pending;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        sigprocmask(SIG_BLOCK, &set, 0);
        try_writes("block");
        sigpending(&pending);
        printf("block: pending %d\n", sigismember(&pending, SIGPIPE));
        sa.sa_handler = SIG_IGN;  /* discards the pending one, so unblocking is harmless */
        sigaction(SIGPIPE, &sa, 0);
        sigprocmask(SIG_UNBLOCK, &set, 0);
        printf("block: unblocked after ignoring\n");
    } else if (!strcmp(mode, "default")) {
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, 0);
        int w = broken_pipe();
        printf("default: writing\n");
        fflush(stdout);
        long r = write(w, "x", 1);
        printf("default: still alive, write %ld errno=%d\n", r, errno);
    } else {
        printf("unknown case %s: the cases are ignore, handle, block, default\n", mode);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static char *all[] = {"ignore", "handle", "block", "default"};
    if (argc < 2)
        for (int i = 0; i < 4; i++)
            run(all[i]);
    for (int i = 1; i < argc; i++)
        run(argv[i]);
    return 0;
}
