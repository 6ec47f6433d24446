/* transfers DIR: data moved between descriptors by the kernel — sendfile (file to pipe, with
 * and without an offset), splice (file to pipe, pipe to file), tee (one pipe into another,
 * not consumed), copy_file_range, preadv/pwritev — and the refusals. Deterministic output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <unistd.h>

static void show(const char *what, long r) {
    if (r < 0) printf("%s: -1 %s\n", what, strerror(errno));
    else printf("%s: %ld\n", what, r);
}

static void drain(const char *what, int fd) {
    char buf[256];
    long n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("%s: [%s]\n", what, buf);
}

int main(int argc, char **argv) {
    if (argc < 2 || chdir(argv[1])) { fprintf(stderr, "usage: transfers DIR\n"); return 2; }
    int f = open("source.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    write(f, "0123456789abcdefghijklmnopqrstuvwxyz", 36);
    int p[2], q[2];
    pipe(p);
    pipe(q);
    lseek(f, 0, SEEK_SET);
    show("sendfile 10", sendfile(p[1], f, NULL, 10));
    show("offset after", lseek(f, 0, SEEK_CUR));
    drain("pipe has", p[0]);
    off_t off = 20;
    show("sendfile at 20", sendfile(p[1], f, &off, 6));
    printf("off now %ld, file offset %ld\n", (long)off, (long)lseek(f, 0, SEEK_CUR));
    drain("pipe has", p[0]);
    loff_t lo = 30;
    show("splice file to pipe", splice(f, &lo, p[1], NULL, 4, 0));
    show("tee", tee(p[0], q[1], 100, 0));
    drain("tee copy", q[0]);
    int g = open("dest.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    show("splice pipe to file", splice(p[0], NULL, g, NULL, 100, 0));
    show("splice with no pipe", splice(f, NULL, g, NULL, 4, 0));
    loff_t bad = 0;
    show("splice offset on a pipe", splice(p[0], &bad, g, NULL, 4, 0));
    show("splice empty nonblock", splice(p[0], NULL, g, NULL, 4, SPLICE_F_NONBLOCK));
    loff_t in = 0, out = 100;
    show("copy_file_range", copy_file_range(f, &in, g, &out, 8, 0));
    printf("in %ld out %ld\n", (long)in, (long)out);
    show("copy_file_range flags", copy_file_range(f, &in, g, &out, 8, 1));
    show("copy_file_range pipe", copy_file_range(p[0], NULL, g, NULL, 8, 0));
    char a[5] = {0}, b[7] = {0};
    struct iovec v[2] = {{a, 4}, {b, 6}};
    show("preadv at 2", preadv(f, v, 2, 2));
    printf("vectors: [%s] [%s]\n", a, b);
    struct iovec w[2] = {{"AB", 2}, {"CD", 2}};
    show("pwritev at 1", pwritev(g, w, 2, 1));
    char back[128] = {0};
    long n = pread(g, back, sizeof back - 1, 0);
    for (long i = 0; i < n; i++) if (!back[i]) back[i] = '.';
    printf("dest: %ld [%s]\n", n, back);
    close(p[1]);
    show("splice at end of a pipe", splice(p[0], NULL, g, NULL, 4, 0));
    unlink("source.txt");
    unlink("dest.txt");
    return 0;
}
