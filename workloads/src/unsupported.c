/* Syscalls the runtime does not support: it should return -ENOSYS (-38).
 * Natively both succeed, so native output differs (only the runtime's is checked). */
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(void)
{
    errno = 0;
    long r = syscall(SYS_socket, 2, 1, 0);
    printf("socket: %ld errno=%d\n", r, r < 0 ? errno : 0);
    fflush(stdout);           /* don't duplicate buffered output into a child */

    errno = 0;
    r = syscall(SYS_fork);
    if (r == 0)
        _exit(0);             /* native child: leave silently */
    if (r > 0) {
        waitpid((pid_t)r, NULL, 0);
        printf("fork: succeeded natively (child reaped)\n");
    } else {
        printf("fork: %ld errno=%d\n", r, errno);
    }
    return 0;
}
