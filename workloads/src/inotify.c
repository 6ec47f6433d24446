/* inotify DIR [rounds=10]: watches DIR (and a directory and a file in it), makes, writes,
 * renames, chmods, reads, truncates and removes files there, and after each step prints the
 * events it reads (names, masks, whether a move's two halves share a cookie). Also: an empty
 * non-blocking read, a too-small buffer, poll and epoll readiness, a watch added twice, a
 * watch removed (IN_IGNORED). Output is deterministic: no wd numbers or cookies.
 * inotify DIR wait: watches DIR for names made or removed, says "inotify: ready", then waits
 * in a blocking read for what someone else does there and prints the first events read. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static int ifd, wd_top, wd_sub, wd_file;
static uint32_t last_cookie;

static const char *who(int wd) {
    if (wd == wd_top) return "top";
    if (wd == wd_sub) return "sub";
    if (wd == wd_file) return "file";
    return "?";
}

static void masks(uint32_t m) {
    static const struct { uint32_t bit; const char *name; } names[] = {
        {IN_ACCESS, "ACCESS"}, {IN_MODIFY, "MODIFY"}, {IN_ATTRIB, "ATTRIB"},
        {IN_CLOSE_WRITE, "CLOSE_WRITE"}, {IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"},
        {IN_OPEN, "OPEN"}, {IN_MOVED_FROM, "MOVED_FROM"}, {IN_MOVED_TO, "MOVED_TO"},
        {IN_CREATE, "CREATE"}, {IN_DELETE, "DELETE"}, {IN_DELETE_SELF, "DELETE_SELF"},
        {IN_MOVE_SELF, "MOVE_SELF"}, {IN_IGNORED, "IGNORED"}, {IN_ISDIR, "ISDIR"},
        {IN_Q_OVERFLOW, "Q_OVERFLOW"}};
    const char *sep = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (m & names[i].bit) { printf("%s%s", sep, names[i].name); sep = "|"; m &= ~names[i].bit; }
    if (m) printf("%s0x%x", sep, m);
}

/* Print the events in buf[0..n). */
static void show(const char *buf, ssize_t n) {
    for (const char *at = buf; at < buf + n;) {
        const struct inotify_event *e = (const struct inotify_event *)at;
        printf(" %s:", who(e->wd));
        masks(e->mask);
        if (e->len) printf(":%s", e->name);
        if (e->mask & IN_MOVED_FROM) last_cookie = e->cookie;
        if (e->mask & IN_MOVED_TO) printf(e->cookie && e->cookie == last_cookie ? "(paired)" : "(unpaired)");
        at += sizeof *e + e->len;
    }
}

/* Read every event queued now (the descriptor is non-blocking) and print them. */
static void drain(const char *step) {
    char buf[4096] __attribute__((aligned(8)));
    printf("%s:", step);
    int any = 0;
    for (;;) {
        ssize_t n = read(ifd, buf, sizeof buf);
        if (n < 0) {
            if (errno != EAGAIN) printf(" read: %s", strerror(errno));
            break;
        }
        show(buf, n);
        any = 1;
    }
    printf("%s\n", any ? "" : " none");
}

