/* Waits in pause() for a SIGTERM from outside ("wait", or "handler": its handler prints and
   exits 0; without one the default action ends it, 128 + 15). With no argument it raises
   SIGTERM itself at once, so a run of every workload never waits. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_term(int sig) { printf("handler: signal %d\n", sig); fflush(stdout); _exit(0); }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "handler") == 0) signal(SIGTERM, on_term);
    printf("ready\n");
    fflush(stdout);
    if (argc < 2) raise(SIGTERM);
    for (;;) pause();
}
