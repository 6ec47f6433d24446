/* A signal to one thread: pthread_kill (tgkill) of a running worker runs the handler in that
 * thread, not in the main thread, which runs meanwhile too; pthread_kill of the main thread
 * runs it in the main thread; tgkill of a thread that is gone answers ESRCH. Prints what it
 * saw; the same lines natively. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile long handled_in, worker_tid;
static volatile int ready, done, finish;

static long tid(void) { return syscall(SYS_gettid); }

static void on_usr1(int sig) { (void)sig; handled_in = tid(); }

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = tid();
    ready = 1;
    while (!handled_in)  /* running: the signal finds it on a processor, or about to be */
        sched_yield();
    printf("worker: handler ran in %s\n", handled_in == worker_tid ? "this thread" : "another");
    done = 1;
    while (!finish)  /* alive until the main thread has signalled itself */
        sched_yield();
    return 0;
}

int main(void)
{
    setvbuf(stdout, 0, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    while (!ready)
        sched_yield();
    int k = pthread_kill(t, SIGUSR1);
    while (!done)
        sched_yield();
    printf("pthread_kill worker: %d\n", k);
    handled_in = 0;
    k = pthread_kill(pthread_self(), SIGUSR1);
    printf("pthread_kill self: %d, handler ran in %s\n", k,
           handled_in == tid() ? "the main thread" : "another");
    finish = 1;
    pthread_join(t, 0);
    /* pthread_join returns once the kernel has cleared the thread's tid word, a moment
     * before the thread is gone: until then tgkill still finds it (signal 0 only asks). */
    while (syscall(SYS_tgkill, getpid(), worker_tid, 0) == 0)
        sched_yield();
    errno = 0;
    long r = syscall(SYS_tgkill, getpid(), worker_tid, SIGUSR1);
    int e = errno;
    printf("tgkill of an ended thread: %ld errno=%d\n", r, e);
    return 0;
}
