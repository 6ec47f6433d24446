/* Threads that share work: `thread_hash N` hashes a generated 8 MiB buffer in 16 parts with
   N threads (part i is done by thread i % N), each part's FNV-1a digest handed to a log in
   part order through one mutex and condition variable (a part waits for its turn), then
   joined. The output depends on nothing but the buffer: the same for any N and any
   schedule, so N=1 natively is the reference for every run. `thread_hash spin` starts two
   threads that spin until the process is killed, and says "ready" once both have begun
   (a process that keeps two computations busy). `thread_hash main-exits` ends its first
   thread with pthread_exit while a second hashes on, prints and returns: the process ends
   with the last thread, status 0. Without an argument or with N outside 1..16: usage,
   exit 2. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARTS 16
#define SIZE (8u << 20)

static unsigned char buffer[SIZE];
static uint64_t digests[PARTS];
static int threads;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_changed = PTHREAD_COND_INITIALIZER;
static int turn;          /* the next part to be logged, under `lock` */
static uint64_t chained;  /* the log: each logged digest folded in, in part order */

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static volatile int spinning;
static void *worker(void *arg);

static void *spin(void *arg)
{
    __atomic_add_fetch(&spinning, 1, __ATOMIC_SEQ_CST);
    for (;;)
        (void)arg;
    return 0;
}

static void *outlive(void *arg)
{
    threads = 1;
    worker(arg);
    printf("the last thread: chained %016llx\n", (unsigned long long)chained);
    return 0;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    for (int part = (int)id; part < PARTS; part += threads) {
        size_t len = SIZE / PARTS;
        uint64_t d = fnv1a(buffer + (size_t)part * len, len);
        pthread_mutex_lock(&lock);
        while (turn != part)
            pthread_cond_wait(&turn_changed, &lock);
        digests[part] = d;
        chained = (chained ^ d) * 0x100000001b3ull;
        turn++;
        pthread_cond_broadcast(&turn_changed);
        pthread_mutex_unlock(&lock);
    }
    return (void *)id;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "spin")) {
        pthread_t s[2];
        for (long i = 0; i < 2; i++)
            pthread_create(&s[i], 0, spin, 0);
        while (__atomic_load_n(&spinning, __ATOMIC_SEQ_CST) < 2)
            ;
        printf("ready\n");
        fflush(stdout);
        pthread_join(s[0], 0);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "main-exits")) {
        pthread_t t;
        pthread_create(&t, 0, outlive, 0);
        pthread_exit(0);
    }
    threads = argc >= 2 ? atoi(argv[1]) : 0;
    if (threads < 1 || threads > PARTS) {
        printf("usage: thread_hash N (1..%d threads)\n", PARTS);
        return 2;
    }
    uint32_t x = 2463534242u;  /* xorshift32: the same buffer every run */
    for (size_t i = 0; i < SIZE; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buffer[i] = (unsigned char)x;
    }
    pthread_t t[PARTS];
    for (long i = 0; i < threads; i++) {
        int err = pthread_create(&t[i], 0, worker, (void *)i);
        if (err) {
            printf("pthread_create: error %d (%s)\n", err, strerror(err));
            return 1;
        }
    }
    long joined = 0;
    for (int i = 0; i < threads; i++) {
        void *r;
        pthread_join(t[i], &r);
        joined += (long)r;
    }
    for (int part = 0; part < PARTS; part++)
        printf("part %2d: %016llx\n", part, (unsigned long long)digests[part]);
    printf("chained: %016llx\n", (unsigned long long)chained);
    printf("whole:   %016llx\n", (unsigned long long)fnv1a(buffer, SIZE));
    printf("joined: %s\n", joined == (long)threads * (threads - 1) / 2 ? "all" : "WRONG");
    return 0;
}
