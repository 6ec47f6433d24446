/* EINTR: a nanosleep of 5 s cut short by a handled SIGALRM (setitimer, 300 ms) answers -1
   EINTR with the time left written back; without SA_RESTART a pause-like wait also ends.
   Then one with the signal ignored sleeps its whole (short) time and answers 0.
   eintr: prints what each call answered; times only as ranges, so the output is exact. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) { (void)sig; alarms++; }

static void arm(long ms)
{
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &it, 0);
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, 0);

    arm(300);
    struct timespec req = {5, 0}, rem = {0, 0};
    errno = 0;
    int r = nanosleep(&req, &rem);
    double left = rem.tv_sec + rem.tv_nsec / 1e9;
    printf("nanosleep: %d errno=%d (%s) alarms %d\n", r, errno, strerror(errno), alarms);
    printf("nanosleep: time left between 4 and 4.9 s: %d\n", left > 4.0 && left < 4.9);

    /* SA_RESTART does not restart nanosleep: it is never restarted after a handler. */
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, 0);
    arm(200);
    errno = 0;
    r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
    left = rem.tv_sec + rem.tv_nsec / 1e9;
    printf("clock_nanosleep: %d (EINTR %d) alarms %d left over 4 s: %d\n", r, r == EINTR,
           alarms, left > 4.0 && left < 4.9);

    sa.sa_handler = SIG_IGN;
    sigaction(SIGALRM, &sa, 0);
    arm(50);
    struct timespec shortreq = {0, 200000000};
    errno = 0;
    r = nanosleep(&shortreq, 0);
    printf("ignored: nanosleep %d errno=%d alarms %d\n", r, errno, alarms);
    return 0;
}
