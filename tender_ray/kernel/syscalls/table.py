"""The one table of every x86-64 Linux system call, in the shape of gVisor's linux64.go: each
number with its name, its family and whether the kernel serves it — supported (as Linux),
partial (served, with the difference said) or not (answered ENOSYS and counted as unsupported,
with the reason). The handlers live in the family modules; docs/syscalls.md is this table
written out
(`python -m tender_ray.kernel.syscalls --markdown > docs/syscalls.md`, `make syscalls-doc`).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from types import ModuleType

from tender_ray.abi.linux import SYSCALL_NAMES
from tender_ray.kernel.syscalls import (
    descriptors_events,
    file_stat,
    file_tree,
    files,
    identity,
    locks,
    memory,
    processes,
    signals,
    sockets,
    threads,
    time,
    transfers,
    watches,
)
from tender_ray.kernel.syscalls.base import Handler

FAMILY_MODULES: tuple[ModuleType, ...] = (files, file_stat, file_tree, locks, transfers,
                                          descriptors_events, watches, memory, signals,
                                          processes, threads, time, identity, sockets)
FILES, DESCRIPTORS, MEMORY = files.FAMILY, descriptors_events.FAMILY, memory.FAMILY
SIGNALS, PROCESSES, THREADS = signals.FAMILY, processes.FAMILY, threads.FAMILY
TIME, IDENTITY = time.FAMILY, identity.FAMILY
NETWORK, IPC, SYSTEM = "network", "System V and POSIX IPC", "system administration"
FAMILIES = (FILES, DESCRIPTORS, MEMORY, SIGNALS, PROCESSES, THREADS, TIME, IDENTITY, NETWORK,
            IPC, SYSTEM)
GVISOR_SUPPORTED, GVISOR_TOTAL = 274, 350  # gVisor's linux64.go, as its documentation counts

# Reasons shared by many calls.
YET = "not implemented yet"
NO_NET = "no network: a Tender process has only the socket pairs it makes"
PAIRS = ("only AF_UNIX stream pairs inside the process (socketpair): an event loop's wake-up "
         "channel; no passing of descriptors")
NO_IPC = "no System V or POSIX IPC between processes"
ADMIN = "system administration: not a guest's to do"
GONE = "not in Linux either (reserved or removed)"
IDS = "ids never change: the process runs as the machine's user"
GROUPS = ("process groups and sessions of a tree on one machine (a process exec started "
          "leads its own); kill of a group is not offered yet")
NO_OTHER = "no other process is visible"
NO_NUMA = "one memory node: no NUMA policy"
NO_WAIT = "not yet: poll, ppoll and epoll are served"
EPOLL_LT = ("EPOLLET reports what an entry became ready for since it last looked, and "
            "input again when more is held than then (what arrived and was read between two "
            "looks is not seen)")
TO_A_THREAD = ("a thread of itself or of another process of its tree, which alone takes "
               "it; the threads share one mask")
NO_SCHED = "no scheduling policies or priorities"
OWNERS = "owners never change: the same owner is accepted, another answers EPERM"
CPU_SPLIT = "all its CPU time counts as user time"
BLOCK = "at most 1 MiB a call (callers loop, as they must on Linux)"
PROC_LINKS = "/proc/self/exe, cwd and fd/N answer from the process"
OPEN = ("O_TMPFILE makes a file of the image; /proc/self/{maps,smaps,status,stat,statm,"
        "cmdline,environ,limits,comm,mounts,mountinfo,fd/,fdinfo/} are made from the process "
        "(mounts: of its file view), no other pid is visible")
GHOST = "a file the process holds open and no name is left to keeps its contents in its image"
LOCKS = "advisory, among the processes of one machine; held locks travel with the process"
LIMITS = "kept and carried; RLIMIT_NOFILE enforced (at most 1024), the others kept only"
CPU_TIMERS = ("ITIMER_VIRTUAL and ITIMER_PROF both count all the process's CPU time, checked "
              "between its runs")
LINKS = ("within one writable directory of the view: a file outside them, or under another, "
         "answers EXDEV (as a link across mounts)")
SYMLINKS = "the target is stored as given and resolved inside the view when followed"
MKNOD = ("FIFOs and regular files; device nodes and sockets answer EPERM. A FIFO's data is "
         "the machine's own pipe, between its processes; an end moves with its process only "
         "when no other process holds the FIFO (else the migration is refused, saying so)")
NO_XATTR = "no extended attributes: reading answers ENODATA, listing an empty list"
SIGNALFD = ("the mask's pending signals read as records; a wait on it looks again every "
            f"{signals.SIGNALFD_LOOK * 1000:.0f} ms (a blocked signal wakes nobody); the mask "
            "travels, the signals are the process's pending ones")
PIDFD = ("only of the process itself (no child processes yet; another pid answers ESRCH): "
         "never readable, since it would have to end first")
INOTIFY = ("watches on paths of the view, not inodes; the process's own calls are heard as "
           "they are made, others' changes (other processes, the host) when it reads or polls "
           "the instance, without OPEN/ACCESS/CLOSE and summed between two looks; watches, what "
           "they saw and queued events travel in the image")


class Status(str, enum.Enum):
    SUPPORTED = "supported"
    PARTIAL = "partial"
    NOT = "not"


@dataclass(frozen=True)
class Entry:
    """One system call: its name, family, status, the reason or difference, its handler."""

    name: str
    family: str
    status: Status
    note: str
    handler: Handler | None


def full(module: ModuleType, name: str, note: str = "") -> Entry:
    return Entry(name, module.FAMILY, Status.SUPPORTED, note, module.HANDLERS[name])


def partial(module: ModuleType, name: str, note: str) -> Entry:
    return Entry(name, module.FAMILY, Status.PARTIAL, note, module.HANDLERS[name])


def no(family: str, name: str, note: str) -> Entry:
    return Entry(name, family, Status.NOT, note, None)


def with_threads(name: str, note: str) -> Entry:
    """A processes call whose thread form threads.py serves, passing the others on."""
    return Entry(name, PROCESSES, Status.PARTIAL, note, threads.PROCESS_CALLS[name])


THREAD_CLONE = ("a thread (CLONE_THREAD with CLONE_VM and CLONE_SIGHAND, as libc's "
                "pthread_create makes it); a new process is made as fork makes it")
f, fs, ft, de, mem, sig = files, file_stat, file_tree, descriptors_events, memory, signals
pr, th, tm, idn, tr, so = processes, threads, time, identity, transfers, sockets
wa = watches

TABLE: dict[int, Entry] = {
    0: full(f, "read"),
    1: full(f, "write"),
    2: full(f, "open", OPEN),
    3: full(de, "close"),
    4: full(fs, "stat"),
    5: partial(fs, "fstat", "standard streams answer as exec's own are (a file, a pipe, a "
               "terminal with the settings it had at the start, /dev/null); a scenario's "
               "processes have pipes of their own; /dev files are distinct character devices"),
    6: full(fs, "lstat"),
    7: full(de, "poll"),
    8: full(f, "lseek"),
    9: partial(mem, "mmap", "a file's pages are copied at map time; a writable MAP_SHARED "
               "file mapping answers ENODEV; MAP_GROWSDOWN grows when touched below, as Linux "
               "(RLIMIT_STACK, guard gap), and so does the main stack past its 8 MiB"),
    10: full(mem, "mprotect"),
    11: full(mem, "munmap"),
    12: full(mem, "brk"),
    13: full(sig, "rt_sigaction"),
    14: full(sig, "rt_sigprocmask"),
    15: full(sig, "rt_sigreturn"),
    16: partial(de, "ioctl", "FIONBIO, FIOCLEX/FIONCLEX, FIONREAD; no terminals: other "
                "requests answer ENOTTY"),
    17: full(f, "pread64"),
    18: full(f, "pwrite64"),
    19: full(f, "readv"),
    20: full(f, "writev"),
    21: full(ft, "access"),
    22: full(de, "pipe"),
    23: partial(de, "select", "the timeval is not updated with the time left"),
    24: full(pr, "sched_yield"),
    25: partial(mem, "mremap", "shrink, grow or move a private mapping; MREMAP_DONTUNMAP "
               "answers EINVAL"),
    26: no(MEMORY, "msync", "no shared file mappings to write back"),
    27: partial(mem, "mincore", "touched pages answer resident; on the native engine "
                "untouched ones may too (their frames are given at once)"),
    28: full(mem, "madvise", "MADV_DONTNEED and MADV_FREE discard; the rest is advice"),
    29: no(IPC, "shmget", NO_IPC),
    30: no(IPC, "shmat", NO_IPC),
    31: no(IPC, "shmctl", NO_IPC),
    32: full(de, "dup"),
    33: full(de, "dup2"),
    34: full(sig, "pause"),
    35: full(tm, "nanosleep"),
    36: partial(tm, "getitimer", CPU_TIMERS),
    37: full(tm, "alarm"),
    38: partial(tm, "setitimer", CPU_TIMERS),
    39: full(pr, "getpid"),
    40: full(tr, "sendfile", BLOCK),
    41: no(NETWORK, "socket", NO_NET),
    42: no(NETWORK, "connect", NO_NET),
    43: no(NETWORK, "accept", NO_NET),
    44: partial(so, "sendto", PAIRS),
    45: partial(so, "recvfrom", PAIRS),
    46: partial(so, "sendmsg", PAIRS),
    47: partial(so, "recvmsg", PAIRS),
    48: partial(so, "shutdown", PAIRS),
    49: no(NETWORK, "bind", NO_NET),
    50: no(NETWORK, "listen", NO_NET),
    51: partial(so, "getsockname", PAIRS),
    52: partial(so, "getpeername", PAIRS),
    53: partial(so, "socketpair", PAIRS),
    54: partial(so, "setsockopt", PAIRS),
    55: partial(so, "getsockopt", PAIRS),
    56: with_threads("clone", THREAD_CLONE),
    57: full(pr, "fork", "a Tender process of its own on the parent's machine, its space "
             "copied"),
    58: partial(pr, "vfork", "the child runs on a copy of the space, the parent waiting "
                "until it execs or ends; what it wrote is copied back when it ends without "
                "exec (posix_spawn's exec error), not when it execs"),
    59: full(pr, "execve", "a transform in place: new program and space, same pid; "
             "`#!` scripts and the dynamic loader through the process's file view"),
    60: with_threads("exit", "one thread of several ends alone (its clear-child-tid word "
                     "zeroed and woken); the last one ends the process"),
    61: partial(pr, "wait4", "exited, killed, stopped (WUNTRACED) and continued (WCONTINUED) "
                "children, any, one, or of a process group; the children of its machine"),
    62: partial(sig, "kill", "itself, a process of its tree, a process group (-pgid, killpg) "
                "or its own (0), -1 its tree; the stop signals stop and SIGCONT continues; "
                "ESRCH for a process outside its tree"),
    63: full(idn, "uname", "a machine called tender"),
    64: no(IPC, "semget", NO_IPC),
    65: no(IPC, "semop", NO_IPC),
    66: no(IPC, "semctl", NO_IPC),
    67: no(IPC, "shmdt", NO_IPC),
    68: no(IPC, "msgget", NO_IPC),
    69: no(IPC, "msgsnd", NO_IPC),
    70: no(IPC, "msgrcv", NO_IPC),
    71: no(IPC, "msgctl", NO_IPC),
    72: partial(de, "fcntl", "F_DUPFD(_CLOEXEC), F_GETFD/SETFD, F_GETFL/SETFL, "
               "F_GETPIPE_SZ/SETPIPE_SZ, memfd seals, POSIX and OFD locks (" + LOCKS + "), "
               "leases (never broken: nothing else opens its files); no F_SETOWN, F_NOTIFY"),
    73: partial(locks, "flock", LOCKS),
    74: full(f, "fsync"),
    75: full(f, "fdatasync"),
    76: full(f, "truncate"),
    77: full(f, "ftruncate"),
    78: no(FILES, "getdents", "the old listing: programs use getdents64"),
    79: full(ft, "getcwd"),
    80: full(ft, "chdir"),
    81: full(ft, "fchdir"),
    82: full(ft, "rename"),
    83: full(ft, "mkdir"),
    84: full(ft, "rmdir"),
    85: full(f, "creat"),
    86: full(ft, "link", LINKS),
    87: full(ft, "unlink", GHOST),
    88: full(ft, "symlink", SYMLINKS),
    89: full(ft, "readlink", PROC_LINKS),
    90: full(ft, "chmod"),
    91: full(ft, "fchmod"),
    92: partial(ft, "chown", OWNERS),
    93: partial(ft, "fchown", OWNERS),
    94: partial(ft, "lchown", OWNERS),
    95: full(ft, "umask"),
    96: full(tm, "gettimeofday"),
    97: full(pr, "getrlimit"),
    98: partial(pr, "getrusage", CPU_SPLIT + "; the largest resident size is the current "
                "one; other counts 0"),
    99: partial(idn, "sysinfo", "the machine's memory; no load, swap or process counts"),
    100: partial(tm, "times", CPU_SPLIT),
    101: no(PROCESSES, "ptrace", NO_OTHER),
    102: full(idn, "getuid"),
    103: no(SYSTEM, "syslog", ADMIN),
    104: full(idn, "getgid"),
    105: no(IDENTITY, "setuid", IDS),
    106: no(IDENTITY, "setgid", IDS),
    107: full(idn, "geteuid"),
    108: full(idn, "getegid"),
    109: partial(pr, "setpgid", GROUPS),
    110: full(pr, "getppid", "1 for a process exec started (its parent is outside the "
                "machines) and for an orphan"),
    111: partial(pr, "getpgrp", GROUPS),
    112: partial(pr, "setsid", GROUPS),
    113: no(IDENTITY, "setreuid", IDS),
    114: no(IDENTITY, "setregid", IDS),
    115: partial(idn, "getgroups", "no supplementary groups"),
    116: no(IDENTITY, "setgroups", IDS),
    117: no(IDENTITY, "setresuid", IDS),
    118: full(idn, "getresuid"),
    119: no(IDENTITY, "setresgid", IDS),
    120: full(idn, "getresgid"),
    121: partial(pr, "getpgid", GROUPS),
    122: no(IDENTITY, "setfsuid", IDS),
    123: no(IDENTITY, "setfsgid", IDS),
    124: partial(pr, "getsid", GROUPS),
    125: no(IDENTITY, "capget", "no capabilities"),
    126: no(IDENTITY, "capset", "no capabilities"),
    127: full(sig, "rt_sigpending"),
    128: no(SIGNALS, "rt_sigtimedwait", YET),
    129: no(SIGNALS, "rt_sigqueueinfo", YET),
    130: full(sig, "rt_sigsuspend"),
    131: full(sig, "sigaltstack"),
    132: full(ft, "utime"),
    133: partial(ft, "mknod", MKNOD),
    134: no(SYSTEM, "uselib", GONE),
    135: no(PROCESSES, "personality", YET),
    136: no(FILES, "ustat", GONE),
    137: no(FILES, "statfs", YET),
    138: no(FILES, "fstatfs", YET),
    139: no(SYSTEM, "sysfs", GONE),
    140: no(PROCESSES, "getpriority", NO_SCHED),
    141: no(PROCESSES, "setpriority", NO_SCHED),
    142: no(PROCESSES, "sched_setparam", NO_SCHED),
    143: no(PROCESSES, "sched_getparam", NO_SCHED),
    144: no(PROCESSES, "sched_setscheduler", NO_SCHED),
    145: no(PROCESSES, "sched_getscheduler", NO_SCHED),
    146: no(PROCESSES, "sched_get_priority_max", NO_SCHED),
    147: no(PROCESSES, "sched_get_priority_min", NO_SCHED),
    148: no(PROCESSES, "sched_rr_get_interval", NO_SCHED),
    149: no(MEMORY, "mlock", YET),
    150: no(MEMORY, "munlock", YET),
    151: no(MEMORY, "mlockall", YET),
    152: no(MEMORY, "munlockall", YET),
    153: no(SYSTEM, "vhangup", ADMIN),
    154: no(THREADS, "modify_ldt", "no local descriptor table"),
    155: no(SYSTEM, "pivot_root", ADMIN),
    156: no(SYSTEM, "_sysctl", GONE),
    157: partial(pr, "prctl", "names, pdeath signal, dumpable, no_new_privs, timer slack, "
                 "keepcaps, subreaper, THP, VMA names; others EINVAL (counted)"),
    158: partial(th, "arch_prctl", "ARCH_SET_FS and ARCH_GET_FS only"),
    159: no(TIME, "adjtimex", "the clock is the host's"),
    160: partial(pr, "setrlimit", LIMITS),
    161: no(FILES, "chroot", "the file view is the root"),
    162: full(ft, "sync", "its own writes reach their home; the host syncs its disks"),
    163: no(SYSTEM, "acct", ADMIN),
    164: no(TIME, "settimeofday", "the clock is the host's"),
    165: no(SYSTEM, "mount", ADMIN),
    166: no(SYSTEM, "umount2", ADMIN),
    167: no(SYSTEM, "swapon", ADMIN),
    168: no(SYSTEM, "swapoff", ADMIN),
    169: no(SYSTEM, "reboot", ADMIN),
    170: no(SYSTEM, "sethostname", ADMIN),
    171: no(SYSTEM, "setdomainname", ADMIN),
    172: no(SYSTEM, "iopl", ADMIN),
    173: no(SYSTEM, "ioperm", ADMIN),
    174: no(SYSTEM, "create_module", GONE),
    175: no(SYSTEM, "init_module", ADMIN),
    176: no(SYSTEM, "delete_module", ADMIN),
    177: no(SYSTEM, "get_kernel_syms", GONE),
    178: no(SYSTEM, "query_module", GONE),
    179: no(SYSTEM, "quotactl", ADMIN),
    180: no(SYSTEM, "nfsservctl", GONE),
    181: no(SYSTEM, "getpmsg", GONE),
    182: no(SYSTEM, "putpmsg", GONE),
    183: no(SYSTEM, "afs_syscall", GONE),
    184: no(SYSTEM, "tuxcall", GONE),
    185: no(SYSTEM, "security", GONE),
    186: full(th, "gettid"),
    187: no(FILES, "readahead", YET),
    188: no(FILES, "setxattr", NO_XATTR),
    189: no(FILES, "lsetxattr", NO_XATTR),
    190: no(FILES, "fsetxattr", NO_XATTR),
    191: partial(ft, "getxattr", NO_XATTR),
    192: partial(ft, "lgetxattr", NO_XATTR),
    193: partial(ft, "fgetxattr", NO_XATTR),
    194: partial(ft, "listxattr", NO_XATTR),
    195: partial(ft, "llistxattr", NO_XATTR),
    196: partial(ft, "flistxattr", NO_XATTR),
    197: no(FILES, "removexattr", NO_XATTR),
    198: no(FILES, "lremovexattr", NO_XATTR),
    199: no(FILES, "fremovexattr", NO_XATTR),
    200: partial(sig, "tkill", TO_A_THREAD),
    201: full(tm, "time"),
    202: partial(th, "futex", "the machine's table: wait, wake, requeue, cmp_requeue, wake_op "
                 "and the bitset forms, private or not, with timeouts; no priority "
                 "inheritance"),
    203: no(PROCESSES, "sched_setaffinity", NO_SCHED),
    204: partial(pr, "sched_getaffinity", "the host's answer for the machine's own process "
                 "(its CPUs, as /sys says them); of itself, its threads or its tree"),
    205: no(THREADS, "set_thread_area", "32-bit TLS: x86-64 programs use arch_prctl"),
    206: no(FILES, "io_setup", "no asynchronous I/O (programs fall back to threads or reads)"),
    207: no(FILES, "io_destroy", "no asynchronous I/O"),
    208: no(FILES, "io_getevents", "no asynchronous I/O"),
    209: no(FILES, "io_submit", "no asynchronous I/O"),
    210: no(FILES, "io_cancel", "no asynchronous I/O"),
    211: no(THREADS, "get_thread_area", "32-bit TLS: x86-64 programs use arch_prctl"),
    212: no(SYSTEM, "lookup_dcookie", ADMIN),
    213: full(de, "epoll_create"),
    214: no(DESCRIPTORS, "epoll_ctl_old", GONE),
    215: no(DESCRIPTORS, "epoll_wait_old", GONE),
    216: no(MEMORY, "remap_file_pages", "deprecated in Linux"),
    217: full(ft, "getdents64"),
    218: full(th, "set_tid_address"),
    219: no(SIGNALS, "restart_syscall", "a cut-off call restarts by being issued again"),
    220: no(IPC, "semtimedop", NO_IPC),
    221: full(f, "fadvise64", "advice: checked, then ignored"),
    222: no(TIME, "timer_create", YET),
    223: no(TIME, "timer_settime", YET),
    224: no(TIME, "timer_gettime", YET),
    225: no(TIME, "timer_getoverrun", YET),
    226: no(TIME, "timer_delete", YET),
    227: no(TIME, "clock_settime", "the clock is the host's"),
    228: full(tm, "clock_gettime"),
    229: full(tm, "clock_getres"),
    230: full(tm, "clock_nanosleep"),
    231: full(pr, "exit_group"),
    232: partial(de, "epoll_wait", EPOLL_LT),
    233: partial(de, "epoll_ctl", "an epoll set inside another answers EINVAL"),
    234: partial(sig, "tgkill", TO_A_THREAD),
    235: full(ft, "utimes"),
    236: no(SYSTEM, "vserver", GONE),
    237: no(MEMORY, "mbind", NO_NUMA),
    238: no(MEMORY, "set_mempolicy", NO_NUMA),
    239: no(MEMORY, "get_mempolicy", NO_NUMA),
    240: no(IPC, "mq_open", NO_IPC),
    241: no(IPC, "mq_unlink", NO_IPC),
    242: no(IPC, "mq_timedsend", NO_IPC),
    243: no(IPC, "mq_timedreceive", NO_IPC),
    244: no(IPC, "mq_notify", NO_IPC),
    245: no(IPC, "mq_getsetattr", NO_IPC),
    246: no(SYSTEM, "kexec_load", ADMIN),
    247: partial(pr, "waitid", "exited (WEXITED), stopped (WSTOPPED) and continued "
                 "(WCONTINUED) children, P_ALL, P_PID, P_PGID; the children of its machine"),
    248: no(SYSTEM, "add_key", "no key rings"),
    249: no(SYSTEM, "request_key", "no key rings"),
    250: no(SYSTEM, "keyctl", "no key rings"),
    251: no(PROCESSES, "ioprio_set", NO_SCHED),
    252: no(PROCESSES, "ioprio_get", NO_SCHED),
    253: partial(wa, "inotify_init", INOTIFY),
    254: partial(wa, "inotify_add_watch", INOTIFY + "; a /proc or /dev path answers EACCES"),
    255: full(wa, "inotify_rm_watch"),
    256: no(MEMORY, "migrate_pages", NO_NUMA),
    257: full(f, "openat", OPEN),
    258: full(ft, "mkdirat"),
    259: partial(ft, "mknodat", MKNOD),
    260: partial(ft, "fchownat", OWNERS),
    261: full(ft, "futimesat"),
    262: full(fs, "newfstatat"),
    263: full(ft, "unlinkat", GHOST),
    264: full(ft, "renameat"),
    265: partial(ft, "linkat", LINKS + "; AT_EMPTY_PATH on a file held in the image (an "
                  "O_TMPFILE, an unlinked file) answers EXDEV"),
    266: full(ft, "symlinkat", SYMLINKS),
    267: full(ft, "readlinkat", PROC_LINKS),
    268: full(ft, "fchmodat"),
    269: full(ft, "faccessat"),
    270: partial(de, "pselect6", "the signal mask is not applied while it waits"),
    271: partial(de, "ppoll", "the signal mask is not applied while it waits"),
    272: no(PROCESSES, "unshare", "no namespaces"),
    273: no(THREADS, "set_robust_list", "one thread: no robust futexes to release"),
    274: no(THREADS, "get_robust_list", "one thread: no robust futexes to release"),
    275: full(tr, "splice", BLOCK),
    276: full(tr, "tee", BLOCK),
    277: no(FILES, "sync_file_range", YET),
    278: no(DESCRIPTORS, "vmsplice", YET),
    279: no(MEMORY, "move_pages", NO_NUMA),
    280: full(ft, "utimensat"),
    281: partial(de, "epoll_pwait", EPOLL_LT + "; the signal mask is not applied"),
    282: partial(sig, "signalfd", SIGNALFD),
    283: full(de, "timerfd_create"),
    284: full(de, "eventfd"),
    285: partial(f, "fallocate", "no space is reserved ahead; punched holes are written as "
                "zeros (read the same, holes not kept)"),
    286: partial(de, "timerfd_settime", "TFD_TIMER_CANCEL_ON_SET is accepted: "
                "nothing sets the clock"),
    287: full(de, "timerfd_gettime"),
    288: no(NETWORK, "accept4", NO_NET),
    289: partial(sig, "signalfd4", SIGNALFD),
    290: full(de, "eventfd2"),
    291: full(de, "epoll_create1"),
    292: full(de, "dup3"),
    293: full(de, "pipe2"),
    294: partial(wa, "inotify_init1", INOTIFY),
    295: full(tr, "preadv"),
    296: full(tr, "pwritev"),
    297: no(SIGNALS, "rt_tgsigqueueinfo", YET),
    298: no(SYSTEM, "perf_event_open", ADMIN),
    299: no(NETWORK, "recvmmsg", NO_NET),
    300: no(DESCRIPTORS, "fanotify_init", ADMIN),
    301: no(DESCRIPTORS, "fanotify_mark", ADMIN),
    302: partial(pr, "prlimit64", "itself only; " + LIMITS),
    303: no(FILES, "name_to_handle_at", "no file handles"),
    304: no(FILES, "open_by_handle_at", "no file handles"),
    305: no(TIME, "clock_adjtime", "the clock is the host's"),
    306: full(ft, "syncfs", "its own writes reach their home; the host syncs its disks"),
    307: no(NETWORK, "sendmmsg", NO_NET),
    308: no(PROCESSES, "setns", "no namespaces"),
    309: no(THREADS, "getcpu", YET),
    310: no(PROCESSES, "process_vm_readv", NO_OTHER),
    311: no(PROCESSES, "process_vm_writev", NO_OTHER),
    312: no(PROCESSES, "kcmp", NO_OTHER),
    313: no(SYSTEM, "finit_module", ADMIN),
    314: no(PROCESSES, "sched_setattr", NO_SCHED),
    315: no(PROCESSES, "sched_getattr", NO_SCHED),
    316: partial(ft, "renameat2", "flags (RENAME_NOREPLACE, _EXCHANGE, _WHITEOUT) answer EINVAL"),
    317: no(PROCESSES, "seccomp", "no filters of a guest's own"),
    318: full(idn, "getrandom"),
    319: partial(f, "memfd_create", "contents travel in the image; no hugetlb; a writable "
                "MAP_SHARED mapping answers ENODEV"),
    320: no(SYSTEM, "kexec_file_load", ADMIN),
    321: no(SYSTEM, "bpf", ADMIN),
    322: partial(pr, "execveat", "as execve; AT_EMPTY_PATH (running an open descriptor) "
                 "answers ENOSYS"),
    323: no(MEMORY, "userfaultfd", YET),
    324: partial(mem, "membarrier", "one thread: every command is done at once, "
                "registration not required"),
    325: no(MEMORY, "mlock2", YET),
    326: full(tr, "copy_file_range", BLOCK),
    327: partial(tr, "preadv2", "RWF_* flags are not acted on"),
    328: partial(tr, "pwritev2", "RWF_* flags are not acted on"),
    329: no(MEMORY, "pkey_mprotect", "no protection keys"),
    330: no(MEMORY, "pkey_alloc", "no protection keys"),
    331: no(MEMORY, "pkey_free", "no protection keys"),
    332: partial(fs, "statx", "the basic stats; no birth time"),
    333: no(FILES, "io_pgetevents", "no asynchronous I/O"),
    334: no(THREADS, "rseq", "glibc goes on without it (and no rseq area has to move)"),
    424: partial(sig, "pidfd_send_signal", PIDFD + "; a siginfo given is sent as kill's"),
    425: no(FILES, "io_uring_setup", "no io_uring"),
    426: no(FILES, "io_uring_enter", "no io_uring"),
    427: no(FILES, "io_uring_register", "no io_uring"),
    428: no(SYSTEM, "open_tree", ADMIN),
    429: no(SYSTEM, "move_mount", ADMIN),
    430: no(SYSTEM, "fsopen", ADMIN),
    431: no(SYSTEM, "fsconfig", ADMIN),
    432: no(SYSTEM, "fsmount", ADMIN),
    433: no(SYSTEM, "fspick", ADMIN),
    434: partial(sig, "pidfd_open", PIDFD),
    435: with_threads("clone3", THREAD_CLONE),
    436: full(de, "close_range"),
    437: no(FILES, "openat2", YET),
    438: no(PROCESSES, "pidfd_getfd", NO_OTHER),
    439: full(ft, "faccessat2"),
    440: no(MEMORY, "process_madvise", NO_OTHER),
    441: no(DESCRIPTORS, "epoll_pwait2", NO_WAIT),
    442: no(SYSTEM, "mount_setattr", ADMIN),
    443: no(SYSTEM, "quotactl_fd", ADMIN),
    444: no(PROCESSES, "landlock_create_ruleset", "no sandboxing rules of a guest's own"),
    445: no(PROCESSES, "landlock_add_rule", "no sandboxing rules of a guest's own"),
    446: no(PROCESSES, "landlock_restrict_self", "no sandboxing rules of a guest's own"),
    447: no(MEMORY, "memfd_secret", YET),
    448: no(MEMORY, "process_mrelease", NO_OTHER),
    449: no(THREADS, "futex_waitv", YET),
    450: no(MEMORY, "set_mempolicy_home_node", NO_NUMA),
}


def problems() -> list[str]:
    """What is wrong with the table: a number or name that is not Linux's, a call missing, a
    handler no entry serves. Empty when it is whole."""
    found = [f"{nr}: {e.name} is not Linux's name for it ({SYSCALL_NAMES.get(nr)})"
             for nr, e in TABLE.items() if SYSCALL_NAMES.get(nr) != e.name]
    found += [f"{nr}: {name} has no entry" for nr, name in SYSCALL_NAMES.items()
              if nr not in TABLE]
    served = {(e.family, e.name) for e in TABLE.values() if e.handler is not None}
    found += [f"{m.__name__}.HANDLERS[{name!r}] is in no entry" for m in FAMILY_MODULES
              for name in m.HANDLERS if (m.FAMILY, name) not in served]
    found += [f"{e.name}: family {e.family!r} is not one of {FAMILIES}"
              for e in TABLE.values() if e.family not in FAMILIES]
    return found


def handlers() -> dict[int, Handler]:
    """The handler of every call served, by number; those that touch files heard by the
    caller's inotify watches (watches.observed)."""
    return {nr: watches.observed(e.name, signals.bound(e.name, e.handler))
            for nr, e in TABLE.items() if e.handler is not None}


