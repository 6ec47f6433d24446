/* fork + execve + wait in a loop: `forkexec N [PROGRAM [ARGS...]]` forks N children, each of
 * which execs PROGRAM (by default this program again as `forkexec child I`, which exits with
 * status I % 64 at once), and waits for each before the next. It prints the rounds and the
 * sum of the exit statuses it collected (the same on every run) and, on standard error, the
 * loop's own mean microseconds per round (a time, not compared). An exec that fails ends the
 * child with status 127, as a shell's does. Without N: a usage line, exit 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "child"))
        return atoi(argv[2]) % 64;
    long rounds = argc >= 2 ? atol(argv[1]) : 0;
    if (rounds < 1) {
        printf("usage: forkexec N [PROGRAM [ARGS...]] (N >= 1 rounds of fork, execve, wait)\n");
        return 2;
    }
    long statuses = 0, signalled = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rounds; i++) {
        char number[24];
        snprintf(number, sizeof number, "%ld", i);
        char *own[] = {argv[0], "child", number, 0};
        pid_t pid = fork();
        if (pid < 0) {
            perror("forkexec: fork");
            return 1;
        }
        if (pid == 0) {
            if (argc >= 3)
                execve(argv[2], argv + 2, environ);
            else
                execve(argv[0], own, environ);
            _exit(127);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid) {
            perror("forkexec: waitpid");
            return 1;
        }
        if (WIFEXITED(st))
            statuses += WEXITSTATUS(st);
        else
            signalled++;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / rounds;
    printf("forkexec: %ld rounds, exit statuses sum %ld, %ld killed by a signal\n", rounds,
           statuses, signalled);
    fprintf(stderr, "%.1f us per round\n", us);
    return 0;
}
