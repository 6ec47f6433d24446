/* tender-stub: the host process a native-engine Tender process lives in.
 *
 * Started by a machine's tracer thread (posix_spawn), it asks to be traced, stops itself so
 * the tracer can set its options, then installs a seccomp filter that sends every system call
 * to the tracer (SECCOMP_RET_TRACE) and kills the process on any other system call ABI (int
 * 0x80, x32 aside), and stops again at an int3: ready. From then on it never runs its own
 * code again: the tracer uses the trampoline below to inject system calls (unmap the stub,
 * map the process's memory from the machine's shared memory file on fd 100), sets the
 * process's registers and lets it run. A guest that jumps to the trampoline only makes
 * ordinary system calls: they stop at the tracer like all others.
 *
 * With an argument ("doorbell") it stays in a pause() loop instead: the tracer's doorbell, a
 * traced child that a signal makes stop so that the tracer's waitpid returns.
 *
 * Freestanding x86-64, no libc: as stub.S && ld (see Makefile). Its single page of text is
 * the trampoline page the tracer keeps in every guest.
 *
 * The filter lets a few data-plane calls on descriptors 0..63 (read, pread64, lseek, fstat,
 * fadvise64, write) go straight to the kernel: the stub keeps no descriptor there (the machine's
 * memory file is fd 100), so such a call answers EBADF until the tracer has put a real file
 * at that number (direct_files.py, output_pipes.py). Before a guest runs, the tracer stacks a second filter
 * that narrows this to the descriptors and buffers it has made safe.
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
    /* The trampoline, at _start + 2: the tracer sets a call's registers, the call runs, its
     * result is kept in rbx and the next round is a getpid, which every filter stops at
     * its entry: there the tracer reads the result and sets the next call. (The result
     * itself is not used as the next call's number: some numbers never stop — the filter
     * lets a few data-plane calls through, and the kernel lets uretprobe and uprobe, 335
     * and 336, pass every filter — so a result equal to one would run as a call.) */
trampoline:
    syscall
    mov %rax, %rbx
    mov $SYS_getpid, %eax
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
    mov $SYS_close_range, %eax      /* close_range(0, 99, 0), close_range(101, ~0U, 0): */
    xor %edi, %edi                  /* keep only the memory file (fd 100) */
    mov $99, %esi
    xor %edx, %edx
    syscall
    mov $SYS_close_range, %eax
    mov $101, %edi
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
    .short 15
    .short 0, 0, 0
    .quad filter
filter:                             /* struct sock_filter[15] */
    .short 0x20                     /* 0: A = seccomp_data.arch */
    .byte 0, 0
    .long 4
    .short 0x15                     /* 1: A == AUDIT_ARCH_X86_64 ? 3 : 2 */
    .byte 1, 0
    .long 0xc000003e
    .short 0x06                     /* 2: SECCOMP_RET_KILL_PROCESS */
    .byte 0, 0
    .long 0x80000000
    .short 0x20                     /* 3: A = seccomp_data.nr */
    .byte 0, 0
    .long 0
    .short 0x15                     /* 4: read -> 11 */
    .byte 6, 0
    .long 0
    .short 0x15                     /* 5: pread64 -> 11 */
    .byte 5, 0
    .long 17
    .short 0x15                     /* 6: lseek -> 11 */
    .byte 4, 0
    .long 8
    .short 0x15                     /* 7: fstat -> 11 */
    .byte 3, 0
    .long 5
    .short 0x15                     /* 8: fadvise64 -> 11 */
    .byte 2, 0
    .long 221
    .short 0x15                     /* 9: write -> 11 */
    .byte 1, 0
    .long 1
    .short 0x06                     /* 10: SECCOMP_RET_TRACE */
    .byte 0, 0
    .long 0x7ff00000
    .short 0x20                     /* 11: A = low word of the descriptor argument */
    .byte 0, 0
    .long 16
    .short 0x35                     /* 12: A >= 64 ? 14 : 13 */
    .byte 1, 0
    .long 64
    .short 0x06                     /* 13: SECCOMP_RET_ALLOW */
    .byte 0, 0
    .long 0x7fff0000
    .short 0x06                     /* 14: SECCOMP_RET_TRACE */
    .byte 0, 0
    .long 0x7ff00000
