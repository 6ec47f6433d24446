/* proc_view DIR: the process's /proc/self as a directory and as the view it runs in: lists
 * /proc/self/fd and fdinfo (the descriptors it holds), reads the links of a file and a pipe
 * and fdinfo's position, checks /proc/self/smaps against maps (same areas, sizes that add up,
 * the fields programs parse) and that mounts and mountinfo name "/" and /proc.
 * Output is deterministic: no addresses, inode numbers or sizes. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char buf[1 << 20];

static size_t slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s: cannot open\n", path); exit(1); }
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += r;
    close(fd);
    buf[n] = 0;
    return n;
}

static void list(const char *path) {
    DIR *d = opendir(path);
    if (!d) { printf("%s: cannot list\n", path); exit(1); }
    int seen[64] = {0}, dots = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') { dots++; continue; }
        int fd = atoi(e->d_name);
        if (fd != dirfd(d) && fd < 64) seen[fd] = 1;
    }
    printf("%s:", path);
    for (int i = 0; i < 64; i++) if (seen[i]) printf(" %d", i);
    printf(" (dots %d)\n", dots);
    closedir(d);
}

int main(int argc, char **argv) {
    if (argc < 2 || chdir(argv[1])) { fprintf(stderr, "usage: proc_view DIR\n"); return 2; }
    int f = open("file", O_CREAT | O_RDWR, 0600);
    int p[2];
    if (f < 0 || pipe(p) || write(f, "12345", 5) != 5) { perror("setup"); return 1; }
    list("/proc/self/fd");
    list("/proc/self/fdinfo");
    char path[64], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", f);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n > 0 ? n : 0] = 0;
    printf("file link ends in /file: %d\n", n > 5 && strcmp(link + n - 5, "/file") == 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", p[1]);
    n = readlink(path, link, sizeof link - 1);
    link[n > 0 ? n : 0] = 0;
    printf("pipe link: %.6s\n", link);
    n = readlink("/proc/self/fd/1", link, sizeof link - 1);
    link[n > 0 ? n : 0] = 0;
    printf("stdout link: %.6s\n", link);
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", f);
    slurp(path);
    printf("fdinfo: %.*s\n", (int)strcspn(buf, "\n"), buf);
    /* maps: areas and their total size */
    slurp("/proc/self/maps");
    long areas = 0, total = 0;
    for (char *line = buf; *line; line = strchr(line, '\n') + 1) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2) { areas++; total += (hi - lo) / 1024; }
        if (!strchr(line, '\n')) break;
    }
    slurp("/proc/self/smaps");
    long sareas = 0, stotal = 0, rss = 0, fields = 0;
    for (char *line = buf; *line; line = strchr(line, '\n') + 1) {
        unsigned long lo, hi;
        long kb;
        char dash;
        if (sscanf(line, "%lx%c%lx", &lo, &dash, &hi) == 3 && dash == '-') sareas++;
        else if (sscanf(line, "Size: %ld kB", &kb) == 1) stotal += kb;
        else if (sscanf(line, "Rss: %ld kB", &kb) == 1) rss += kb;
        if (!strncmp(line, "Private_Dirty:", 14) || !strncmp(line, "VmFlags:", 8) ||
            !strncmp(line, "Pss:", 4) || !strncmp(line, "Swap:", 5)) fields++;
        if (!strchr(line, '\n')) break;
    }
    printf("smaps: same areas %d, sizes add up %d, some resident %d, fields %d\n",
           sareas == areas, stotal == total, rss > 0 && rss <= stotal, fields == 4 * sareas);
    slurp("/proc/self/mounts");
    printf("mounts: root %d, proc %d\n", strstr(buf, " / ") != NULL,
           strstr(buf, " /proc proc ") != NULL);
    static char copy[sizeof buf];
    memcpy(copy, buf, sizeof buf);
    slurp("/proc/mounts");
    printf("/proc/mounts is the same: %d\n", strcmp(copy, buf) == 0);
    slurp("/proc/self/mountinfo");
    printf("mountinfo: root %d, separator %d\n", strstr(buf, " / / ") != NULL,
           strstr(buf, " - ") != NULL);
    close(f);
    unlink("file");
    printf("done\n");
    return 0;
}
