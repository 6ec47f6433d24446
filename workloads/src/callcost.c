/* callcost: make N cheap calls in a loop, so that a run's time over N is the cost of one.
 *   callcost getppid N   - the getppid system call (mediated under Tender)
 *   callcost clock N     - clock_gettime(CLOCK_MONOTONIC) through the C library (the vDSO
 *                          where there is one)
 *   callcost none N      - the loop alone
 * Prints the calls made and a check that the clock never went backwards, and on standard
 * error the loop's own time per call (read with CLOCK_MONOTONIC around it), so that what
 * starting the program costs is not counted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: callcost getppid|clock|none N\n");
        return 2;
    }
    long n = atol(argv[2]);
    long backwards = 0;
    volatile long sink = 0;
    struct timespec last = { 0, 0 }, now;
    int mode = !strcmp(argv[1], "getppid") ? 1 : !strcmp(argv[1], "clock") ? 2 : 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (mode == 1) {
            sink += getppid();
        } else if (mode == 2) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec < last.tv_sec || (now.tv_sec == last.tv_sec && now.tv_nsec < last.tv_nsec))
                backwards++;
            last = now;
        } else {
            sink += i;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double spent = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("%s calls: %ld, clock went backwards: %ld\n", argv[1], n, backwards);
    fprintf(stderr, "%.3f ns per call\n", n > 0 ? spent / n : 0.0);
    return 0;
}