def counts() -> Counter[Status]:
    return Counter(e.status for e in TABLE.values())


def markdown() -> str:
    """docs/syscalls.md: the counts, then each family's calls with status and reason."""
    c = counts()
    served = c[Status.SUPPORTED] + c[Status.PARTIAL]
    lines = [
        "# System calls",
        "",
        "Every x86-64 Linux system call and what a Tender process gets when it makes it, "
        "generated from",
        "`tender_ray/kernel/syscalls/table.py` (`make syscalls-doc`; a unit test checks this "
        "file is current).",
        "*supported*: as Linux; *partial*: served, with the difference said; *not*: answered "
        "ENOSYS and",
        "counted as unsupported (`tender-ray exec --stats`, the scenario report), with the "
        "reason.",
        "",
        "| | calls |",
        "| --- | ---: |",
        f"| supported | {c[Status.SUPPORTED]} |",
        f"| partial | {c[Status.PARTIAL]} |",
        f"| not | {c[Status.NOT]} |",
        f"| served (supported + partial) | {served} of {len(TABLE)} |",
        f"| gVisor (linux64.go) | {GVISOR_SUPPORTED} of about {GVISOR_TOTAL} |",
        "",
    ]
    for family in FAMILIES:
        entries = sorted((nr, e) for nr, e in TABLE.items() if e.family == family)
        fc = Counter(e.status for _, e in entries)
        lines += [f"## {family}", "",
                  f"{fc[Status.SUPPORTED]} supported, {fc[Status.PARTIAL]} partial, "
                  f"{fc[Status.NOT]} not.", "",
                  "| nr | call | status | note |", "| ---: | --- | --- | --- |"]
        lines += [f"| {nr} | `{e.name}` | {e.status.value} | {e.note} |" for nr, e in entries]
        lines.append("")
    return "\n".join(lines)
