/* ctrlc [handle|ignore]: says "ready", then waits in pause() for signals from outside. With
   `handle` each SIGINT prints "caught SIGINT" and it waits on; with `ignore` SIGINT is
   ignored. SIGTERM prints "caught SIGTERM" and ends it (status 0); other signals take their
   default action. A program that keeps going on Ctrl-C, for which a user presses Ctrl-C
   again. Its handlers write with write(2) alone, so a signal arriving at any moment prints
   the same. With no argument it raises SIGINT and then SIGTERM itself at once, so a run of
   every workload never waits. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_int(int sig)
{
    static const char line[] = "caught SIGINT\n";
    (void)sig;
    write(1, line, sizeof line - 1);
}

static void on_term(int sig)
{
    static const char line[] = "caught SIGTERM\n";
    (void)sig;
    write(1, line, sizeof line - 1);
    _exit(0);
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = argc > 1 && strcmp(argv[1], "ignore") == 0 ? SIG_IGN : on_int;
    sigaction(SIGINT, &sa, 0);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, 0);
    printf("ready\n");
    fflush(stdout);
    if (argc < 2) {
        raise(SIGINT);
        raise(SIGTERM);
    }
    for (;;) pause();
}
