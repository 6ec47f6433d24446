"""Direct descriptors: a read-only regular host file of a native guest's view held as a real
host descriptor at the guest's own descriptor number, so that its data-plane calls (read,
pread64, lseek, fstat, fadvise64) go straight to the host kernel while every other call stays
mediated by the machine.

Why it is built this way (seccomp facts, Linux 6.x):

* The guest chooses nothing: it passes the number `open` returned, so the host descriptor must
  have exactly the guest's number, and the guest's numbers follow the lowest-free rule. Giving
  direct descriptors a reserved high range would break that rule, so guest fd N is host fd N.
* A seccomp filter is immutable, and a stacked one can only narrow: the kernel runs every
  filter and keeps the most restrictive answer (TRACE beats ALLOW). So the stub's own filter
  is the widest the process will ever be (those calls on fds 0..63 pass), and before a guest
  runs the tracer stacks a filter that narrows it to a 64-bit mask of the numbers that hold a
  direct descriptor or nothing (nothing: the host kernel answers EBADF, as the machine
  would). A number that comes to hold a mediated file is dropped by one more stacked filter;
  it stays dropped for this host process (its calls are then served by the machine, still
  exactly). The stub keeps no descriptor below LIMIT (its memory file is fd 100), so a call
  the filters pass can only reach a file the machine put there.
* The host kernel writes a read's data into the guest's pages, which are the machine's memory
  file mapped shared, so memory stays exact, but only where the page is mapped writable: a
  page not yet present (demand paging) or write-protected (write tracking, copy on write)
  would give the guest EFAULT instead of a fault the machine serves. A cBPF filter cannot
  read memory, but it can compare the buffer argument: the stacked filter also names one
  buffer window, a range of the guest's memory made present and checked mapped writable in
  the host. A read whose buffer lies outside it stops at the tracer and the machine serves it;
  its buffer becomes the next window, and since a filter cannot widen, the guest then moves
  into a fresh host process at its next run (a few milliseconds, at most REHOSTS times per
  program a process runs: an exec starts the count again). When a memory call, copy-on-write
  or write tracking takes any page of the window away, a stacked filter withdraws the window.
  readv's buffers are in memory: it stays mediated. A guest of several host threads has no
  direct files: its first clone retires them (`DirectFiles.retire`).
* Installing: the machine opens the file by its host path (no symlink as the last part) and
  checks it is the very inode its view opened (a renamed directory or a swapped symlink makes
  it another file: it stays mediated through the view's handle); the guest opens
  /proc/<machine>/fd/<that fd> (a system call injected at the trampoline), which is dup3'd to
  the number, and `pidfd_getfd` gives the machine a descriptor on the guest's open file
  description. The machine's `HostFile` then reads and seeks through that description, so a
  descriptor shared by dup or fork keeps one offset, and a freeze reads the offset from it.
  (The stub is traced with SECCOMP_RET_TRACE, not user notification, so there is no
  SECCOMP_IOCTL_NOTIF_ADDFD to install with: the open is injected.)
* A signal stop right after a call the kernel ran itself shows that call's number in
  orig_rax; `settle_syscall` clears it, or a call injected from that stop (or registers
  written back there) would make the kernel run the read again and skip a block.

The standard output and error of a process whose streams are its own are host pipes at the
guest's numbers (`output_pipes`, which says why): the same mask and window let `write` of at
most PIPE_BUF bytes pass on them (`narrowing.narrowing_filter`'s `writes`), and a mediated
write of at least WRITE_HINT_BYTES there moves the window as a read does.

Measured (`tender-ray bench io --size 256`, against `--no-direct-files`): CPU over native went
from 1.34 to 0.94 for `sha256sum`, 4.45 to 1.15 for a `python3` line read; with output pipes
`dd bs=4k` to stdout makes no mediated write (docs/benchmarks.md, 2026-12-08). Writes to host
files and pipes between processes, `writev` and `readv` are not direct yet.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import weakref
from collections.abc import Callable
from typing import Final

from tender_ray.abi.linux import Signal
from tender_ray.engines.native.libc import Regs
from tender_ray.engines.native.narrowing import (
    LIMIT,
    PIPE_BUF,
    SYS_PREAD64,
    SYS_READ,
    SYS_WRITE,
    narrowing_filter,
)
from tender_ray.engines.native.output_pipes import OutputPipe, OutputSink, eligible_output
from tender_ray.engines.native.tracer import Host, Tracer
from tender_ray.errors import OutOfMemoryError
from tender_ray.resources.file_view import LocalFileService
from tender_ray.resources.open_file import FdEntry, FdTable, HostFile, OpenFile, OutputStream
from tender_ray.resources.real_memory import PAGE_SHIFT, PAGE_SIZE
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE

ENABLED = True  # False: every call stays mediated (a stacked filter lets nothing pass)
REHOSTS: Final = 8  # fresh host processes a program may be given to widen its buffer window
WINDOW_BYTES: Final = 16 << 20  # the most of one area a buffer window covers (made present)
REGAIN_BYTES: Final = 1 << 20  # a file this large at a dropped number is worth a fresh host
HINT_BYTES: Final = 4096  # a mediated read at least this long on a direct fd moves the window
WRITE_HINT_BYTES: Final = 1024  # and so does a mediated write this long to an output pipe
MAX_FILTERS: Final = 24  # stacked filters per host process; beyond, everything is mediated

SYS_CLOSE: Final = 3
SYS_OPENAT: Final = 257
SYS_DUP3: Final = 292
SYS_SECCOMP: Final = 317
SYS_PIDFD_GETFD: Final = 438
AT_FDCWD: Final = -100
SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_FILTER_FLAG_TSYNC: Final = 1

# Where in the trampoline page the tracer writes what an injected call reads (the page is
# readable by the guest's kernel calls; the stub's code and filter are in its first 0x200
# bytes, the itimer values at 0x800).
_PATH_OFFSET: Final = 0x900
_FILTER_OFFSET: Final = 0xA00
_FILTER_ROOM: Final = PAGE_SIZE - _FILTER_OFFSET

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    result = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    return int(result)


def eligible(file: object, entries: dict[int, FdEntry] | None = None) -> bool:
    """A description that can become direct: a read-only regular host file of this node,
    not yet direct anywhere (its description lives in at most one host process) or, given
    the process's table `entries`, direct nowhere now and held by this process alone (`dd`
    opens its input at 3 and moves it to 0: the description then moves with it)."""
    if not (isinstance(file, HostFile) and file.flags & os.O_ACCMODE == os.O_RDONLY
            and file.lost is None and file.handle is not None
            and isinstance(file.service, LocalFileService)):
        return False
    if getattr(file, "direct_fd", None) is None:
        return True
    return (entries is not None and not _installed.get(file, 0)
            and sum(e.file is file for e in entries.values()) == file.refs)


# How many host processes hold each direct description installed (one, or none once its
# number was closed there: it may then move, see `eligible`).
_installed: weakref.WeakKeyDictionary[HostFile, int] = weakref.WeakKeyDictionary()


class DirectFiles:
    """The direct descriptors of one native engine's host process, and the filters that
    narrow what passes (tracer thread only, but `table`, set when a process is bound)."""

    def __init__(self, tracer: Tracer, stats: dict[str, int]) -> None:
        self._tracer = tracer
        self.stats = stats
        stats.setdefault("direct_installed", 0)
        stats.setdefault("filters", 0)
        stats.setdefault("rehosts", 0)
        # The bound process's descriptor table (None: nothing can be direct).
        self.table: Callable[[], FdTable] | None = None
        self._host: Host | None = None
        self._allowed = 0  # the numbers the host's filters let pass
        self._writes = 0  # the numbers they let `write` pass on (`output_pipes`)
        self._window: tuple[int, int] | None = None  # the buffer bytes they let be written
        self._filters = 0
        self._direct: dict[int, HostFile] = {}  # number -> its description, in this host
        # The bound process's own standard streams (None: its output is not its own), the
        # run's preemption, and the host pipes of this host: number -> pipe.
        self.output: OutputSink | None = None
        self.preempt: Callable[[], None] = lambda: None
        self._outputs: dict[int, OutputPipe] = {}
        self._hint: int | None = None  # a buffer a mediated read on a direct fd used
        self._regain = False  # a large eligible file sits at a number the filters dropped
        self.rehosts = 0
        # A guest of several host threads has no direct files: its first thread's filters
        # let nothing pass from its first clone on (`retire`), and the other threads' contexts
        # never stack or install (`of_a_thread`): several tables of direct numbers for one
        # host descriptor table would disagree, and each thread's filters would pile up.
        self.retired = False
        self.of_a_thread = False

    def unbind(self) -> None:
        self.close_outputs()
        self.output = None
        self.table = None
        self._hint = None
        self._regain = False
        self.rehosts = 0
        self.retired = False  # (a new process on this context: a new host process)

    def retire(self, host: Host) -> None:
        """The guest is about to have a second host thread (tracer thread, `host` stopped):
        from now on every data-plane call is mediated, for every thread (the filter is
        stacked on the whole host process, and a new thread inherits it)."""
        if self.of_a_thread or self.retired:
            return
        self.retired = True
        if self._host is host:
            self._stack(host, 0, None)  # also closes the direct numbers in the host
            self.close_outputs()
            self._hint = None
            self._regain = False

    def _off(self, host: Host) -> bool:
        """Whether direct files are off for the guest `host` runs (it has, or had, threads:
        a context bound again keeps them off while its host process has threads)."""
        return (self.retired or self.of_a_thread or host.leader is not None
                or bool(host.threads))

    def wants_rehost(self, host: Host, space: VirtualSpace) -> bool:
        """A fresh host process would let this process's reads pass (see the docstring);
        never for a guest of several host threads (a fresh process would lose them)."""
        group = _group(host)
        return (not self._off(host) and group is self._host and ENABLED and self.rehosts < REHOSTS
                and group is host and not getattr(group, "threads", None)
                and ((self._hint is not None and bool(self._direct or self._outputs))
                     or self._regain)
                and space.dirty is None)

    def rehosted(self) -> None:
        """The guest left its host process (which is gone): its direct files become
        direct again in the next one, each on a description of its own, and its output
        pipes (empty: drained when its run ended) give way to new ones."""
        for file in self._direct.values():
            file.leave_direct()
            _installed.pop(file, None)
        self._direct = {}
        self.close_outputs()
        self._host = None
        self.rehosts += 1
        self.stats["rehosts"] += 1

    # --- tracer thread ---------------------------------------------------------------------

    def before_run(self, host: Host, space: VirtualSpace,
                   sync: Callable[[int, int], None]) -> None:
        """At the start of a run: a new host process gets its narrowing filter (with a buffer
        window where a mediated read showed one); then the descriptors are brought in line."""
        if self._off(host):
            if not self.of_a_thread and host.leader is None and host is not self._host:
                # a fresh host process for a guest whose files stay mediated: the stub's
                # wide filter must not let its reads reach the (empty) host descriptors
                self._host, self._direct, self._filters = host, {}, 0
                self._allowed, self._window = (1 << LIMIT) - 1, None
                self._writes = (1 << LIMIT) - 1
                self._stack(host, 0, None)
            return
        if _group(host) is not self._host:
            self.close_outputs()
            self._host = _group(host)
            self._direct = {}
            self._filters = 0
            self._allowed = self._writes = (1 << LIMIT) - 1
            self._window = None
            table = self.table() if self.table is not None and ENABLED else None
            allowed = writes = 0
            if table is not None:
                for n in range(LIMIT):
                    entry = table.entries.get(n)
                    if entry is None or eligible(entry.file, table.entries):
                        allowed |= 1 << n
                    if entry is not None and self._output_ok(entry.file):
                        writes |= 1 << n  # (only these: other numbers never cost a filter)
            window = None
            if allowed and self._hint is not None and space.dirty is None:
                window = self._make_window(host, space, self._hint, sync)
            self._hint = None
            self._regain = False
            self._stack(host, allowed, window, writes)
        self.reconcile(host, space)

    def after_call(self, host: Host, space: VirtualSpace, nr: int,
                   args: tuple[int, ...]) -> bool:
        """After the machine served a call: bring the descriptors in line. True: a read on
        a direct descriptor stopped here (its buffer was outside the window) and a fresh
        host process would let the next ones pass, so the run should end now."""
        if self._off(host) or _group(host) is not self._host:
            return False
        fd = args[0] & 0xFFFFFFFF
        if ((nr in (SYS_READ, SYS_PREAD64) and fd in self._direct and args[2] >= HINT_BYTES)
                or (nr == SYS_WRITE and fd in self._outputs
                    and WRITE_HINT_BYTES <= args[2] <= PIPE_BUF)):
            self._hint = args[1]
        self.reconcile(host, space)
        return self.wants_rehost(host, space)

    def reconcile(self, host: Host, space: VirtualSpace) -> None:
        """Make the host's descriptors below LIMIT the direct ones of the guest's table, and
        narrow the filter where a number now holds a mediated file or the window lost a
        page. `host` is the stopped thread that makes the injected calls."""
        if self._off(host) or _group(host) is not self._host:
            return
        table = self.table() if self.table is not None else None
        entries = table.entries if table is not None else {}
        for n, file in list(self._direct.items()):
            entry = entries.get(n)
            if entry is None or entry.file is not file:
                del self._direct[n]
                _installed[file] = _installed.get(file, 1) - 1
                self._tracer.inject(host, SYS_CLOSE, n)
        drop = 0
        for n, entry in entries.items():
            if n >= LIMIT or n in self._direct:
                continue
            if not (self._allowed >> n) & 1:
                if not self._regain and _large(entry.file, entries):
                    self._regain = True  # a fresh host process can hold it directly
                continue
            candidate = entry.file
            if eligible(candidate, entries):
                assert isinstance(candidate, HostFile)
                candidate.leave_direct()  # (moving: its offset is kept)
                if self._install(host, n, candidate):
                    self._direct[n] = candidate
                    continue
            drop |= 1 << n
        drop_writes = self._reconcile_outputs(host, entries)
        window = self._window
        if window is not None and not _writable(host, window):
            window = None
        if drop or drop_writes or window != self._window:
            self._stack(host, self._allowed & ~drop, window, self._writes & ~drop_writes)

    # --- standard streams as host pipes (`output_pipes`) -----------------------------------

    def _output_ok(self, file: object) -> bool:
        output = self.output
        if output is None or not ENABLED or not isinstance(file, OpenFile):
            return False
        with output.lock:
            return eligible_output(file, output)

    def _reconcile_outputs(self, host: Host, entries: dict[int, FdEntry]) -> int:
        """Make the numbers that hold a standard stream of the process's own its host pipes
        (one pipe a stream, its description's numbers sharing it); the numbers to drop from
        `write`'s mask: those that now hold anything else."""
        for n, pipe in list(self._outputs.items()):
            entry = entries.get(n)
            if entry is None or entry.file is not pipe.description \
                    or not self._output_ok(entry.file):
                self._close_output(host, n)
        drop = 0
        for n, entry in entries.items():
            if n >= LIMIT or n in self._outputs or not (self._writes >> n) & 1:
                continue
            if not (self._output_ok(entry.file) and self._install_output(host, n, entry.file)):
                drop |= 1 << n
        return drop

    def _install_output(self, host: Host, n: int, file: OpenFile) -> bool:
        """Put the host pipe of `file`'s stream at host descriptor `n`: a new pipe, or the
        one another number of the same description holds; False where it cannot be."""
        assert self.output is not None and isinstance(file, OutputStream)
        inject = self._tracer.inject
        sharing = [(m, pipe) for m, pipe in self._outputs.items() if pipe.stream == file.stream]
        if sharing:
            m, pipe = sharing[0]
            if pipe.description is not file:
                return False  # a second description of one stream: mediated, in order
            if inject(host, SYS_DUP3, m, n, 0) != n:
                return False
            self._outputs[n] = pipe
            return True
        pipe = OutputPipe(self.output, file.stream, file, self.preempt)
        page = host.trampoline & ~(PAGE_SIZE - 1)
        _poke_bytes(host, page + _PATH_OFFSET,
                    f"/proc/{os.getpid()}/fd/{pipe.write_end}".encode() + b"\0")
        got = inject(host, SYS_OPENAT, AT_FDCWD, page + _PATH_OFFSET, os.O_WRONLY, 0)
        if got >= 0 and got != n:
            moved = inject(host, SYS_DUP3, got, n, 0)
            inject(host, SYS_CLOSE, got)
            got = n if moved == n else -1
        if got != n:
            with self.output.lock:
                pipe.close()
            return False
        pipe.installed()
        with self.output.lock:
            self._outputs[n] = pipe
        self.stats["output_pipes"] = self.stats.get("output_pipes", 0) + 1
        return True

    def _close_output(self, host: Host, n: int) -> None:
        """Number `n` no longer holds its pipe in the host (drained first: in order)."""
        pipe = self._outputs[n]
        assert self.output is not None
        with self.output.lock:
            pipe.drain()
            del self._outputs[n]
            if pipe not in self._outputs.values():
                pipe.close()
        self._tracer.inject(host, SYS_CLOSE, n)

    def close_outputs(self) -> None:
        """Drain and close every output pipe (their host ends are gone or going)."""
        output, pipes = self.output, set(self._outputs.values())
        if output is None or not pipes:
            self._outputs = {}
            return
        with output.lock:
            for pipe in pipes:
                pipe.close()
            self._outputs = {}

    def drain_outputs(self) -> None:
        """Move what the guest wrote to its pipes into its streams (any thread): at the end
        of every run, and before anything that orders against the streams."""
        output = self.output
        if output is None or not self._outputs:
            return
        with output.lock:
            for pipe in set(self._outputs.values()):
                pipe.drain()

    def settle(self, host: Host, sig: int) -> bool:
        """At a stop for signal `sig`: True when the guest's direct write to an output pipe
        was cut off before it wrote (its stream full: the drain thread ended the run) or
        refused by the host (EPIPE): the machine serves that call now, as a mediated write.
        Otherwise, as `settle_syscall`."""
        r = host.regs
        result = int(r.rax) - (1 << 64) if int(r.rax) >> 63 else int(r.rax)
        if (self._outputs and sig in _CUTTERS and int(r.orig_rax) == SYS_WRITE
                and _group(host) is self._host
                and (int(r.rdi) & 0xFFFFFFFF) in self._outputs
                and result in (*_ERESTART, -errno.EPIPE)):
            return True
        if settle_syscall(r):
            host.regs_dirty = True
        return False

    # --- the pieces ------------------------------------------------------------------------

    def _stack(self, host: Host, allowed: int, window: tuple[int, int] | None,
               writes: int = 0) -> None:
        if self._filters >= MAX_FILTERS:
            allowed, window, writes = 0, None, 0
            if (self._allowed == 0 and self._writes == 0 and self._window is None
                    and self._filters):
                return
        program = narrowing_filter(allowed, window, writes)
        if len(program) + 16 > _FILTER_ROOM:
            raise ValueError("the narrowing filter does not fit its room")
        page = host.trampoline & ~(PAGE_SIZE - 1)
        where = page + _FILTER_OFFSET
        _poke_bytes(host, where + 16, program)
        _poke_bytes(host, where, struct.pack("<HxxxxxxQ", len(program) // 8, where + 16))
        result = self._tracer.inject(host, SYS_SECCOMP, SECCOMP_SET_MODE_FILTER,
                                     SECCOMP_FILTER_FLAG_TSYNC, where)
        if result != 0:
            raise OSError(-result if result < 0 else 0,
                          f"stacking a seccomp filter in the guest failed ({result})")
        self._filters += 1
        self.stats["filters"] += 1
        self._allowed, self._window, self._writes = allowed, window, writes
        for n in [n for n in self._direct if not (allowed >> n) & 1]:
            file = self._direct.pop(n)  # (past MAX_FILTERS: everything is mediated)
            _installed[file] = _installed.get(file, 1) - 1
            self._tracer.inject(host, SYS_CLOSE, n)
        for n in [n for n in self._outputs if not (writes >> n) & 1]:
            self._close_output(host, n)

    def _install(self, host: Host, n: int, file: HostFile) -> bool:
        """Put `file` at host descriptor `n`; False (nothing changed) where it cannot be."""
        service, handle = file.service, file.handle
        assert service is not None and handle is not None
        try:
            viewed = service.fstat(handle)
            tmp = os.open(file.host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                          | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            return False
        try:
            st = os.fstat(tmp)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (viewed.dev,
                                                                          viewed.ino):
                return False  # the path leads elsewhere now: the view's handle serves it
            page = host.trampoline & ~(PAGE_SIZE - 1)
            path = f"/proc/{os.getpid()}/fd/{tmp}".encode() + b"\0"
            _poke_bytes(host, page + _PATH_OFFSET, path)
            inject = self._tracer.inject
            got = inject(host, SYS_OPENAT, AT_FDCWD, page + _PATH_OFFSET,
                         os.O_RDONLY | os.O_CLOEXEC, 0)
            if got < 0:
                return False
            if got != n:
                moved = inject(host, SYS_DUP3, got, n, os.O_CLOEXEC)
                inject(host, SYS_CLOSE, got)
                if moved != n:
                    return False
            group = _group(host)
            with group.lock:
                pidfd = group.pidfd
            try:
                link = _pidfd_getfd(pidfd, n)
            except OSError:
                inject(host, SYS_CLOSE, n)
                return False
            os.lseek(link, file.offset, os.SEEK_SET)
            file.go_direct(link)
            _installed[file] = _installed.get(file, 0) + 1
            self.stats["direct_installed"] += 1
            return True
        finally:
            os.close(tmp)

    def _make_window(self, host: Host, space: VirtualSpace, address: int,
                     sync: Callable[[int, int], None]) -> tuple[int, int] | None:
        """Make the pages around a buffer present and mapped writable: the window, or None."""
        us = space.find(address)
        if us is None or us.region is None or not us.perms & PROT_WRITE:
            return None
        page = address & ~(PAGE_SIZE - 1)
        lo = max(us.start, page - WINDOW_BYTES // 2, (address >> 32) << 32)
        hi = min(us.end, lo + WINDOW_BYTES, ((address >> 32) + 1) << 32)
        lo_vpn, hi_vpn = lo >> PAGE_SHIFT, hi >> PAGE_SHIFT
        try:
            space.populate(us, lo_vpn, hi_vpn)
        except OutOfMemoryError:
            return None
        sync(lo_vpn, hi_vpn)
        window = (lo, hi)
        return window if _writable(host, window) else None


_ERESTART: Final = (-512, -513, -514)  # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
_ERESTART_RESTARTBLOCK: Final = -516
# The signals that cut a direct write off for the machine to serve: the run's end (the
# quantum signal, the CPU-time timer) and the host's SIGPIPE; any other is the guest's own.
_CUTTERS: Final = (Signal.SIGURG, Signal.SIGPROF, Signal.SIGPIPE)
_MASK64: Final = (1 << 64) - 1


def settle_syscall(regs: Regs) -> bool:
    """At a signal stop just after a call the kernel ran itself (a direct one), make the
    registers say "in no system call": the call is over, or, cut off to be restarted, is
    about to be made again (as the kernel would). Otherwise a call injected from this stop,
    or registers written back at one, would make the kernel run that call a second time.
    True when the registers changed."""
    nr = int(regs.orig_rax)
    if nr >> 63:
        return False
    result = int(regs.rax) - (1 << 64) if int(regs.rax) >> 63 else int(regs.rax)
    if result in _ERESTART:
        regs.rax = nr
        regs.rip = (int(regs.rip) - 2) & _MASK64
    elif result == _ERESTART_RESTARTBLOCK:
        regs.rax = -errno.EINTR & _MASK64
    regs.orig_rax = _MASK64
    return True


def _large(file: object, entries: dict[int, FdEntry]) -> bool:
    """An eligible file worth a fresh host process (see `REGAIN_BYTES`)."""
    if not eligible(file, entries):
        return False
    assert isinstance(file, HostFile) and file.service is not None and file.handle is not None
    try:
        return file.service.fstat(file.handle).size >= REGAIN_BYTES
    except OSError:
        return False


def _group(host: Host) -> Host:
    """The host process's first thread (the one that holds its descriptors' state)."""
    group = getattr(host, "group", host)
    return group if isinstance(group, Host) else host


def _writable(host: Host, window: tuple[int, int]) -> bool:
    """Every page of the window is mapped writable in the host process."""
    lo, hi = window[0] >> PAGE_SHIFT, window[1] >> PAGE_SHIFT
    at = lo
    for v, n, _, prot in host.maps.within(lo, hi):
        if v != at or not prot & PROT_WRITE:
            return False
        at = v + n
    return at == hi


def _poke_bytes(host: Host, address: int, data: bytes) -> None:
    data = data + bytes(-len(data) % 8)
    for i in range(0, len(data), 8):
        host.poke(address + i, int.from_bytes(data[i:i + 8], "little"))
