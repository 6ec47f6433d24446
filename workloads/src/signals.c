/* Signals a single-threaded program uses: alarm, setitimer ticks, raise into SA_SIGINFO,
   sigprocmask block/unblock, sigaltstack, siglongjmp out of a handler. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t flag, ticks, seen_signo, on_alt, counter;
static sigjmp_buf jump;
static char altstack[65536];

static void on_alarm(int sig) { (void)sig; flag = 1; }
static void on_tick(int sig) { (void)sig; ticks++; }
static void on_info(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; seen_signo = si->si_signo; }
static void on_usr2(int sig) {
    char here;
    (void)sig;
    on_alt = &here >= altstack && &here < altstack + sizeof altstack;
}
static void on_jump(int sig) { (void)sig; counter += 10; siglongjmp(jump, 1); }

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, 0);
    alarm(1);
    volatile unsigned long spins = 0;
    while (!flag) spins++;
    printf("alarm: flag %d\n", flag);

    sa.sa_handler = on_tick;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, 0);
    while (ticks < 5) spins++;
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, 0);
    printf("ticks: at least 5: %d\n", ticks >= 5);

    sa.sa_sigaction = on_info;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, 0);
    raise(SIGUSR1);
    printf("siginfo: si_signo %d\n", seen_signo);

    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    seen_signo = 0;
    sigprocmask(SIG_BLOCK, &set, 0);
    raise(SIGUSR1);
    sigpending(&pending);
    printf("blocked: seen %d pending %d\n", seen_signo, sigismember(&pending, SIGUSR1));
    sigprocmask(SIG_UNBLOCK, &set, 0);
    printf("unblocked: seen %d\n", seen_signo);

    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, 0);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, 0);
    raise(SIGUSR2);
    printf("altstack: on it %d\n", on_alt);

    sa.sa_handler = on_jump;
    sa.sa_flags = 0;
    sigaction(SIGTERM, &sa, 0);
    if (sigsetjmp(jump, 1) == 0) {
        counter = 1;
        raise(SIGTERM);
        printf("not reached\n");
    }
    printf("siglongjmp: counter %d\n", counter);
    double x = 1.0;
    for (int i = 0; i < 5; i++) { x *= 1.5; raise(SIGUSR1); }
    printf("fp kept: %.6f\n", x);
    signal(SIGUSR1, SIG_DFL);
    fflush(stdout);
    raise(SIGUSR1);
    return 0;
}
