#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char buf[4096];
    long total = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) {
            if (n < 0) printf("read error\n");
            break;
        }
        total += n;
    }
    printf("stdin bytes: %ld\n", total);
    return 0;
}