static void put(const char *path, const char *text, int flags) {
    int fd = open(path, O_WRONLY | flags, 0644);
    if (fd < 0) { printf("open %s: %s\n", path, strerror(errno)); exit(1); }
    if (write(fd, text, strlen(text)) < 0) printf("write: %s\n", strerror(errno));
    if (write(fd, "\n", 1) < 0) printf("write: %s\n", strerror(errno));
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2 || chdir(argv[1])) { fprintf(stderr, "usage: inotify DIR [rounds]\n"); return 2; }
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        ifd = inotify_init1(IN_CLOEXEC);  /* blocking: the read waits for the change */
        wd_top = inotify_add_watch(ifd, ".", IN_CREATE | IN_DELETE | IN_MOVED_TO);
        printf("inotify: ready\n");
        fflush(stdout);
        char buf[4096] __attribute__((aligned(8)));
        ssize_t n = read(ifd, buf, sizeof buf);
        printf("blocking read:");
        show(buf, n);
        printf("\n");
        return 0;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 10;
    uint32_t all = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE |
                   IN_OPEN | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE |
                   IN_DELETE_SELF | IN_MOVE_SELF;
    ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ifd < 0) { printf("inotify_init1: %s\n", strerror(errno)); return 1; }
    printf("cloexec %d nonblock %d\n", (fcntl(ifd, F_GETFD) & FD_CLOEXEC) != 0,
           (fcntl(ifd, F_GETFL) & O_NONBLOCK) != 0);
    if (mkdir("sub", 0755)) { perror("mkdir"); return 1; }
    wd_top = inotify_add_watch(ifd, ".", all);
    wd_sub = inotify_add_watch(ifd, "sub", all);
    printf("watches %d %d, again same %d\n", wd_top > 0, wd_sub > wd_top,
           inotify_add_watch(ifd, ".", all) == wd_top);
    int r1 = inotify_add_watch(ifd, "nothing-here", all);
    printf("missing: %d %s\n", r1, strerror(errno));
    r1 = inotify_add_watch(ifd, ".", 0);
    printf("no mask: %d %s\n", r1, strerror(errno));
    drain("quiet");
    struct pollfd pfd = {ifd, POLLIN, 0};
    printf("poll before: %d\n", poll(&pfd, 1, 0));
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, ifd, &ev);
    printf("epoll before: %d\n", epoll_wait(ep, &got, 1, 0));
    put("a", "first", O_CREAT | O_EXCL);
    r1 = poll(&pfd, 1, 0);
    printf("poll after: %d revents %x\n", r1, pfd.revents);
    r1 = epoll_wait(ep, &got, 1, 0);
    printf("epoll after: %d data %llu\n", r1, (unsigned long long)got.data.u64);
    int queued = -1;
    ioctl(ifd, FIONREAD, &queued);
    printf("FIONREAD: %d\n", queued);
    char small[8];
    ssize_t r2 = read(ifd, small, sizeof small);
    printf("small buffer: %zd %s\n", r2, strerror(errno));
    drain("create a");
    for (int r = 0; r < rounds; r++) {
        char f[32], g[32], s[48], d[32];
        snprintf(f, sizeof f, "f%d", r);
        snprintf(g, sizeof g, "g%d", r);
        snprintf(s, sizeof s, "sub/s%d", r);
        snprintf(d, sizeof d, "d%d", r);
        printf("round %d\n", r);
        put(f, "data", O_CREAT | O_TRUNC);
        drain(" write new");
        put(f, "more", O_APPEND);
        drain(" append");
        chmod(f, 0600);
        drain(" chmod");
        rename(f, g);
        drain(" rename");
        rename(g, s);
        drain(" into sub");
        int fd = open(s, O_RDONLY);
        char b[64];
        ssize_t n = read(fd, b, sizeof b);
        close(fd);
        printf(" read %zd\n", n);
        drain(" read back");
        truncate(s, 2);
        drain(" truncate");
        mkdir(d, 0700);
        drain(" mkdir");
        rmdir(d);
        drain(" rmdir");
        unlink(s);
        drain(" unlink");
    }
    wd_file = inotify_add_watch(ifd, "a", IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_CLOSE_WRITE);
    put("a", "second", O_APPEND);
    drain("file watch");
    unlink("a");
    drain("unlink watched");
    printf("rm sub: %d\n", inotify_rm_watch(ifd, wd_sub));
    r1 = inotify_rm_watch(ifd, wd_sub);
    printf("rm again: %d %s\n", r1, strerror(errno));
    drain("removed");
    rmdir("sub");
    drain("rmdir sub");
    close(ep);
    close(ifd);
    printf("done\n");
    return 0;
}
