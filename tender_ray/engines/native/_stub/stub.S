/* tender-stub: the host process a native-engine Tender process lives in.
 *
 * Started by a machine's tracer thread (posix_spawn), it asks to be traced, stops itself so
 * the tracer can set its options, then installs a seccomp filter that sends every system call
 * to the tracer (SECCOMP_RET_TRACE) and kills the process on any other system call ABI (int
 * 0x80, x32 aside), and stops again at an int3: ready. From then on it never runs its own
 * code again: the tracer uses the trampoline below to inject system calls (unmap the stub,
 * map the process's memory from the machine's shared memory file on fd 3), sets the
 * process's registers and lets it run. A guest that jumps to the trampoline only makes
 * ordinary system calls: they stop at the tracer like all others.
 *
 * With an argument ("doorbell") it stays in a pause() loop instead: the tracer's doorbell, a
 * traced child that a signal makes stop so that the tracer's waitpid returns.
 *
 * Freestanding x86-64, no libc: as stub.S && ld (see Makefile). Its single page of text is
 * the trampoline page the tracer keeps in every guest.
 */
    .set SYS_pause, 34
    .set SYS_getpid, 39
    .set SYS_kill, 62
    .set SYS_ptrace, 101
    .set SYS_prctl, 157
    .set SYS_exit_group, 231
    .set SYS_seccomp, 317
    .set SYS_close_range, 436
    .set PR_SET_NO_NEW_PRIVS, 38
    .set SECCOMP_SET_MODE_FILTER, 1
    .set SIGSTOP, 19

    .text
    .globl _start
_start:
    jmp main
    /* The trampoline, at _start + 2: the tracer sets a call's registers, the call runs, and
     * the next round stops at its entry (every call does, by the filter), where the tracer
     * reads the result (the call number register holds it) and sets the next call. */
trampoline:
    syscall
    jmp trampoline

main:
    mov $SYS_ptrace, %eax           /* ptrace(PTRACE_TRACEME, 0, 0, 0) */
    xor %edi, %edi
    xor %esi, %esi
    xor %edx, %edx
    xor %r10d, %r10d
    syscall
    mov $101, %edi
    test %rax, %rax
    jnz fail
    mov $SYS_close_range, %eax      /* close_range(4, ~0U, 0): keep only stdio and fd 3 */
    mov $4, %edi
    mov $-1, %esi
    xor %edx, %edx
    syscall
    mov $SYS_getpid, %eax           /* kill(getpid(), SIGSTOP): the tracer sets options */
    syscall
    mov %rax, %rdi
    mov $SIGSTOP, %esi
    mov $SYS_kill, %eax
    syscall
    cmpq $1, (%rsp)                 /* argc > 1: the doorbell */
    ja doorbell
    mov $SYS_prctl, %eax            /* prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) */
    mov $PR_SET_NO_NEW_PRIVS, %edi
    mov $1, %esi
    xor %edx, %edx
    xor %r10d, %r10d
    xor %r8d, %r8d
    syscall
    mov $102, %edi
    test %rax, %rax
    jnz fail
    mov $SYS_seccomp, %eax          /* seccomp(SECCOMP_SET_MODE_FILTER, 0, &program) */
    mov $SECCOMP_SET_MODE_FILTER, %edi
    xor %esi, %esi
    lea program(%rip), %rdx
    syscall
    mov $103, %edi
    test %rax, %rax
    jnz fail
    int3                            /* ready */
    ud2

doorbell:
    mov $SYS_pause, %eax
    syscall
    jmp doorbell

fail:                               /* exit_group(status): 101 ptrace, 102 prctl, 103 seccomp */
    mov $SYS_exit_group, %eax
    syscall
    ud2

    .balign 8
program:                            /* struct sock_fprog */
    .short 4
    .short 0, 0, 0
    .quad filter
filter:                             /* struct sock_filter[4] */
    .short 0x20                     /* BPF_LD | BPF_W | BPF_ABS: seccomp_data.arch */
    .byte 0, 0
    .long 4
    .short 0x15                     /* BPF_JMP | BPF_JEQ | BPF_K */
    .byte 1, 0
    .long 0xc000003e                /* AUDIT_ARCH_X86_64 */
    .short 0x06                     /* BPF_RET | BPF_K */
    .byte 0, 0
    .long 0x80000000                /* SECCOMP_RET_KILL_PROCESS */
    .short 0x06
    .byte 0, 0
    .long 0x7ff00000                /* SECCOMP_RET_TRACE */
