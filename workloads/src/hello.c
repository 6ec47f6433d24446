#include <stdio.h>

int main(void)
{
    printf("hello, tender\n");
    fprintf(stderr, "hello on stderr\n");
    return 0;
}
