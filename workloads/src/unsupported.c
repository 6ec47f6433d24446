/* Syscalls the runtime does not support: it should return -ENOSYS (-38).
 * Natively socket succeeds and shmget answers EINVAL, so native output differs (only the
 * runtime's is checked). */
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    errno = 0;
    long r = syscall(SYS_socket, 2, 1, 0);
    printf("socket: %ld errno=%d\n", r, r < 0 ? errno : 0);

    errno = 0;
    r = syscall(SYS_shmget, 0, 0, 0);  /* IPC_PRIVATE, size 0: natively EINVAL, nothing made */
    printf("shmget: %ld errno=%d\n", r, r < 0 ? errno : 0);
    return 0;
}
