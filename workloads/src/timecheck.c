#include <stdio.h>
#include <time.h>

#define Y2020 1577836800L

int main(void)
{
    struct timespec t0, t1, rt, ts = { 0, 20 * 1000 * 1000 };
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nanosleep(&ts, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("monotonic sleep: %s\n", (ns >= 20000000LL && ns < 2000000000LL) ? "ok" : "bad");

    clock_gettime(CLOCK_REALTIME, &rt);
    printf("realtime after 2020: %s\n", rt.tv_sec > Y2020 ? "ok" : "bad");

    time_t t = time(NULL);
    long d = (long)(t - rt.tv_sec);
    printf("time(): %s\n", (t > Y2020 && d >= -1 && d <= 5) ? "ok" : "bad");
    return 0;
}
