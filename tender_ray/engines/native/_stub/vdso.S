/* tender-vdso: the virtual dynamic shared object a native-engine Tender process sees.
 *
 * The machine maps it, after one time page, at the same fixed address in every process
 * (AT_SYSINFO_EHDR), as part of the process's image: C libraries that cache pointers into it
 * (musl, glibc) find it where they left it after any migration. Each call reads the time page
 * (RIP-relative: it lies just below this image): where the engine running the process has put
 * the address of the host's own vDSO function there, the call is answered by it without a
 * stop, the process's monotonic offset added; where it has not (another engine, a host
 * without one, a CPU-time clock) the call is the system call, served by the machine.
 *
 * Time page (little-endian 64-bit words): 0 host clock_gettime, 8 host gettimeofday,
 * 16 host time (0: make the system call), 24 monotonic offset in nanoseconds, 56 magic.
 *
 * Freestanding x86-64, position independent, no relocations: see Makefile.
 */
    .set SYS_gettimeofday, 96
    .set SYS_time, 201
    .set SYS_clock_gettime, 228
    .set SYS_getcpu, 309
    .set PAGE, 4096

    .text
    .globl __vdso_clock_gettime, __vdso_gettimeofday, __vdso_time, __vdso_getcpu
    .type __vdso_clock_gettime, @function
    .type __vdso_gettimeofday, @function
    .type __vdso_time, @function
    .type __vdso_getcpu, @function

/* int clock_gettime(clockid_t clk (edi), struct timespec *ts (rsi)) */
__vdso_clock_gettime:
    cmp $7, %edi                    /* clocks 0,1,4,5,6,7: realtime and monotonic kinds */
    ja 1f
    mov $0xF3, %eax                 /* bit mask of those clocks */
    bt %edi, %eax
    jnc 1f
    lea __ehdr_start(%rip), %rcx
    mov -PAGE(%rcx), %rax           /* host clock_gettime */
    test %rax, %rax
    jz 1f
    /* As the machine answers them: every realtime kind is CLOCK_REALTIME, every monotonic
     * kind (raw, coarse, boot time) CLOCK_MONOTONIC, so both paths agree. */
    cmp $0, %edi
    je 4f
    cmp $5, %edi
    je 4f
    mov $1, %edi
    cmpq $0, -PAGE+24(%rcx)         /* a monotonic offset to add? */
    jne 5f
    jmp *%rax                       /* none: the host's answer as it is */
4:  xor %edi, %edi                  /* realtime keeps the host's (true) time */
    jmp *%rax
5:  push %r12
    push %r13
    sub $8, %rsp                    /* 16-byte alignment for the call */
    mov %rsi, %r12
    mov -PAGE+24(%rcx), %r13        /* the offset, ns */
    call *%rax
    add $8, %rsp
    test %eax, %eax
    jnz 3f
    mov 8(%r12), %rax               /* ts->tv_nsec += offset; normalise */
    add %r13, %rax
    mov $1000000000, %rcx
    cqo
    idiv %rcx                       /* rax = whole seconds, rdx = remainder (sign of dividend) */
    test %rdx, %rdx
    jns 2f
    add %rcx, %rdx
    dec %rax
2:  add %rax, (%r12)
    mov %rdx, 8(%r12)
    xor %eax, %eax
3:  pop %r13
    pop %r12
    ret
1:  mov $SYS_clock_gettime, %eax
    syscall
    ret

/* int gettimeofday(struct timeval *tv (rdi), struct timezone *tz (rsi)) */
__vdso_gettimeofday:
    lea __ehdr_start(%rip), %rax
    mov -PAGE+8(%rax), %rax
    test %rax, %rax
    jz 1f
    jmp *%rax                       /* realtime: the host's answer as it is */
1:  mov $SYS_gettimeofday, %eax
    syscall
    ret

/* time_t time(time_t *t (rdi)) */
__vdso_time:
    lea __ehdr_start(%rip), %rax
    mov -PAGE+16(%rax), %rax
    test %rax, %rax
    jz 1f
    jmp *%rax
1:  mov $SYS_time, %eax
    syscall
    ret

/* int getcpu(unsigned *cpu, unsigned *node, void *cache): always the machine's answer */
__vdso_getcpu:
    mov $SYS_getcpu, %eax
    syscall
    ret
