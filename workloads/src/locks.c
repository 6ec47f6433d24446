/* locks DIR [all|hold|try]: advisory locks on a file in DIR.
 *   all      one process: flock between descriptions and through dup, POSIX record locks
 *            (never against itself; dropped by closing any descriptor of the file), OFD locks
 *            (per description, against POSIX ones too), ranges, F_GETLK answers; it computes
 *            between steps, so a machine can move it while it holds them.
 *   hold     takes an exclusive flock and a POSIX write lock, prints "held", keeps them until
 *            its standard input ends.
 *   try      asks without waiting (busy or free), then waits for the flock: "got it".
 * Deterministic output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
}

static volatile uint64_t sink;
static void work(void) {
    uint64_t x = 1;
    for (int i = 0; i < 3000000; i++) x = x * 6364136223846793005ULL + 1;
    sink = x;
}

static int record(int fd, int cmd, short type, long start, long len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, cmd, &fl);
}

static void query(const char *what, int fd, int cmd, short type, long start, long len) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl)) { printf("%s: -1 %s\n", what, strerror(errno)); return; }
    if (fl.l_type == F_UNLCK) printf("%s: unlocked\n", what);
    else printf("%s: %s [%ld, +%ld) pid %s\n", what, fl.l_type == F_WRLCK ? "write" : "read",
                (long)fl.l_start, (long)fl.l_len, fl.l_pid == -1 ? "-1" : "a process");
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: locks DIR [all|hold|try]\n"); return 2; }
    if (chdir(argv[1])) { perror(argv[1]); return 1; }
    const char *mode = argc > 2 ? argv[2] : "all";
    setvbuf(stdout, NULL, _IOLBF, 0);  /* each line out at once: another process waits on it */
    if (!strcmp(mode, "hold")) {
        int fd = open("lockfile", O_CREAT | O_RDWR, 0644);
        show("flock", flock(fd, LOCK_EX));
        show("record", record(fd, F_SETLK, F_WRLCK, 0, 0));
        printf("held\n");
        char c;
        while (read(0, &c, 1) > 0) {}
        return 0;
    }
    if (!strcmp(mode, "try")) {
        int fd = open("lockfile", O_CREAT | O_RDWR, 0644);
        int r = flock(fd, LOCK_EX | LOCK_NB);
        printf("flock now: %s\n", r ? (errno == EWOULDBLOCK ? "busy" : strerror(errno)) : "free");
        query("record now", fd, F_GETLK, F_WRLCK, 0, 0);
        show("record without waiting", record(fd, F_SETLK, F_WRLCK, 0, 0));
        show("flock, waiting", flock(fd, LOCK_EX));
        printf("got it\n");
        return 0;
    }
    int a = open("lockfile", O_CREAT | O_RDWR, 0644);
    int b = open("lockfile", O_RDWR);
    write(a, "0123456789", 10);
    /* flock: per description */
    show("flock a ex", flock(a, LOCK_EX));
    show("flock b ex nb", flock(b, LOCK_EX | LOCK_NB));
    int a2 = dup(a);
    show("flock dup of a", flock(a2, LOCK_EX | LOCK_NB));
    work();
    show("flock a sh", flock(a, LOCK_SH));
    show("flock b sh nb", flock(b, LOCK_SH | LOCK_NB));
    show("flock b ex nb again", flock(b, LOCK_EX | LOCK_NB));
    show("flock a un", flock(a, LOCK_UN));
    show("flock b ex nb now", flock(b, LOCK_EX | LOCK_NB));
    show("flock bad op", flock(a, 0));
    flock(b, LOCK_UN);
    work();
    /* POSIX record locks: the process's, never against itself */
    show("posix write a [0,10)", record(a, F_SETLK, F_WRLCK, 0, 10));
    show("posix write b [5,20)", record(b, F_SETLK, F_WRLCK, 5, 15));
    query("posix getlk", b, F_GETLK, F_WRLCK, 0, 0);
    /* OFD locks conflict with the process's POSIX locks */
    show("ofd write b [0,5)", record(b, F_OFD_SETLK, F_WRLCK, 0, 5));
    query("ofd getlk b", b, F_OFD_GETLK, F_WRLCK, 0, 0);
    work();
    /* closing any descriptor of the file drops the process's POSIX locks */
    int c = open("lockfile", O_RDONLY);
    close(c);
    show("ofd write b [0,5) after a close", record(b, F_OFD_SETLK, F_WRLCK, 0, 5));
    query("ofd getlk a", a, F_OFD_GETLK, F_WRLCK, 0, 0);
    query("posix getlk sees the ofd lock", a, F_GETLK, F_RDLCK, 3, 1);
    query("beside it", a, F_OFD_GETLK, F_WRLCK, 5, 5);
    show("ofd read a [100,200)", record(a, F_OFD_SETLK, F_RDLCK, 100, 100));
    show("ofd read b [150,160)", record(b, F_OFD_SETLK, F_RDLCK, 150, 10));
    show("ofd write b [150,160)", record(b, F_OFD_SETLK, F_WRLCK, 150, 10));
    show("ofd write b [200,300)", record(b, F_OFD_SETLK, F_WRLCK, 200, 100));
    work();
    show("ofd unlock a [120,130)", record(a, F_OFD_SETLK, F_UNLCK, 120, 10));
    show("ofd write b [120,130)", record(b, F_OFD_SETLK, F_WRLCK, 120, 10));
    query("what is left of a", b, F_OFD_GETLK, F_WRLCK, 100, 200);
    int ro = open("lockfile", O_RDONLY);
    show("write lock on a read-only descriptor", record(ro, F_SETLK, F_WRLCK, 0, 1));
    struct flock bad = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_pid = 7};
    show("ofd with l_pid", fcntl(b, F_OFD_SETLK, &bad));
    show("negative start", record(a, F_SETLK, F_RDLCK, -5, 1));
    unlink("lockfile");
    return 0;
}
