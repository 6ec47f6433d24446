/* A Tender process must not reach the network: denied before the kernel sees it (run under
 * Tender only). deny_net PORT: tries to open a TCP connection to 127.0.0.1:PORT and to send a
 * UDP datagram there; prints each call's result and errno. Without PORT it tries nothing: it
 * prints a usage line and exits 2. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *what, long r)
{
    printf("%s: %ld errno=%d\n", what, r, r < 0 ? errno : 0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: deny_net PORT (tries nothing without it)\n");
        return 2;
    }
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(atoi(argv[1]));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    errno = 0;
    long s = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    show("socket(TCP)", s);
    errno = 0; show("connect", syscall(SYS_connect, s >= 0 ? s : 3, &to, sizeof to));
    errno = 0;
    long u = syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0);
    show("socket(UDP)", u);
    errno = 0;
    show("sendto", syscall(SYS_sendto, u >= 0 ? u : 1, "x", 1, 0, &to, sizeof to));
    int pair[2];
    errno = 0; show("socketpair", syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, pair));
    printf("done\n");
    return 0;
}
