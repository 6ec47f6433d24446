/* links DIR [rounds=20] | links DIR reader|writer|dev: in DIR, hard links (link, linkat with
 * AT_SYMLINK_FOLLOW and AT_EMPTY_PATH), symbolic links (relative, to a directory, dangling,
 * looping), mknod of regular files and FIFOs, and a FIFO used by this one process (a
 * non-blocking reader first, then a writer; O_RDWR; EOF, EAGAIN, ENXIO, EPIPE, a full pipe).
 * Between steps it computes, so a machine can move it with FIFO ends open and data in them.
 * `reader` and `writer` are the two sides of DIR/pipe between two processes (made by the
 * writer if missing): each blocks in open until the other comes (`writer hold` keeps its
 * end open until its stdin ends). `refusals [OTHER]` tries a
 * device node and a socket, and names in and links to a directory OTHER beside DIR.
 * Deterministic output. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
    fflush(stdout);
}

static volatile uint64_t sink;
static void work(void) {  /* ~10 ms of computing: time for a move */
    uint64_t x = 1;
    for (int i = 0; i < 3000000; i++) x = x * 6364136223846793005ULL + 1;
    sink = x;
}

static const char *kind(mode_t m) {
    return S_ISREG(m) ? "regular" : S_ISLNK(m) ? "symlink" : S_ISDIR(m) ? "directory"
         : S_ISFIFO(m) ? "fifo" : "other";
}

static void describe(const char *name) {
    struct stat l, s;
    if (lstat(name, &l)) { printf("%s: lstat %s\n", name, strerror(errno)); return; }
    printf("%s: %s links %ld mode %o", name, kind(l.st_mode), (long)l.st_nlink,
           l.st_mode & 07777);
    if (stat(name, &s)) printf(", follows to: %s\n", strerror(errno));
    else printf(", follows to %s size %ld\n", kind(s.st_mode), (long)s.st_size);
}

static void same(const char *a, const char *b) {
    struct stat x, y;
    if (stat(a, &x) || stat(b, &y)) { printf("same %s %s: %s\n", a, b, strerror(errno)); return; }
    printf("%s and %s one file: %d\n", a, b, x.st_ino == y.st_ino && x.st_dev == y.st_dev);
}

static void cat(const char *name) {
    char buf[256];
    int fd = open(name, O_RDONLY);
    if (fd < 0) { printf("read %s: %s\n", name, strerror(errno)); return; }
    long n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) { printf("read %s: %s\n", name, strerror(errno)); return; }
    buf[n] = 0;
    printf("read %s: %s", name, buf);
}

static void link_of(const char *name) {
    char buf[256];
    long n = readlink(name, buf, sizeof buf - 1);
    if (n < 0) { printf("readlink %s: %s\n", name, strerror(errno)); return; }
    buf[n] = 0;
    printf("readlink %s: %s\n", name, buf);
}

static void listing(void) {
    DIR *d = opendir(".");
    char names[64][64];
    int types[64], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        if (e->d_name[0] == '.') continue;
        snprintf(names[n], sizeof names[n], "%s", e->d_name);
        types[n++] = e->d_type;
    }
    closedir(d);
    for (int i = 0; i < n; i++)  /* sorted: the order of a directory is the host's */
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) < 0) {
                char t[64];
                memcpy(t, names[i], 64); memcpy(names[i], names[j], 64); memcpy(names[j], t, 64);
                int k = types[i]; types[i] = types[j]; types[j] = k;
            }
    printf("listing:");
    for (int i = 0; i < n; i++) printf(" %s(%d)", names[i], types[i]);
    printf("\n");
}

