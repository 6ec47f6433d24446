/* execve as Linux does it, checked from both sides of the call.
 * execchain DIR WORK: in DIR (made by the caller: "data" a readable file, "plain" a file
 * without the exec bit, "text" an executable file that is neither ELF nor a script,
 * "script" a `#!` script that runs this program), answers execve's errors (ENOENT, EACCES,
 * ENOEXEC), then opens "data" twice (one descriptor close-on-exec), sets SIGUSR1 handled,
 * SIGUSR2 ignored, SIGTERM blocked, spins WORK rounds and runs itself through "script" as
 * `after` with an environment of its own. The new program checks what Linux keeps (pid,
 * the plain descriptor and its offset, the ignored signal, the blocked mask) and what it
 * drops (the close-on-exec descriptor, the handler), spins WORK rounds and prints it all. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile unsigned long sink;

static void spin(long rounds)
{
    for (long i = 0; i < rounds; i++)
        for (int j = 0; j < 100000; j++)
            sink += (unsigned long)(i ^ j);
}

static void on_usr1(int sig) { (void)sig; }

static int after(int argc, char **argv, char **envp)
{
    /* argv: after PID FD CLOEXEC_FD WORK [script args as Linux passes them] */
    printf("argc=%d\n", argc);
    for (int i = 5; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = envp; *e; e++)
        printf("env %s\n", *e);
    printf("same pid: %s\n", atol(argv[1]) == (long)getpid() ? "yes" : "no");
    int fd = atoi(argv[2]), gone = atoi(argv[3]);
    char buf[64] = {0};
    long n = read(fd, buf, 10);
    printf("inherited fd %d read %ld: %.10s\n", fd, n, buf);
    errno = 0;
    long r = fcntl(gone, F_GETFD);
    printf("close-on-exec fd: %ld errno=%d\n", r, errno);
    struct sigaction sa;
    sigaction(SIGUSR1, 0, &sa);
    printf("SIGUSR1 %s\n", sa.sa_handler == SIG_DFL ? "default" : "not default");
    sigaction(SIGUSR2, 0, &sa);
    printf("SIGUSR2 %s\n", sa.sa_handler == SIG_IGN ? "ignored" : "not ignored");
    sigset_t mask;
    sigprocmask(SIG_BLOCK, 0, &mask);
    printf("SIGTERM %s\n", sigismember(&mask, SIGTERM) ? "blocked" : "not blocked");
    spin(atol(argv[4]));
    printf("done\n");
    return 3;
}

int main(int argc, char **argv, char **envp)
{
    if (argc > 1 && strcmp(argv[1], "after") == 0)
        return after(argc - 1, argv + 1, envp);
    /* A script runs as [interpreter, script, args...]: the script's path is argv[1]. */
    if (argc > 2 && strcmp(argv[2], "after") == 0) {
        printf("script argv[0]=%s argv[1]=%s\n", argv[0], argv[1]);
        return after(argc - 2, argv + 2, envp);
    }
    if (argc < 3) {
        fprintf(stderr, "usage: execchain DIR WORK\n");
        return 2;
    }
    if (chdir(argv[1]) != 0) {
        perror("chdir");
        return 2;
    }
    char *none[] = {"x", 0};
    const char *bad[] = {"missing", "plain", "text", "."};
    for (int i = 0; i < 4; i++) {
        errno = 0;
        long r = execve(bad[i], none, none + 1);
        printf("execve(%s): %ld errno=%d\n", bad[i], r, errno);
    }
    int fd = open("data", O_RDONLY);
    int gone = open("data", O_RDONLY | O_CLOEXEC);
    char skip[4];
    if (fd < 0 || gone < 0 || read(fd, skip, 4) != 4) {
        perror("data");
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGUSR2, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, 0);
    spin(atol(argv[2]));
    char pid[32], fds[16], gones[16];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    snprintf(fds, sizeof fds, "%d", fd);
    snprintf(gones, sizeof gones, "%d", gone);
    char *args[] = {"ignored", "after", pid, fds, gones, argv[2], "last", 0};
    char *env[] = {"X=1", "WHO=execchain", 0};
    fflush(stdout);
    execve("./script", args, env);
    perror("execve(./script)");
    return 1;
}
