/* A process tree on one machine, checked from both sides: fork and wait for an exit status
 * and a death by signal, getppid in the child, WNOHANG on a running child, ECHILD without
 * one, a child that execs this program again (`forkwait exec-child`), SIGCHLD to a handler,
 * a pipe carrying WORK x 64 KiB from a child to its parent, and a descriptor's offset shared
 * by both, a process group and a session of a child's own. Prints what it saw; the same
 * lines natively. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t chld;

static void on_chld(int sig) { (void)sig; chld++; }

static void show(const char *what, pid_t pid, pid_t got, const int *status)
{
    int st = *status;
    if (got != pid) {
        printf("%s: waited %s errno=%d\n", what, got < 0 ? "-1" : "another", errno);
    } else if (WIFEXITED(st)) {
        printf("%s: exited %d\n", what, WEXITSTATUS(st));
    } else if (WIFSIGNALED(st)) {
        printf("%s: killed by %d\n", what, WTERMSIG(st));
    } else {
        printf("%s: status %#x\n", what, st);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "exec-child") == 0) {
        printf("exec-child: argc=%d %s\n", argc, argc > 2 ? argv[2] : "");
        return 7;
    }
    long work = argc > 1 ? atol(argv[1]) : 4;
    int st = 0;
    pid_t me = getpid();
    setvbuf(stdout, 0, _IOLBF, 0);

    errno = 0;
    pid_t got = waitpid(-1, &st, WNOHANG);
    printf("no child: %d errno=%d\n", (int)got, errno);

    pid_t pid = fork();
    if (pid == 0) {
        printf("child: parent is %s\n", getppid() == me ? "mine" : "another");
        _exit(5);
    }
    got = waitpid(pid, &st, 0);
    show("exit", pid, got, &st);

    pid = fork();
    if (pid == 0) {
        raise(SIGTERM);
        _exit(1);
    }
    got = wait(&st);
    show("signal", pid, got, &st);

    int go[2];
    pipe(go);
    pid = fork();
    if (pid == 0) {
        char c;
        close(go[1]);
        read(go[0], &c, 1);  /* until the parent says */
        _exit(c);
    }
    close(go[0]);
    got = waitpid(pid, &st, WNOHANG);
    printf("running: %d\n", (int)got);
    write(go[1], "\x09", 1);
    got = waitpid(pid, &st, 0);
    show("told", pid, got, &st);

    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, 0);
    pid = fork();
    if (pid == 0) {
        char *args[] = {"forkwait", "exec-child", "from-fork", 0};
        execv("/proc/self/exe", args);
        _exit(99);
    }
    got = waitpid(pid, &st, 0);
    show("exec", pid, got, &st);
    printf("SIGCHLD handled: %s\n", chld > 0 ? "yes" : "no");

    int data[2];
    pipe(data);
    pid = fork();
    if (pid == 0) {
        close(data[0]);
        char block[65536];
        for (long i = 0; i < work; i++) {
            for (int j = 0; j < (int)sizeof block; j++)
                block[j] = (char)(i * 31 + j);
            for (size_t off = 0; off < sizeof block;) {
                ssize_t n = write(data[1], block + off, sizeof block - off);
                if (n <= 0)
                    _exit(3);
                off += (size_t)n;
            }
        }
        _exit(0);
    }
    close(data[1]);
    unsigned long sum = 0, total = 0;
    char buf[8192];
    ssize_t n;
    while ((n = read(data[0], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            sum = sum * 131 + (unsigned char)buf[i];
        total += (unsigned long)n;
    }
    printf("pipe: %lu bytes, sum %lx\n", total, sum);
    got = waitpid(pid, &st, 0);
    show("writer", pid, got, &st);

    pid = fork();
    if (pid == 0) {  /* a group of its own, then a session of its own in a child of it */
        int group = setpgid(0, 0) == 0 && getpgrp() == getpid() && getpgid(0) == getpid();
        pid_t inner = fork();
        if (inner == 0)
            _exit(setsid() == getpid() && getsid(0) == getpid() && getpgrp() == getpid());
        int ist = 0;
        waitpid(inner, &ist, 0);
        _exit(group * 2 + (WIFEXITED(ist) ? WEXITSTATUS(ist) : 0));
    }
    got = waitpid(pid, &st, 0);
    show("groups", pid, got, &st);

    int fd = open("/proc/self/exe", O_RDONLY);
    pid = fork();
    if (pid == 0) {
        lseek(fd, 100, SEEK_SET);
        _exit(0);
    }
    waitpid(pid, &st, 0);
    printf("shared offset: %ld\n", (long)lseek(fd, 0, SEEK_CUR));
    return 0;
}