static int side(int writer, int hold) {
    if (writer && mkfifo("pipe", 0600) && errno != EEXIST) { perror("mkfifo"); return 1; }
    int fd = open("pipe", writer ? O_WRONLY : O_RDONLY);
    if (fd < 0) { perror("open pipe"); return 1; }
    printf("%s opened\n", writer ? "writer" : "reader");
    fflush(stdout);
    if (writer) {
        char line[64];
        for (int i = 0; i < 50; i++) {
            int n = snprintf(line, sizeof line, "line %d through the fifo\n", i);
            if (write(fd, line, n) != n) { perror("write"); return 1; }
            if (i % 10 == 0) work();
        }
        if (hold) {  /* keep the end open until stdin ends */
            char c;
            printf("writer wrote\n");
            fflush(stdout);
            while (read(0, &c, 1) > 0) {}
        }
        close(fd);
        printf("writer done\n");
        return 0;
    }
    char buf[4096];
    long total = 0, n, lines = 0;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        total += n;
        for (long i = 0; i < n; i++) lines += buf[i] == '\n';
    }
    printf("reader got %ld bytes, %ld lines, then %s\n", total, lines, n ? strerror(errno) : "EOF");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: links DIR [rounds|reader|writer|dev]\n"); return 2; }
    if (chdir(argv[1])) { perror(argv[1]); return 1; }
    if (argc > 2 && !strcmp(argv[2], "reader")) return side(0, 0);
    if (argc > 2 && !strcmp(argv[2], "writer")) return side(1, argc > 3);
    if (argc > 2 && !strcmp(argv[2], "refusals")) {
        show("mknod char device", mknod("null2", S_IFCHR | 0600, makedev(1, 3)));
        show("mknod socket", mknod("sock", S_IFSOCK | 0600, 0));
        if (argc > 3) {  /* OTHER: a directory beside DIR, holding kept.txt */
            char there[512], kept[512];
            snprintf(kept, sizeof kept, "%s/kept.txt", argv[3]);
            snprintf(there, sizeof there, "%s/s", argv[3]);
            show("symlink into OTHER", symlink("x", there));
            snprintf(there, sizeof there, "%s/l", argv[3]);
            show("link into OTHER", link("kept.txt", there));
            show("link from OTHER", link(kept, "l"));
            snprintf(there, sizeof there, "%s/p", argv[3]);
            show("mkfifo in OTHER", mkfifo(there, 0600));
            cat(kept);
        }
        return 0;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    signal(SIGPIPE, SIG_IGN);
    umask(022);

    /* Hard links. */
    int fd = open("a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write(fd, "the first file\n", 15);
    close(fd);
    show("link a.txt b.txt", link("a.txt", "b.txt"));
    describe("a.txt");
    same("a.txt", "b.txt");
    show("link over a name", link("a.txt", "b.txt"));
    show("link of nothing", link("missing", "c.txt"));
    mkdir("sub", 0755);
    show("link of a directory", link("sub", "subl"));
    show("linkat bad flags", linkat(AT_FDCWD, "a.txt", AT_FDCWD, "z.txt", 0x8000));
    work();

    /* Symbolic links. */
    show("symlink s1 -> a.txt", symlink("a.txt", "s1"));
    link_of("s1");
    describe("s1");
    cat("s1");
    show("symlink over a name", symlink("b.txt", "s1"));
    show("symlink empty target", symlink("", "s0"));
    fd = open("sub/f", O_CREAT | O_WRONLY | O_TRUNC, 0600);
    write(fd, "in sub\n", 7);
    close(fd);
    show("symlink sdir -> sub", symlink("sub", "sdir"));
    cat("sdir/f");
    show("symlink to .. from sub", symlink("../a.txt", "sub/up"));
    cat("sub/up");
    show("symlink dangling", symlink("nowhere/at/all", "dangling"));
    describe("dangling");
    show("open dangling", open("dangling", O_RDONLY));
    show("create through dangling dir", open("dangling/x", O_CREAT | O_WRONLY, 0600));
    symlink("loop2", "loop1");
    symlink("loop1", "loop2");
    show("open a loop", open("loop1", O_RDONLY));
    int dir = open("sub", O_RDONLY | O_DIRECTORY);
    show("symlinkat in sub", symlinkat("f", dir, "g"));
    cat("sub/g");
    work();

    /* linkat: the link itself, the file it names, a descriptor's file. */
    show("linkat s1 hs (the symlink)", linkat(AT_FDCWD, "s1", AT_FDCWD, "hs", 0));
    describe("hs");
    show("linkat s1 hf follow", linkat(AT_FDCWD, "s1", AT_FDCWD, "hf", AT_SYMLINK_FOLLOW));
    describe("hf");
    fd = open("a.txt", O_RDONLY);
    show("linkat empty path", linkat(fd, "", dir, "e.txt", AT_EMPTY_PATH));
    close(fd);
    describe("sub/e.txt");
    same("a.txt", "sub/e.txt");
    show("unlink a.txt", unlink("a.txt"));
    describe("b.txt");
    cat("b.txt");
    describe("s1");
    cat("s1");
    work();

    /* mknod: a regular file, a FIFO. */
    show("mknod regular", mknod("reg", S_IFREG | 0666, 0));
    describe("reg");
    show("mknod no type", mknod("reg0", 0640, 0));
    describe("reg0");
    show("mknodat fifo", mknodat(dir, "ff", S_IFIFO | 0666, 0));
    describe("sub/ff");
    show("mknod over a name", mknod("reg", S_IFIFO | 0600, 0));
    show("mkfifo", mkfifo("fifo", 0600));
    describe("fifo");
    show("symlink sf -> fifo", symlink("fifo", "sf"));
    close(dir);
    work();

    /* The FIFO, by one process. */
    show("writer without a reader", open("fifo", O_WRONLY | O_NONBLOCK));
    int r = open("sf", O_RDONLY | O_NONBLOCK);
    show("reader, not waiting", r >= 0);
    char buf[256];
    show("read, no writer yet (EOF)", read(r, buf, sizeof buf));
    int w = open("fifo", O_WRONLY);
    show("writer (a reader is there)", w >= 0);
    struct stat st, named;
    fstat(r, &st);
    stat("fifo", &named);
    printf("fstat reader: %s mode %o size %ld, the named file: %d\n", kind(st.st_mode),
           st.st_mode & 07777, (long)st.st_size,
           st.st_ino == named.st_ino && st.st_dev == named.st_dev);
    show("read, nothing written", read(r, buf, sizeof buf));
    long got = 0, sent = 0;
    for (int i = 0; i < rounds; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "round %d through the fifo\n", i);
        sent += write(w, line, n);
        work();
        long m = read(r, buf, sizeof buf - 1);
        if (m > 0) { buf[m] = 0; got += m; if (i < 3 || i == rounds - 1) printf("got: %s", buf); }
    }
    printf("sent %ld, got %ld\n", sent, got);
    static char big[100000];
    memset(big, 'x', sizeof big);
    int wn = open("fifo", O_WRONLY | O_NONBLOCK);
    show("fill it (non-blocking)", write(wn, big, sizeof big));
    show("full", write(wn, big, 10));
    long drained = 0, m;
    while ((m = read(r, big, sizeof big)) > 0) drained += m;
    printf("drained %ld, then %s\n", drained, m < 0 ? strerror(errno) : "EOF");
    close(wn);
    work();
    close(w);
    show("read after the writers closed (EOF)", read(r, buf, sizeof buf));
    close(r);
    int rw = open("fifo", O_RDWR);
    show("write on O_RDWR", write(rw, "both ends\n", 10));
    work();
    m = read(rw, buf, sizeof buf - 1);
    buf[m > 0 ? m : 0] = 0;
    printf("read on O_RDWR: %s", buf);
    close(rw);
    r = open("fifo", O_RDONLY | O_NONBLOCK);
    w = open("fifo", O_WRONLY);
    close(r);
    show("write with no reader", write(w, "lost\n", 5));
    close(w);
    show("unlink fifo", unlink("fifo"));
    listing();
    return 0;
}
