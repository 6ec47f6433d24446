#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    errno = 0;
    long r = syscall(SYS_write, 1, (void *)0x10, 5);
    int e = errno;
    printf("write(1, 0x10, 5) = %ld errno=%d%s\n", r, e,
           (r == -1 && e == EFAULT) ? " (EFAULT ok)" : "");
    return 0;
}
