/* Threads: pthread_create (musl's: clone with CLONE_VM|CLONE_THREAD...), then join.
   Natively it prints the thread's result; a single-threaded runtime must end it with a
   reason that names the call instead of hanging.
   threads create: one thread, joined. threads spawn: posix_spawn of /bin/true (musl's is a
   clone with CLONE_VM|CLONE_VFORK: a new process, not a thread), its error or the child's
   status. Without an argument it tries nothing: usage, exit 2. */
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

static void *work(void *arg)
{
    return (void *)((long)arg * 2);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "spawn")) {
        char *child_argv[] = {"/bin/true", 0};
        char *child_envp[] = {0};
        pid_t child;
        int err = posix_spawn(&child, "/bin/true", 0, 0, child_argv, child_envp);
        if (err) {
            printf("posix_spawn: error %d (%s)\n", err, strerror(err));
        } else {
            int status;
            waitpid(child, &status, 0);
            printf("posix_spawn: child exited %d\n", WEXITSTATUS(status));
        }
        printf("still running\n");
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "create")) {
        printf("usage: threads create|spawn (tries nothing without it)\n");
        return 2;
    }
    printf("creating a thread\n");
    fflush(stdout);
    pthread_t t;
    int err = pthread_create(&t, 0, work, (void *)21L);
    if (err) {
        printf("pthread_create: error %d (%s)\n", err, strerror(err));
        return 1;
    }
    void *result;
    pthread_join(t, &result);
    printf("joined: %ld\n", (long)result);
    return 0;
}
