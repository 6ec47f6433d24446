/* double / float / long double arithmetic, conversions and formatting. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static volatile double vd[] = { 0.1, -2.5, 1e300, 1e-310, 3.0, 123456789.987654321 };
static volatile float vf[] = { 0.1f, -2.5f, 3.4e38f, 1e-40f, 3.0f, 16777217.0f };
static volatile long double vl[] = { 0.1L, -2.5L, 1e4000L, 1e-4940L, 3.0L };
static volatile int64_t vi[] = { 0, 1, -1, 9007199254740993LL, INT64_MIN, INT64_MAX };
static volatile uint64_t vu[] = { 0, 1, 0x8000000000000000ULL, 0xffffffffffffffffULL,
                                  18446744073709549568ULL };

int main(void)
{
    double a = vd[0], b = vd[1];
    printf("double: %.17g %.17g %.17g %.17g\n", a + b, a - b, a * b, a / b);
    printf("double %%a: %a %a %a\n", a, a / 3, vd[3]);
    printf("overflow: %g underflow: %.17g\n", vd[2] * vd[2], vd[3] / 1e10);
    printf("subnormal: %a %.17g\n", vd[3], vd[3]);
    double z = 0.0;
    printf("inf/nan: %g %g %g %g\n", 1.0 / (vd[4] - 3.0), -1.0 / (vd[4] - 3.0),
           fabs(sqrt(-vd[4]) * 0 + NAN), -z);  /* NaN sign: see README, known differences */
    printf("sqrt/fma-ish: %.17g %.17g\n", sqrt(vd[4]), vd[5] * vd[5] - 1e16);

    float fa = vf[0], fb = vf[1];
    printf("float: %.9g %.9g %.9g %.9g\n", fa + fb, fa - fb, fa * fb, fa / fb);
    printf("float %%a: %a %a\n", (double)fa, (double)vf[3]);
    printf("float overflow: %g rounding: %.9g\n", (double)(vf[2] * 10.0f), (double)vf[5]);
    printf("sqrtf: %.9g\n", (double)sqrtf(vf[4]));

    long double la = vl[0], lb = vl[1];
    printf("long double: %.21Lg %.21Lg %.21Lg %.21Lg\n", la + lb, la - lb, la * lb, la / lb);
    printf("long double %%La: %La %La\n", la, la / 3);
    printf("long double big/small: %Lg %Lg\n", vl[2], vl[3]);
    printf("long double %%Lg: %Lg %Lg\n", la / vl[4], sqrtl(vl[4]));
    printf("ld vs d: %.21Lg %.21Lg\n", (long double)(1.0 / 3.0), 1.0L / 3.0L);

    /* integer <-> float conversions (cvtsi2sd, cvttsd2si, unsigned paths, x87) */
    for (int i = 0; i < 6; i++)
        printf("i64 %lld -> d %.17g f %.9g ld %.21Lg\n", (long long)vi[i],
               (double)vi[i], (double)(float)vi[i], (long double)vi[i]);
    for (int i = 0; i < 5; i++)
        printf("u64 %llu -> d %.17g f %.9g ld %.21Lg\n", (unsigned long long)vu[i],
               (double)vu[i], (double)(float)vu[i], (long double)vu[i]);
    double cv[] = { 2.5, -2.5, 3.7, -3.7, 1e18, 9.2e18 };
    for (int i = 0; i < 6; i++) {
        volatile double d = cv[i];
        printf("d %.17g -> i64 %lld i32 %d u64 %llu lrint %ld round %.17g floor %.17g\n",
               d, (long long)d, (int)(d > 2e9 || d < -2e9 ? 0 : d),
               (unsigned long long)(d < 0 ? 0 : d), lrint(d), round(d), floor(d));
    }
    volatile long double ldc = 12345678901234567.89L;
    printf("ld -> i64 %lld u64 %llu\n", (long long)ldc, (unsigned long long)ldc);
    printf("float<->double: %.17g %.9g\n", (double)(float)0.1, (double)(float)1e-45);

    /* parsing */
    const char *strs[] = { "0.1", "-1.5e-3", "1e308", "1e-320", "0x1.8p3",
                           "inf", "-nan", "3.14159265358979323846264338", "  42abc" };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        char *end;
        double d = strtod(strs[i], &end);
        printf("strtod(\"%s\") = %.17g (%a) rest=\"%s\"\n", strs[i], d, d, end);
    }
    printf("atof: %.17g strtof: %.9g strtold: %.21Lg\n", atof("2.718281828459045"),
           (double)strtof("0.3", NULL), strtold("0.1", NULL));

    /* checksum of a float computation */
    double s = 0; float sf = 0; long double sl = 0;
    for (int i = 1; i <= 10000; i++) {
        s += 1.0 / i; sf += 1.0f / i; sl += 1.0L / ((long double)i * i);
    }
    printf("harmonic: %.17g float %.9g zeta2 %.21Lg\n", s, (double)sf, sl);
    uint64_t u; memcpy(&u, &s, 8);
    uint32_t uf; memcpy(&uf, &sf, 4);
    printf("checksum: %016llx %08x\n", (unsigned long long)u, uf);
    return 0;
}
