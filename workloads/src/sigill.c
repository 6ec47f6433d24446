#include <stdio.h>

int main(void)
{
    printf("about to execute ud2\n");
    fflush(stdout);
    asm volatile("ud2");
    printf("still alive?!\n");
    return 0;
}
