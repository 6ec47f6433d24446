/* Deep recursion, argv[1] = depth (default 70000), 64-byte local array per
 * frame.  The frame is 80 bytes (64 buf + 8 pad + 8 return address), so the
 * default uses ~5.3 MiB of stack (fits the usual 8 MiB limit; ~100000 is max). */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline))
static unsigned long deep(unsigned long d)
{
    volatile unsigned char buf[64];
    for (int i = 0; i < 64; i++) buf[i] = (unsigned char)(d * 7 + i);
    unsigned long r = d ? deep(d - 1) : 0;
    for (int i = 0; i < 64; i += 8) r = r * 31 + buf[i];
    return r;
}

int main(int argc, char **argv)
{
    unsigned long depth = argc > 1 ? strtoul(argv[1], NULL, 0) : 70000;
    printf("deepstack: depth=%lu\n", depth);
    unsigned long r = deep(depth);
    printf("result: %lu\n", r);
    return 0;
}
