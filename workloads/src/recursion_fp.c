/* Deep recursion with floating point (double + x87 long double + libm).
 * argv[1] = recursion depth (default 20000; ~200 bytes of stack per frame). */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>

#define REPEATS 50

static long double acc_ld;

__attribute__((noinline))
static double rec(int d, double x)
{
    double local[16];
    for (int i = 0; i < 16; i++)
        local[i] = sin(x + i * 0.001) * exp(-x * (i + 1) * 1e-3);
    if (d == 0) {
        double s = 0;
        for (int i = 0; i < 16; i++) s += local[i];
        return s;
    }
    double r = rec(d - 1, x * 0.9999 + 1e-4);
    /* use the frame's array after the call so it must live on the stack */
    long double t = (long double)local[d & 15] * (long double)r;
    acc_ld += t / (long double)(d + 1);
    return r * 0.5 + local[(d * 7) & 15] * 0.5 + sqrt(fabs(local[3])) * 1e-3;
}

/* recursive long double series: sum_{k=1..d} 1/k^2, summed from the deep end */
__attribute__((noinline))
static long double zeta2(int k, int d)
{
    long double pad[4];
    pad[k & 3] = 1.0L / ((long double)k * (long double)k);
    if (k == d) return pad[k & 3];
    long double rest = zeta2(k + 1, d);
    return rest + pad[k & 3];
}

/* adaptive Simpson on f(x) = exp(-x*x) * cos(3x) over [0, 2] */
static double f(double x) { return exp(-x * x) * cos(3 * x); }
static double simpson(double a, double b, double fa, double fm, double fb)
{
    return (b - a) / 6 * (fa + 4 * fm + fb);
}
static double asr(double a, double b, double fa, double fm, double fb,
                  double whole, double eps, int depth)
{
    double m = (a + b) / 2, lm = (a + m) / 2, rm = (m + b) / 2;
    double flm = f(lm), frm = f(rm);
    double left = simpson(a, m, fa, flm, fm), right = simpson(m, b, fm, frm, fb);
    if (depth <= 0 || fabs(left + right - whole) <= 15 * eps)
        return left + right + (left + right - whole) / 15;
    return asr(a, m, fa, flm, fm, left, eps / 2, depth - 1) +
           asr(m, b, fm, frm, fb, right, eps / 2, depth - 1);
}

int main(int argc, char **argv)
{
    int depth = argc > 1 ? atoi(argv[1]) : 20000;
    if (depth < 1) depth = 1;
    printf("recursion_fp: depth=%d repeats=%d\n", depth, REPEATS);

    double total = 0;
    for (int r = 0; r < REPEATS; r++) {
        double v = rec(depth, 0.25 + r * 0.01);
        total += v;
        if ((r + 1) % 10 == 0)
            printf("repeat %d: %.17g\n", r + 1, v);
    }
    printf("rec total: %.17g\n", total);
    printf("rec acc (long double): %.21Lg\n", acc_ld);

    long double z = zeta2(1, depth);
    long double pi2_6 = 3.14159265358979323846264338327950288L;
    pi2_6 = pi2_6 * pi2_6 / 6;
    printf("zeta2(%d): %.21Lg\n", depth, z);
    printf("pi^2/6 - zeta2: %.21Lg\n", pi2_6 - z);
    printf("sqrtl(z): %.21Lg\n", sqrtl(z));

    double a = 0, b = 2;
    double integ = asr(a, b, f(a), f((a + b) / 2), f(b),
                       simpson(a, b, f(a), f((a + b) / 2), f(b)), 1e-12, 40);
    printf("integral: %.17g\n", integ);
    printf("sqrt(2): %.17g sin(1): %.17g exp(1): %.17g\n", sqrt(2.0), sin(1.0), exp(1.0));
    printf("libm mix: %.17g\n", sqrt(total * total + 1) + sin(total) + exp(-fabs(total)));

    union { double d; unsigned long long u; } u1 = { total };
    union { long double ld; unsigned char b[16]; } u2 = { 0 };
    u2.ld = acc_ld;
    unsigned long long ck = u1.u;
    for (int i = 0; i < 10; i++) ck = (ck ^ u2.b[i]) * 0x100000001b3ULL;
    printf("checksum: %016llx\n", ck);
    return 0;
}
