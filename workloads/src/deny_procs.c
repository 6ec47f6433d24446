/* A Tender process must not make host processes or signal others: denied before the kernel
 * sees it (run under Tender only; natively some would succeed).
 * deny_procs VICTIM_PID [SLEEP_MS]: tries fork, clone, clone3, kill, tkill, tgkill, ptrace
 * and pidfd signals on VICTIM_PID and setsid (fork and clone make Tender processes, not
 * host ones), then sleeps SLEEP_MS (default 300) so the caller
 * can look at the host, prints "done" and execs `/bin/sh -c 'exit 7'` (under Tender the
 * machine replaces the program; the host process stays what it was). Without VICTIM_PID it
 * tries nothing: it prints a usage line and exits 2. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void show(const char *what, long r)
{
    printf("%s: %ld errno=%d\n", what, r, r < 0 ? errno : 0);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: deny_procs VICTIM_PID [SLEEP_MS] (tries nothing without it)\n");
        return 2;
    }
    long victim = atol(argv[1]);
    if (victim <= 1) {
        printf("deny_procs: VICTIM_PID must be a process of yours, not %ld\n", victim);
        return 2;
    }
    long sleep_ms = argc > 2 ? atol(argv[2]) : 300;
    long r;

    errno = 0;
    r = syscall(SYS_fork);
    if (r == 0)
        _exit(0);
    show("fork", r);
    errno = 0;
    r = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        _exit(0);
    show("clone", r);
    errno = 0; show("clone3", syscall(SYS_clone3, 0, 0));
    errno = 0; show("kill(victim, SIGTERM)", syscall(SYS_kill, victim, SIGTERM));
    errno = 0; show("kill(1, 0)", syscall(SYS_kill, 1, 0));  /* signal 0: only a probe */
    errno = 0; show("tkill(victim, SIGTERM)", syscall(SYS_tkill, victim, SIGTERM));
    errno = 0; show("tgkill(victim, SIGTERM)", syscall(SYS_tgkill, victim, victim, SIGTERM));
    errno = 0; show("ptrace(ATTACH, victim)", syscall(SYS_ptrace, 16, victim, 0, 0));
    errno = 0;
    long fd = syscall(SYS_pidfd_open, victim, 0);
    show("pidfd_open(victim)", fd);
    errno = 0;
    show("pidfd_send_signal", syscall(SYS_pidfd_send_signal, fd >= 0 ? fd : 3, SIGTERM, 0, 0));
    errno = 0; show("setsid", syscall(SYS_setsid));
    struct timespec t = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
    nanosleep(&t, 0);
    printf("done\n");
    fflush(stdout);
    char *sh_argv[] = {"/bin/sh", "-c", "exit 7", 0};
    char *sh_envp[] = {0};
    errno = 0; show("execve(/bin/sh)", syscall(SYS_execve, "/bin/sh", sh_argv, sh_envp));
    return 0;
}
