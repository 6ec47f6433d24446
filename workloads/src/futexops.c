/* The futex operations a process with one thread can make, each answer printed: wakes
   (plain and bitset, private and shared), requeues (plain and compare), the wake-op and its
   change to the second word, and the errors Linux gives for a misaligned word, an empty
   bitset, a negative requeue count, an unknown wake-op, a shared word nobody maps and an
   operation it does not serve. No wait blocks: each ends at once (a changed word) or by a
   short timeout. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_REQUEUE 3
#define FUTEX_CMP_REQUEUE 4
#define FUTEX_WAKE_OP 5
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAKE_BITSET 10
#define FUTEX_PRIVATE 128
#define OP(op, oparg, cmp, cmparg) \
    ((unsigned)(op) << 28 | (unsigned)(cmp) << 24 | ((oparg) & 0xfff) << 12 | ((cmparg) & 0xfff))

static uint32_t words[4] __attribute__((aligned(16)));

static void show(const char *what, long r)
{
    if (r < 0)
        printf("%-34s -1 %s\n", what, strerror(errno));
    else
        printf("%-34s %ld\n", what, r);
}

static long fx(void *uaddr, int op, long val, long val2, void *uaddr2, long val3)
{
    return syscall(SYS_futex, uaddr, op, val, val2, uaddr2, val3);
}

int main(void)
{
    uint32_t *a = &words[0], *b = &words[1];
    *a = 7;
    show("wake private", fx(a, FUTEX_WAKE | FUTEX_PRIVATE, 1, 0, 0, 0));
    show("wake shared", fx(a, FUTEX_WAKE, 1, 0, 0, 0));
    show("wake bitset", fx(a, FUTEX_WAKE_BITSET | FUTEX_PRIVATE, 1, 0, 0, 0xff));
    show("wake bitset 0", fx(a, FUTEX_WAKE_BITSET | FUTEX_PRIVATE, 1, 0, 0, 0));
    show("wake misaligned", fx((char *)a + 1, FUTEX_WAKE | FUTEX_PRIVATE, 1, 0, 0, 0));
    show("wake shared, nothing mapped", fx((void *)0x1000, FUTEX_WAKE, 1, 0, 0, 0));
    show("requeue", fx(a, FUTEX_REQUEUE | FUTEX_PRIVATE, 1, 1, b, 0));
    show("requeue negative", fx(a, FUTEX_REQUEUE | FUTEX_PRIVATE, 1, -1, b, 0));
    show("cmp_requeue, word differs", fx(a, FUTEX_CMP_REQUEUE | FUTEX_PRIVATE, 1, 1, b, 8));
    show("cmp_requeue, word matches", fx(a, FUTEX_CMP_REQUEUE | FUTEX_PRIVATE, 1, 1, b, 7));
    *b = 10;
    show("wake_op add 5 (cmp eq 10)", fx(a, FUTEX_WAKE_OP | FUTEX_PRIVATE, 1, 1, b,
                                         OP(1, 5, 0, 10)));
    printf("second word now %u\n", *b);
    show("wake_op or 1<<4 (cmp gt 100)", fx(a, FUTEX_WAKE_OP | FUTEX_PRIVATE, 1, 1, b,
                                            OP(2 | 8, 4, 4, 100)));
    printf("second word now %u\n", *b);
    show("wake_op set -1", fx(a, FUTEX_WAKE_OP | FUTEX_PRIVATE, 1, 1, b, OP(0, -1, 2, 0)));
    printf("second word now %u\n", *b);
    show("wake_op unknown op", fx(a, FUTEX_WAKE_OP | FUTEX_PRIVATE, 1, 1, b, OP(7, 1, 0, 0)));
    printf("second word now %u\n", *b);
    show("wait, word differs", fx(a, FUTEX_WAIT | FUTEX_PRIVATE, 8, 0, 0, 0));
    struct timespec ten_ms = {0, 10000000};
    show("wait 10 ms", fx(a, FUTEX_WAIT | FUTEX_PRIVATE, 7, (long)&ten_ms, 0, 0));
    show("wait bitset 0", fx(a, FUTEX_WAIT_BITSET | FUTEX_PRIVATE, 7, 0, 0, 0));
    show("wait misaligned", fx((char *)a + 2, FUTEX_WAIT | FUTEX_PRIVATE, 7, 0, 0, 0));
    show("fd (gone from Linux)", fx(a, 2, 0, 0, 0, 0));
    return 0;
}
