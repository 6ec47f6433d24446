#include <stdio.h>

static int *volatile bad_ptr = 0;   /* volatile: compiler can't fold the fault */

int main(void)
{
    printf("about to segfault\n");
    fflush(stdout);
    *bad_ptr = 1;
    printf("still alive?!\n");
    return 0;
}
