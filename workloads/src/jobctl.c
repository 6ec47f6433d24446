/* Signals between the processes of a tree and job control, checked from the parent: kill
 * of a child by pid, of a process group by -pgid and by killpg, of its own group by
 * kill(0), the ESRCH and EINVAL answers, and a child stopped by SIGSTOP and SIGTSTP and
 * continued by SIGCONT, reported by waitpid(WUNTRACED|WCONTINUED) and waitid(WSTOPPED),
 * with SIGCHLD on a stop unless SA_NOCLDSTOP; a stopped child does not run. Everything
 * happens in a child that leads a group of its own, so kill(0) reaches only the tree.
 * Prints what it saw; the same lines natively. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t chld_code;

static void on_chld(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    chld_code = si->si_code;
}

static void show(const char *what, pid_t pid, pid_t got, int st)
{
    if (got != pid)
        printf("%s: waited %s errno=%d\n", what, got < 0 ? "-1" : "another", errno);
    else if (WIFEXITED(st))
        printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        printf("%s: killed by %d\n", what, WTERMSIG(st));
    else if (WIFSTOPPED(st))
        printf("%s: stopped by %d\n", what, WSTOPSIG(st));
    else if (WIFCONTINUED(st))
        printf("%s: continued (status %#x)\n", what, st);
    else
        printf("%s: status %#x\n", what, st);
}

/* A wait, then what it found (each argument read after the call). */
#define WAIT(what, pid, ...) do { pid_t got_ = waitpid(__VA_ARGS__); \
        show(what, pid, got_, st); } while (0)
/* A call's answer and errno after it. */
#define ANSWER(what, call) do { errno = 0; int r_ = (int)(call); \
        printf("%s: %d errno=%d\n", what, r_, errno); } while (0)

/* A child that says it is ready on `ready`, then waits for signals (or, with `echo`, copies
 * each byte of `in` back to `out`). */
static pid_t child(int ready, pid_t group, int in, int out)
{
    pid_t pid = fork();
    if (pid != 0) {
        if (group >= 0)
            setpgid(pid, group);  /* both sides, so it holds whoever runs first */
        return pid;
    }
    if (group >= 0)
        setpgid(0, group);
    char c = 'r';
    if (write(ready, &c, 1) != 1)
        _exit(90);
    for (;;) {
        if (in < 0) {
            pause();
        } else if (read(in, &c, 1) == 1) {
            if (write(out, &c, 1) != 1)
                _exit(91);
        } else {
            _exit(92);
        }
    }
}

static void await_ready(int ready, int n)
{
    char c;
    for (int i = 0; i < n; i++)
        if (read(ready, &c, 1) != 1)
            printf("ready: read failed errno=%d\n", errno);
}

static int manager(void)
{
    int st = 0, ready[2], down[2], up[2];
    if (pipe(ready) || pipe(down) || pipe(up))
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, 0);

    /* By pid; then the answers about a pid that is gone and a bad signal. */
    pid_t a = child(ready[1], -1, -1, -1);
    await_ready(ready[0], 1);
    printf("kill pid: %d\n", kill(a, SIGTERM));
    WAIT("kill pid", a, a, &st, 0);
    ANSWER("kill gone", kill(a, 0));
    ANSWER("kill bad signal", kill(getpid(), 99));
    printf("kill -1 check: %d\n", kill(-1, 0));

    /* A group of two by -pgid, another by killpg, then the group that is gone. */
    pid_t b = child(ready[1], 0, -1, -1);
    pid_t c = child(ready[1], b, -1, -1);
    await_ready(ready[0], 2);
    printf("group: same %d\n", getpgid(b) == b && getpgid(c) == b);
    printf("kill group: %d\n", kill(-b, SIGUSR1));
    WAIT("group first", b, b, &st, 0);
    WAIT("group second", c, c, &st, 0);
    ANSWER("kill gone group", kill(-b, SIGUSR1));
    pid_t d = child(ready[1], 0, -1, -1);
    await_ready(ready[0], 1);
    printf("killpg: %d\n", killpg(d, SIGHUP));
    WAIT("killpg", d, -d, &st, 0);

    /* Its own group: kill(0) reaches the child that stayed in it, not the ignoring self. */
    signal(SIGUSR2, SIG_IGN);
    pid_t e = fork();
    if (e == 0) {
        signal(SIGUSR2, SIG_DFL);
        char r = 'r';
        if (write(ready[1], &r, 1) != 1)
            _exit(90);
        for (;;)
            pause();
    }
    await_ready(ready[0], 1);
    printf("kill own group: %d\n", kill(0, SIGUSR2));
    WAIT("own group", e, e, &st, 0);

    /* Stopped and continued: reported once each, SIGCHLD on the stop. */
    pid_t f = child(ready[1], -1, down[0], up[1]);
    await_ready(ready[0], 1);
    chld_code = 0;
    kill(f, SIGSTOP);
    WAIT("stop", f, f, &st, WUNTRACED | WCONTINUED);
    printf("sigchld on stop: code %d\n", (int)chld_code);
    ANSWER("nothing more", waitpid(f, &st, WNOHANG | WUNTRACED | WCONTINUED));
    char x = 'x';
    if (write(down[1], &x, 1) != 1)
        return 1;
    struct pollfd pfd = {up[0], POLLIN, 0};
    printf("runs while stopped: %d\n", poll(&pfd, 1, 300));
    kill(f, SIGCONT);
    WAIT("continue", f, f, &st, WUNTRACED | WCONTINUED);
    printf("echo after continue: %d\n", (int)read(up[0], &x, 1) == 1 && x == 'x');

    sa.sa_flags |= SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, 0);
    chld_code = 0;
    kill(f, SIGTSTP);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = waitid(P_PID, (id_t)f, &si, WSTOPPED);
    printf("waitid stop: %d code %d status %d pid %d\n", r, si.si_code, si.si_status,
           si.si_pid == f);
    printf("sigchld on stop with SA_NOCLDSTOP: code %d\n", (int)chld_code);
    kill(f, SIGCONT);
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, (id_t)f, &si, WCONTINUED);
    printf("waitid continue: %d code %d status %d\n", r, si.si_code, si.si_status);
    kill(f, SIGSTOP);
    WAIT("stop again", f, f, &st, WUNTRACED);
    kill(f, SIGKILL);  /* a stopped process still dies by SIGKILL */
    WAIT("kill stopped", f, f, &st, 0);
    ANSWER("no child", waitpid(-1, &st, WNOHANG));
    return 0;
}

int main(void)
{
    setvbuf(stdout, 0, _IOLBF, 0);
    pid_t m = fork();
    if (m == 0) {
        if (setpgid(0, 0) != 0)
            _exit(80);
        _exit(manager());
    }
    int st = 0;
    WAIT("manager", m, m, &st, 0);
    return 0;
}
