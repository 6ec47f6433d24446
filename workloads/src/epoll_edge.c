/* epoll_edge: EPOLLET and EPOLLONESHOT over a pipe and an eventfd: an edge is reported once,
 * again when more arrives while still readable, not for a partial read, again after a drain
 * and a new write, and at once after EPOLL_CTL_MOD while readable; a one-shot entry reports
 * once until EPOLL_CTL_MOD re-arms it. Output is deterministic. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int ep;

static void wait_show(const char *what) {
    struct epoll_event got[4];
    int n = epoll_wait(ep, got, 4, 0);
    printf("%-28s %d", what, n);
    for (int i = 0; i < n; i++) printf(" [%llu %s]", (unsigned long long)got[i].data.u64,
                                       got[i].events & EPOLLIN ? "in" : "-");
    printf("\n");
}

int main(void) {
    int p[2];
    char b[8];
    if (pipe(p)) return 1;
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    wait_show("empty");
    write(p[1], "ab", 2);
    wait_show("written");
    wait_show("again, nothing new");
    write(p[1], "c", 1);
    wait_show("more while readable");
    read(p[0], b, 1);
    wait_show("partial read");
    read(p[0], b, 2);
    wait_show("drained");
    write(p[1], "d", 1);
    wait_show("written after drain");
    epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev);
    wait_show("after MOD, still readable");
    int e = eventfd(0, EFD_NONBLOCK);
    struct epoll_event one = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 2};
    epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL);
    epoll_ctl(ep, EPOLL_CTL_ADD, e, &one);
    uint64_t v = 1;
    write(e, &v, 8);
    wait_show("one-shot");
    wait_show("one-shot again");
    write(e, &v, 8);
    wait_show("one-shot, more written");
    epoll_ctl(ep, EPOLL_CTL_MOD, e, &one);
    wait_show("one-shot re-armed");
    printf("done\n");
    return 0;
}
