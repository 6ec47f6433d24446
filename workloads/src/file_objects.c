/* file_objects DIR [rounds=30]: files whose identity is the descriptor, not a name — a file
 * unlinked while open (written, read back, fstat and fchmod on it), an O_TMPFILE, a memfd
 * with seals — and creat, fallocate (grow, keep size, punch a hole). Between steps it
 * computes a while, so a machine can move it mid-way. Deterministic output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <utime.h>

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
}

static volatile uint64_t sink;
static void work(void) {  /* ~10 ms of computing: time for a move */
    uint64_t x = 1;
    for (int i = 0; i < 3000000; i++) x = x * 6364136223846793005ULL + 1;
    sink = x;
}

static void describe(const char *what, int fd) {
    struct stat st;
    if (fstat(fd, &st)) { printf("%s: fstat %s\n", what, strerror(errno)); return; }
    printf("%s: size %ld links %ld mode %o regular %d\n", what, (long)st.st_size,
           (long)st.st_nlink, st.st_mode & 07777, S_ISREG(st.st_mode));
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: file_objects DIR [rounds]\n"); return 2; }
    if (chdir(argv[1])) { perror(argv[1]); return 1; }
    int rounds = argc > 2 ? atoi(argv[2]) : 30;
    char line[64];

    /* A file unlinked while open keeps its contents and grows after. */
    int fd = open("ghost.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    for (int i = 0; i < 10; i++) {
        int n = snprintf(line, sizeof line, "line %d before unlink\n", i);
        write(fd, line, n);
    }
    int dup_fd = dup(fd);
    show("unlink", unlink("ghost.txt"));
    show("open by name now", open("ghost.txt", O_RDONLY));
    describe("unlinked", fd);
    show("fchmod", fchmod(fd, 0600));
    describe("after fchmod", dup_fd);
    for (int r = 0; r < rounds; r++) {
        work();
        int n = snprintf(line, sizeof line, "round %d after unlink\n", r);
        write(fd, line, n);
    }
    show("offset shared by dup", lseek(dup_fd, 0, SEEK_CUR));
    describe("grown", fd);
    lseek(fd, 0, SEEK_SET);
    static char buf[65536];
    long got = read(dup_fd, buf, sizeof buf);
    uint64_t h = 1469598103934665603ULL;
    for (long i = 0; i < got; i++) h = (h ^ (unsigned char)buf[i]) * 1099511628211ULL;
    printf("read back %ld bytes, fnv %016llx\n", got, (unsigned long long)h);
    char tail[32] = {0};
    pread(fd, tail, 21, got - 21);
    printf("last line: %s", tail);
    close(dup_fd);
    close(fd);

    /* O_TMPFILE: a file that never had a name. */
    int t = open(".", O_TMPFILE | O_RDWR, 0640);
    if (t < 0) {
        printf("O_TMPFILE: %s\n", strerror(errno));
    } else {
        write(t, "temporary contents\n", 19);
        work();
        describe("tmpfile", t);
        char back[32] = {0};
        pread(t, back, 19, 0);
        printf("tmpfile reads: %s", back);
        close(t);
    }
    show("O_TMPFILE read-only", open(".", O_TMPFILE | O_RDONLY, 0600));

    /* memfd: contents, size, seals. */
    int m = memfd_create("state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    show("memfd write", write(m, "memfd data 0123456789\n", 22));
    show("ftruncate", ftruncate(m, 8192));
    describe("memfd", m);
    work();
    char *map = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, m, 0);
    printf("mapped: %.10s\n", map == MAP_FAILED ? "(failed)" : map);
    show("seal", fcntl(m, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_WRITE));
    show("seals", fcntl(m, F_GET_SEALS));
    show("write sealed", write(m, "x", 1));
    show("grow sealed", ftruncate(m, 16384));
    int plain = memfd_create("plain", 0);
    show("seal without sealing", fcntl(plain, F_ADD_SEALS, F_SEAL_WRITE));
    show("memfd bad flags", memfd_create("bad", 0x100));

    /* creat and fallocate. */
    int c = creat("created.bin", 0644);
    show("creat", c >= 0 ? 0 : -1);
    write(c, "abcdefghij", 10);
    show("creat is write-only", read(c, line, 1));
    close(c);
    int fa = open("created.bin", O_RDWR);
    show("fallocate grow", fallocate(fa, 0, 0, 100000));
    describe("allocated", fa);
    show("fallocate keep size", fallocate(fa, FALLOC_FL_KEEP_SIZE, 0, 200000));
    describe("kept", fa);
    show("punch", fallocate(fa, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2, 5));
    char pun[11] = {0};
    pread(fa, pun, 10, 0);
    printf("after punch:");
    for (int i = 0; i < 10; i++) printf(" %02x", (unsigned char)pun[i]);
    printf("\n");
    show("punch without keep size", fallocate(fa, FALLOC_FL_PUNCH_HOLE, 0, 5));
    show("fallocate negative", fallocate(fa, 0, -1, 5));
    close(fa);
    int ro = open("created.bin", O_RDONLY);
    show("fallocate read-only", fallocate(ro, 0, 0, 5));
    close(ro);
    int p[2];
    pipe(p);
    show("fallocate pipe", fallocate(p[1], 0, 0, 5));
    /* owners, old-style times, sync */
    show("chown to itself", chown("created.bin", getuid(), getgid()));
    show("lchown to itself", lchown("created.bin", -1, -1));
    struct utimbuf ub = {1000000000, 1200000000};
    show("utime", utime("created.bin", &ub));
    struct stat st;
    stat("created.bin", &st);
    printf("mtime %ld atime %ld\n", (long)st.st_mtime, (long)st.st_atime);
    struct timeval tv[2] = {{1300000000, 5}, {1400000000, 7}};
    show("utimes", utimes("created.bin", tv));
    stat("created.bin", &st);
    printf("mtime %ld.%09ld\n", (long)st.st_mtime, (long)st.st_mtim.tv_nsec);
    tv[1].tv_usec = 2000000;
    show("utimes bad usec", utimes("created.bin", tv));
    sync();
    show("syncfs", syncfs(p[0]));
    unlink("created.bin");
    return 0;
}
