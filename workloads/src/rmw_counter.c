/* Memory words updated with read-modify-write instructions (incq/xorq/addq m).
 * argv[1] = iterations (default 20000000). */
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long counter;
static volatile unsigned long x;
static volatile unsigned long sum;

#define MIX(i) ((i) * 0x9e3779b97f4a7c15UL)   /* xor operand, so x isn't trivially 0 */

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 20000000UL;
    printf("rmw_counter: n=%lu\n", n);
    for (unsigned long i = 0; i < n; i++) {
        asm volatile("incq %0" : "+m"(counter));
        asm volatile("xorq %1, %0" : "+m"(x) : "r"(MIX(i)));
        asm volatile("addq %1, %0" : "+m"(sum) : "r"(i));
    }
    unsigned long ex = 0;                       /* expected x, in plain C */
    for (unsigned long i = 0; i < n; i++) ex ^= MIX(i);
    unsigned long es = n ? n * (n - 1) / 2 : 0;   /* wraps mod 2^64 like addq */
    printf("counter=%lu\n", counter);
    printf("x=%lu\n", x);
    printf("sum=%lu\n", sum);
    printf("expected counter=%lu x=%lu sum=%lu\n", n, ex, es);
    printf("%s\n", (counter == n && x == ex && sum == es) ? "ok" : "MISMATCH");
    return 0;
}
