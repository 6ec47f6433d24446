/* A Tender process must not reach the host's files: each call below is denied before the
 * kernel sees it (run under Tender only; natively they would succeed).
 * deny_files DIR: tries to create DIR/created-*, remove or change DIR/victim, read
 * /etc/passwd, and misuse fd 3 (the native engine's memory file inside the host process).
 * Prints one line per call: its result and errno. Without DIR it tries nothing (so running it
 * natively by accident is harmless): it prints a usage line and exits 2. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *what, long r)
{
    printf("%s: %ld errno=%d\n", what, r, r < 0 ? errno : 0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: deny_files DIR (tries nothing without it)\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[4096], victim[4096];
    snprintf(victim, sizeof victim, "%s/victim", dir);

    snprintf(path, sizeof path, "%s/created-open", dir);
    errno = 0; show("open(O_CREAT)", syscall(SYS_open, path, O_CREAT | O_WRONLY, 0644));
    snprintf(path, sizeof path, "%s/created-openat", dir);
    errno = 0; show("openat(O_CREAT)", syscall(SYS_openat, AT_FDCWD, path, O_CREAT | O_WRONLY, 0644));
    snprintf(path, sizeof path, "%s/created-creat", dir);
    errno = 0; show("creat", syscall(SYS_creat, path, 0644));
    snprintf(path, sizeof path, "%s/created-x32", dir);
    errno = 0; show("open(x32 ABI)", syscall(0x40000000 | 2, path, O_CREAT | O_WRONLY, 0644));
    snprintf(path, sizeof path, "%s/created-dir", dir);
    errno = 0; show("mkdir", syscall(SYS_mkdir, path, 0755));
    errno = 0; show("unlink(victim)", syscall(SYS_unlink, victim));
    errno = 0; show("truncate(victim)", syscall(SYS_truncate, victim, 0));
    errno = 0; show("chmod(victim)", syscall(SYS_chmod, victim, 0));
    snprintf(path, sizeof path, "%s/created-rename", dir);
    errno = 0; show("rename(victim)", syscall(SYS_rename, victim, path));
    errno = 0; show("open(/etc/passwd)", syscall(SYS_open, "/etc/passwd", O_RDONLY));

    char byte = 'x';
    errno = 0; show("write(3)", syscall(SYS_write, 3, &byte, 1));
    errno = 0; show("pwrite64(3)", syscall(SYS_pwrite64, 3, &byte, 1, 0));
    errno = 0; show("read(3)", syscall(SYS_read, 3, &byte, 1));
    errno = 0; show("ftruncate(3)", syscall(SYS_ftruncate, 3, 0));
    errno = 0; show("fallocate(3)", syscall(SYS_fallocate, 3, 3, 0, 4096));
    errno = 0; show("dup(3)", syscall(SYS_dup, 3));
    errno = 0;
    show("mmap(fd 3, MAP_SHARED)",
         syscall(SYS_mmap, 0, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0));
    printf("done\n");
    return 0;
}
