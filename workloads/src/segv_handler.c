/* Faults delivered to a handler: a SA_SIGINFO SIGSEGV handler sees si_signo, si_code
   (SEGV_MAPERR) and si_addr for a read, a write and a jump to unmapped addresses (each at
   the start of a page) and siglongjmps out; SIGFPE (divide by zero) and SIGILL (ud2) reach
   theirs too; a handler that maps the page and returns has the faulting instruction run
   again; last, a handler that _exits(3) from the fault.
   segv_handler [jump|retry|overflow|offset|exit|default]...: the cases named (default:
   jump, retry, exit); "overflow" recurses until the stack (limited to 8 MiB) overflows and
   catches that on an alternate stack, as gnulib's c-stack does;
   "offset" reads 0x10 bytes into an unmapped page; "default" touches an unmapped address
   with no handler: killed by SIGSEGV. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define UNMAPPED ((volatile int *)0x10000)
#define FAR_AWAY ((volatile char *)0x7e0000001000UL)

static sigjmp_buf back;
static volatile sig_atomic_t seen_signo, seen_code;
static void *volatile seen_addr;
static volatile int zero;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    seen_signo = sig;
    seen_code = si->si_code;
    seen_addr = si->si_addr;
    siglongjmp(back, 1);
}

static void on_fault_exit(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char line[96];
    int n = snprintf(line, sizeof line, "exit: signal %d code %d at %p: _exit(3)\n", sig,
                     si->si_code, si->si_addr);
    write(1, line, n);
    _exit(3);
}

static void on_fault_map(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    seen_addr = si->si_addr;
    void *page = (void *)((unsigned long)si->si_addr & ~4095UL);
    if (mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0) != page)
        _exit(9);
}

static char altstack[65536];
static volatile unsigned long depth;

static unsigned long recurse(unsigned long n)
{
    volatile char frame[256];
    frame[0] = (char)n;
    depth = n;
    return recurse(n + 1) + frame[0];
}

static void on_overflow(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char here;
    seen_signo = sig;
    seen_code = si->si_code;
    seen_addr = (void *)(unsigned long)(&here >= altstack && &here < altstack + sizeof altstack);
    siglongjmp(back, 1);
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO;
    sigaction(sig, &sa, 0);
}

static void show(const char *what)
{
    printf("%s: signal %d code %d at %p\n", what, seen_signo, seen_code, seen_addr);
    fflush(stdout);
}

static void jumps(void)
{
    handle(SIGSEGV, on_fault);
    handle(SIGFPE, on_fault);
    handle(SIGILL, on_fault);
    if (!sigsetjmp(back, 1))
        (void)*UNMAPPED;
    show("read");
    if (!sigsetjmp(back, 1))
        FAR_AWAY[0] = 1;
    show("write");
    if (!sigsetjmp(back, 1))
        ((void (*)(void))(void *)0x20000)();
    show("call");
    /* The mask was restored by siglongjmp: a second fault is delivered as the first was. */
    if (!sigsetjmp(back, 1))
        (void)UNMAPPED[1024];
    show("again");
    if (!sigsetjmp(back, 1))
        printf("divide: %d\n", 7 / zero);
    printf("divide: signal %d code %d\n", seen_signo, seen_code);
    if (!sigsetjmp(back, 1))
        __asm__ volatile("ud2");
    printf("ud2: signal %d code %d\n", seen_signo, seen_code);
    fflush(stdout);
}

static void run(const char *mode)
{
    if (!strcmp(mode, "jump")) {
        jumps();
    } else if (!strcmp(mode, "retry")) {
        handle(SIGSEGV, on_fault_map);
        volatile int *where = (volatile int *)0x30000;
        *where = 41;  /* faults once; the handler maps the page; the store runs again */
        where[1] = *where + 1;
        printf("retry: fault at %p, then %d %d\n", seen_addr, where[0], where[1]);
        munmap((void *)where, 4096);
    } else if (!strcmp(mode, "overflow")) {
        struct rlimit lim = {8 << 20, 8 << 20};
        setrlimit(RLIMIT_STACK, &lim);
        stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
        sigaltstack(&ss, 0);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_overflow;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigaction(SIGSEGV, &sa, 0);
        if (!sigsetjmp(back, 1))
            recurse(0);
        printf("overflow: signal %d code %d on the alternate stack %d, deeper than 1000: %d\n",
               seen_signo, seen_code, (int)(unsigned long)seen_addr, depth > 1000);
    } else if (!strcmp(mode, "offset")) {
        handle(SIGSEGV, on_fault);
        if (!sigsetjmp(back, 1))
            (void)UNMAPPED[4];
        show("offset");
    } else if (!strcmp(mode, "exit")) {
        handle(SIGSEGV, on_fault_exit);
        fflush(stdout);
        *UNMAPPED = 1;
        printf("exit: still alive\n");
    } else if (!strcmp(mode, "default")) {
        signal(SIGSEGV, SIG_DFL);
        printf("default: touching %p\n", (void *)UNMAPPED);
        fflush(stdout);
        *UNMAPPED = 1;
        printf("default: still alive\n");
    } else {
        printf("unknown case %s: the cases are jump, retry, overflow, offset, exit, default\n", mode);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        run("jump");
        run("retry");
        run("exit");
    }
    for (int i = 1; i < argc; i++)
        run(argv[i]);
    return 0;
}
