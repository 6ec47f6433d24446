/* Futex waits in a process with one thread, as glibc and Go make them: a wait whose word does
   not match returns EAGAIN; a relative and an absolute (bitset, CLOCK_MONOTONIC) timeout end
   with ETIMEDOUT; an untimed wait ends only by a signal (SIGALRM from an interval timer whose
   handler sets the word): interrupted without SA_RESTART, restarted and finding the word
   changed with it. "wait" prints "ready" and waits untimed for a signal from outside (SIGTERM's
   default action ends it). Output does not depend on when the signals come. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* linux/futex.h's values (musl's headers do not carry it). */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129
#define FUTEX_WAIT_BITSET_PRIVATE 137
#define FUTEX_BITSET_MATCH_ANY -1

static volatile int word;

static long futex(volatile int *addr, int op, int val, const struct timespec *t, int bits) {
    return syscall(SYS_futex, addr, op, val, t, NULL, bits);
}

static const char *outcome(long r) {
    if (r == 0) return "0";
    return errno == EAGAIN ? "EAGAIN" : errno == ETIMEDOUT ? "ETIMEDOUT"
         : errno == EINTR ? "EINTR" : strerror(errno);
}

static void on_alarm(int sig) { (void)sig; word = 1; }

static void untimed(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    word = 0;
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    long r = futex(&word, FUTEX_WAIT_PRIVATE, 0, NULL, 0);
    /* The alarm may come before the wait begins (then the word already differs: EAGAIN);
       either way the wait ended by the signal and the handler ran. */
    int ended = r == -1 && (errno == EINTR || errno == EAGAIN);
    printf("untimed wait%s: %s, word %d\n", restart ? " (SA_RESTART)" : "",
           ended ? "ended by the signal" : outcome(r), word);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        printf("ready\n");
        fflush(stdout);
        for (;;) futex(&word, FUTEX_WAIT_PRIVATE, 0, NULL, 0);
    }
    printf("mismatch: %s\n", outcome(futex(&word, FUTEX_WAIT_PRIVATE, 7, NULL, 0)));
    struct timespec rel = {0, 20 * 1000 * 1000};
    printf("relative timeout: %s\n", outcome(futex(&word, FUTEX_WAIT_PRIVATE, 0, &rel, 0)));
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_nsec += 20 * 1000 * 1000;
    if (at.tv_nsec >= 1000000000) { at.tv_sec++; at.tv_nsec -= 1000000000; }
    printf("absolute timeout: %s\n",
           outcome(futex(&word, FUTEX_WAIT_BITSET_PRIVATE, 0, &at, FUTEX_BITSET_MATCH_ANY)));
    printf("wake: %s\n", outcome(futex(&word, FUTEX_WAKE_PRIVATE, 1, NULL, 0)));
    untimed(0);
    untimed(1);
    return 0;
}
