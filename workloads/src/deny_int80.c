/* The 32-bit system call ABI (int $0x80) is a way around a filter that only knows the 64-bit
 * call numbers; the native engine's sandbox kills a process that uses it (run under Tender
 * only: natively the call succeeds). deny_int80 PATH: prints "before", tries to create PATH
 * with the i386 open call, then prints "after" (which a sandboxed process never reaches).
 * Without PATH it tries nothing: it prints a usage line and exits 2. */
#include <stdio.h>

int main(int argc, char **argv)
{
    static char path[256];  /* static: below 4 GiB, reachable by the 32-bit call */
    if (argc < 2) {
        printf("usage: deny_int80 PATH (tries nothing without it)\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s", argv[1]);
    printf("before\n");
    fflush(stdout);
    long r;
    __asm__ volatile("int $0x80"
                     : "=a"(r)
                     : "a"(5L), "b"(path), "c"(0101L), "d"(0644L)  /* open(O_CREAT|O_WRONLY) */
                     : "memory");
    printf("after: %ld\n", r);
    return 0;
}
