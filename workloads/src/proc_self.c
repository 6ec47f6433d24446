/* proc_self [args...]: reads its own /proc/self — maps (its code and stack are where the map
 * says), status (name, pid, one thread, blocked and caught signals, no_new_privs), stat,
 * cmdline and environ (its argv and environment), limits (after setrlimit), comm, and the
 * links exe, cwd, fd/N with fdinfo/N. Prints what it checked: deterministic output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

extern char **environ;
static char buf[1 << 16];

static long slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -errno;
    long n = 0, r;
    while ((r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += r;
    close(fd);
    buf[n] = 0;
    return n;
}

static const char *field(const char *name) {  /* a line of /proc/self/status, without "Name:\t" */
    static char line[256];
    size_t len = strlen(name);
    for (char *p = buf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, name, len) && p[len] == ':') {
            char *v = p + len + 1;
            while (*v == '\t' || *v == ' ') v++;
            size_t n = strcspn(v, "\n");
            memcpy(line, v, n);
            line[n] = 0;
            return line;
        }
    }
    return "(missing)";
}

static int in_map(uintptr_t addr, const char *perms, const char *name) {
    for (char *p = buf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        unsigned long lo, hi;
        char pm[5], rest[512] = "";
        if (sscanf(p, "%lx-%lx %4s %*s %*s %*s %511[^\n]", &lo, &hi, pm, rest) < 3) continue;
        if (addr >= lo && addr < hi)
            return !strncmp(pm, perms, 3) && (!name || strstr(rest, name));
    }
    return 0;
}

static void handler(int s) { (void)s; }

int main(int argc, char **argv) {
    (void)argc;
    int local = 0;
    printf("maps read: %s\n", slurp("/proc/self/maps") > 0 ? "yes" : "no");
    printf("code in an r-x map of the program: %s\n",
           in_map((uintptr_t)&main, "r-x", NULL) ? "yes" : "no");
    printf("stack variable in [stack]: %s\n",
           in_map((uintptr_t)&local, "rw-", "[stack]") ? "yes" : "no");
    void *heap = malloc(100);
    slurp("/proc/self/maps");
    printf("heap block mapped rw: %s\n", in_map((uintptr_t)heap, "rw-", NULL) ? "yes" : "no");

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGUSR2, handler);
    signal(SIGHUP, SIG_IGN);
    slurp("/proc/self/status");
    printf("Name: %s\n", field("Name"));
    printf("Pid is getpid: %s\n", atol(field("Pid")) == getpid() ? "yes" : "no");
    printf("Tgid is getpid: %s\n", atol(field("Tgid")) == getpid() ? "yes" : "no");
    printf("Threads: %s\n", field("Threads"));
    printf("SigBlk: %s\n", field("SigBlk"));
    printf("SigCgt has SIGUSR2: %s\n",
           strtoull(field("SigCgt"), NULL, 16) & (1ULL << (SIGUSR2 - 1)) ? "yes" : "no");
    printf("SigIgn has SIGHUP: %s\n",
           strtoull(field("SigIgn"), NULL, 16) & (1ULL << (SIGHUP - 1)) ? "yes" : "no");
    printf("NoNewPrivs: %s\n", field("NoNewPrivs"));
    printf("VmRSS in kB: %s\n", strstr(field("VmRSS"), "kB") ? "yes" : "no");
    printf("Umask: %s\n", field("Umask"));

    slurp("/proc/self/stat");
    long pid;
    char comm[64], state;
    sscanf(buf, "%ld %63s %c", &pid, comm, &state);
    printf("stat: pid is getpid %s, comm %s, state %c\n", pid == getpid() ? "yes" : "no",
           comm, state);
    slurp("/proc/self/comm");
    printf("comm: %s", buf);

    long n = slurp("/proc/self/cmdline");
    int same = 1, i = 0;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1, i++)
        same &= argv[i] && !strcmp(p, argv[i]);
    printf("cmdline is argv: %s (%d args)\n", same && !argv[i] ? "yes" : "no", i);
    n = slurp("/proc/self/environ");
    same = 1, i = 0;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1, i++)
        same &= environ[i] && !strcmp(p, environ[i]);
    printf("environ is the environment: %s (%d variables)\n",
           same && !environ[i] ? "yes" : "no", i);

    struct rlimit rl = {100, 200};
    setrlimit(RLIMIT_NOFILE, &rl);
    slurp("/proc/self/limits");
    char *line = strstr(buf, "Max open files");
    printf("%.*s\n", line ? (int)strcspn(line, "\n") : 0, line ? line : "");
    printf("first line: %.*s|\n", (int)strcspn(buf, "\n"), buf);

    char link[PATH_MAX], real[PATH_MAX], cwd[PATH_MAX];
    long k = readlink("/proc/self/exe", link, sizeof link - 1);
    link[k > 0 ? k : 0] = 0;
    realpath(argv[0], real);
    printf("exe is the program: %s\n", !strcmp(link, real) ? "yes" : "no");
    k = readlink("/proc/self/cwd", link, sizeof link - 1);
    link[k > 0 ? k : 0] = 0;
    printf("cwd is getcwd: %s\n", !strcmp(link, getcwd(cwd, sizeof cwd)) ? "yes" : "no");
    int fd = open(argv[0], O_RDONLY);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    k = readlink(path, link, sizeof link - 1);
    link[k > 0 ? k : 0] = 0;
    printf("fd link is the file: %s\n", !strcmp(link, real) ? "yes" : "no");
    read(fd, link, 5);
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    slurp(path);
    printf("fdinfo: %.*s\n", (int)strcspn(buf, "\n"), buf);
    int p[2];
    pipe(p);
    snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
    k = readlink(path, link, sizeof link - 1);
    link[k > 0 ? k : 0] = 0;
    printf("pipe link: %.6s\n", link);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int again = open(path, O_RDONLY);
    printf("reopened through fd/: %s\n", again >= 0 && read(again, link, 4) == 4 &&
           !memcmp(link, "\177ELF", 4) ? "from the start" : strerror(errno));
    snprintf(path, sizeof path, "/proc/self/fd/%d", 999);
    printf("closed fd link: %s\n", readlink(path, link, sizeof link) < 0 ? strerror(errno) : "?");
    return 0;
}
