"""Running one program as a Tender process on a cluster and following it to its end, as a
shell runs a program.

The driver finds the program as a shell does (a bare name on PATH, a `#!` script through its
interpreter), forwards the process's output as it appears and the signals a terminal sends to
it, follows it from machine to machine when it migrates, and returns what `tender-ray exec
--stats` reports.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import signal
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tender_ray.abi.linux import TCGETS, TIOCGWINSZ, Signal
from tender_ray.errors import (
    BadProgramError,
    CordonedError,
    MachineError,
    MachineStoppedError,
    NoReplyError,
    ProcessStateError,
    ProcessTreeError,
    TenderError,
    UnknownProcessError,
    UsageError,
)
from tender_ray.resources.file_view import FileStat, FileViewSpec, StreamIdentity
from tender_ray.resources.program import parse_program

if TYPE_CHECKING:  # the Ray layer loads when a program starts, not to find the program
    from tender_ray.cluster.cluster import Cluster, MachineHandle
    from tender_ray.kernel.snapshots import OutputChunk, ProcessInfo
    from tender_ray.migration.options import MigrationOptions
    from tender_ray.migration.record import MigrationRecord

OutputSink = Callable[[int, bytes], None]  # (fd, data); raises BrokenPipeError once closed


@dataclass
class ExecResult:
    pid: int
    exit_status: int
    exit_reason: str
    run_seconds: float
    cpu_seconds: float
    syscalls: dict[str, int]
    unsupported: dict[str, int]
    migrations: list[MigrationRecord] = field(default_factory=list)
    machine: str = ""

    def stats(self) -> dict[str, Any]:
        return {"pid": self.pid, "exit_status": self.exit_status,
                "exit_reason": self.exit_reason, "run_seconds": self.run_seconds,
                "cpu_seconds": self.cpu_seconds, "syscalls": self.syscalls,
                "unsupported_syscalls": self.unsupported,
                "migrations": [m.as_dict() for m in self.migrations],
                "final_machine": self.machine}


# --- finding the program, as a shell and the kernel's execve do ---------------------------------

class ProgramNotFoundError(BadProgramError):
    """No such program: a path that does not exist, or a name on no directory of PATH."""


SHEBANG_LIMIT = 256  # bytes of a `#!` line the kernel reads (BINPRM_BUF_SIZE)
SHEBANG_DEPTH = 4  # interpreters that are scripts themselves, at most (as Linux allows)


@dataclass(frozen=True)
class Program:
    """What runs: the executable's image, the name of the process, and its argv (for a
    script: its interpreter, the `#!` line's argument, the script's path, the arguments)."""

    image: bytes
    name: str
    argv: tuple[str, ...]
    path: str  # the executable file loaded (the interpreter, for a script)


def find_on_path(name: str, path_env: str | None) -> str:
    """The first executable regular file `name` in PATH's directories (an empty entry is the
    current directory, as in a shell); ProgramNotFoundError when there is none."""
    for directory in (path_env if path_env is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ProgramNotFoundError(name, "not found on PATH; give its path (e.g. ./" + name +
                               "), or add its directory to PATH")


def read_program(path: str | os.PathLike[str]) -> bytes:
    """The program file's bytes, checked to be an x86-64 Linux executable."""
    image = _read(str(path))
    parse_program(image, str(path))
    return image


def _read(path: str) -> bytes:
    p = Path(path)
    if not p.exists():
        raise ProgramNotFoundError(path, "no such file; check the path (a name without a "
                                         "slash is looked up on PATH)")
    if not p.is_file():
        raise BadProgramError(path, "not a regular file; give an executable file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BadProgramError(path, f"cannot be read ({exc.strerror})") from exc


def shebang(image: bytes, path: str) -> tuple[str, str | None] | None:
    """A script's interpreter and its optional argument (the rest of the `#!` line, one
    argument, as Linux passes it), or None for a file that is not a script."""
    if not image.startswith(b"#!"):
        return None
    line = image[2:SHEBANG_LIMIT].split(b"\n", 1)[0].strip(b" \t\r")
    if not line:
        raise BadProgramError(path, "its #! line names no interpreter; write `#!/path/to/"
                                    "interpreter` on its first line")
    interpreter, _, argument = line.replace(b"\t", b" ").partition(b" ")
    argument = argument.strip(b" \t")
    return (interpreter.decode("utf-8", "surrogateescape"),
            argument.decode("utf-8", "surrogateescape") if argument else None)


def resolve_program(program: str, args: Sequence[str], *, path_env: str | None = None,
                    root: str = "/") -> Program:
    """The program a shell would run for `program args...`: a name without a slash is looked
    up on PATH; a `#!` script runs its interpreter with [interpreter, argument?, script,
    args...], as execve does (an interpreter that is a script itself too, a few levels deep),
    the interpreter read under `root` (the program's view of the host tree).
    ProgramNotFoundError when there is no such program; BadProgramError, saying what to do,
    when it cannot run."""
    filename = program if "/" in program else find_on_path(program, path_env)
    name = os.path.basename(program)
    argv = [name, *args]
    load = filename  # the host file read for `filename`
    for depth in range(SHEBANG_DEPTH + 1):
        try:
            image = _read(load)
        except ProgramNotFoundError:
            if depth == 0:
                raise
            raise BadProgramError(program, f"bad interpreter: {filename} does not exist; "
                                           "install it, or fix the script's #! line") from None
        script = shebang(image, filename)
        if script is None:
            if not image.startswith(b"\x7fELF"):
                raise BadProgramError(filename, "neither an ELF executable nor a #! script; "
                                                "give an x86-64 Linux program, or run the file "
                                                "with its interpreter (e.g. `tender-ray exec "
                                                "/bin/sh FILE`)")
            parse_program(image, filename)
            return Program(image, name, tuple(argv), load)
        interpreter, argument = script
        argv = [interpreter, *([argument] if argument else []), filename, *argv[1:]]
        filename = interpreter
        load = os.path.join(root, interpreter.lstrip("/")) if interpreter.startswith("/") \
            else interpreter
    raise BadProgramError(program, f"more than {SHEBANG_DEPTH} levels of #! interpreters; "
                                   "point its #! line at a program")


STDIN_BLOCK = 1 << 16  # the driver reads its standard input in blocks of 64 KiB
STDIN_BLOCKS_HELD = 16  # blocks read ahead of the guest at most (bounded memory)


class StdinPump:
    """The driver's standard input, read by a thread into a bounded queue of blocks and fed
    by the exec loop to whichever machine holds the process now. A block the guest's buffer
    has no room for waits for a later round (back-pressure)."""

    def __init__(self, fd: int) -> None:
        self.blocks: queue.Queue[bytes] = queue.Queue(STDIN_BLOCKS_HELD)  # b"": end of file
        self.held: bytes | None = None  # the exec loop's: a block not yet taken
        self.done = False  # the end of file was passed on
        threading.Thread(target=self._read, args=(fd,), name="stdin", daemon=True).start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                block = os.read(fd, STDIN_BLOCK)
            except OSError:
                block = b""  # unreadable from now on: the guest sees the end of its input
            self.blocks.put(block)
            if not block:
                return

    def feed(self, where: MachineHandle, pid: int) -> None:
        """Feed what is read so far, as much as the guest's buffer takes."""
        while not self.done:
            if self.held is None:
                try:
                    self.held = self.blocks.get_nowait()
                except queue.Empty:
                    return
            try:
                where.feed_stdin(pid, self.held, eof=not self.held)
            except UsageError:
                return  # its buffer is full: try again next round
            self.done = not self.held
            self.held = None


KERNEL_TERMIOS = 36  # bytes of the kernel's struct termios, what TCGETS fills (not libc's 60)


def stream_identity(fd: int) -> StreamIdentity | None:
    """What the driver's descriptor `fd` is, for the guest's same descriptor to answer as:
    a regular file, a pipe, a terminal (with its settings), /dev/null; None when closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    stat = FileStat.of(st)
    mode = st.st_mode
    if stat_mod.S_ISCHR(mode):
        try:
            null = os.stat(os.devnull)
            if st.st_rdev == null.st_rdev:
                return StreamIdentity(stat, "null")
        except OSError:
            pass
        if os.isatty(fd):
            termios = bytearray(KERNEL_TERMIOS)
            winsize = bytearray(8)
            try:
                fcntl.ioctl(fd, TCGETS, termios)
            except OSError:
                termios = bytearray()
            try:
                fcntl.ioctl(fd, TIOCGWINSZ, winsize)
            except OSError:
                winsize = bytearray()
            return StreamIdentity(stat, "terminal", bytes(termios), bytes(winsize),
                                  path=_named(fd))
        return StreamIdentity(stat, "device", path=_named(fd))
    kind = ("file" if stat_mod.S_ISREG(mode) else "pipe" if stat_mod.S_ISFIFO(mode)
            else "socket" if stat_mod.S_ISSOCK(mode) else "device")
    return StreamIdentity(stat, kind, path=_named(fd) if kind == "file" else "")


def _named(fd: int) -> str:
    """The path the driver's descriptor `fd` was opened by ("" when it has none)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def stdin_source(fd: int, files: FileViewSpec | None) -> str:
    """What the guest's standard input is made of (`Machine.exec`'s `stdin`): the file's
    guest path when the driver's is a regular file of the view read from its start (the
    guest reads, seeks and maps it as any file), "/dev/null" for /dev/null, "none" when
    closed, else "stream" (a pipe, a terminal, a file outside the view: fed by the driver)."""
    identity = stream_identity(fd)
    if identity is None:
        return "none"
    if identity.kind == "null":
        return os.devnull
    if identity.kind != "file":
        return "stream"
    try:
        if os.lseek(fd, 0, os.SEEK_CUR) != 0:
            return "stream"  # read partly already: the guest gets the rest, as a stream
        host = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        same = os.stat(host)
    except OSError:
        return "stream"  # unlinked, or no /proc: its bytes still flow
    if (same.st_dev, same.st_ino) != (identity.stat.dev, identity.stat.ino):
        return "stream"
    root = os.path.realpath(files.root if files is not None else "/")
    if host != root and not host.startswith(root.rstrip("/") + "/"):
        return "stream"  # outside the view: the guest could not open it by a name
    guest = "/" + os.path.relpath(host, root) if host != root else "/"
    if guest.split("/")[1] in ("proc", "dev"):
        return "stream"  # /proc and /dev of a view are the kernel's
    # A file in the host's /tmp stays readable by its name beside the private /tmp (the
    # private one is empty when the program starts): file_view.py's `FileView.host`.
    return guest


# --- signals, as a shell passes them on -------------------------------------------------------

# What a terminal or a user sends to a foreground job, passed on to the program.
FORWARDED = (Signal.SIGINT, Signal.SIGTERM, Signal.SIGHUP, Signal.SIGQUIT, Signal.SIGUSR1,
             Signal.SIGUSR2, Signal.SIGWINCH)
TWICE_SECONDS = 2.0  # a second Ctrl-C within this stops exec itself, and what it started


class Interrupted(KeyboardInterrupt):
    """exec stops itself: a signal came before the program started, or Ctrl-C came twice."""

    def __init__(self, signum: int, twice: bool = False) -> None:
        super().__init__(signum, twice)
        self.signum = signum
        self.twice = twice
        self.pid: int | None = None  # the process it stopped, once one ran


class SignalForwarder:
    """The signals of FORWARDED, caught in the driver and queued for the program (the exec
    loop delivers them through its machine). Before the program runs there is nothing to
    pass them to: exec stops (SIGWINCH, ignored by default, is dropped). A Ctrl-C within
    TWICE_SECONDS of the last one stops exec and what it started, as for a program that
    ignores or handles SIGINT a user presses Ctrl-C again."""

    def __init__(self) -> None:
        self.pending: collections.deque[int] = collections.deque()
        self.started = False  # a program runs: signals are its from now on
        self._last_interrupt: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the signals (from the main thread only, where Python runs its handlers;
        elsewhere there is nothing to catch with). Again after ray.init, which sets its own
        SIGTERM handler: the handlers from before the first time are what `restore` puts
        back."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in FORWARDED:
            previous = signal.signal(sig, self._caught)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _caught(self, signum: int, frame: object) -> None:
        if not self.started:
            if signum != Signal.SIGWINCH:
                raise Interrupted(signum)
            return
        if signum == Signal.SIGINT:
            now = time.monotonic()
            if self._last_interrupt is not None and now - self._last_interrupt < TWICE_SECONDS:
                raise Interrupted(signum, twice=True)
            self._last_interrupt = now
        self.pending.append(signum)


def _tell(pending: collections.deque[int], send: Callable[[MachineHandle, int], object],
          cluster: Cluster, where: MachineHandle, pid: int) -> MachineHandle:
    """Tell process `pid`, where it is now, each of `pending` in turn with `send` (a moving
    process is told again next round); the machine it was found on."""
    while pending:
        try:
            send(where, pending[0])
        except UnknownProcessError:
            try:
                where = cluster.locate(pid)  # it moved: tell it there
            except UnknownProcessError:
                pending.clear()  # it ended meanwhile
            return where
        except ProcessStateError:
            return where  # migrating, or ending: next round
        pending.popleft()
    return where


def _deliver(pending: collections.deque[int], cluster: Cluster, where: MachineHandle,
             pid: int) -> MachineHandle:
    """Send the queued signals to process `pid`, where it is now; the machine it was found
    on."""
    return _tell(pending, lambda machine, sig: machine.kill(pid, sig), cluster, where, pid)


def _close_outputs(closing: collections.deque[int], cluster: Cluster, where: MachineHandle,
                   pid: int) -> MachineHandle:
    """Tell process `pid`, where it is now, that the readers of its outputs `closing` (1, 2)
    have gone: its next write to each raises SIGPIPE and fails with EPIPE, as natively; the
    machine it was found on."""
    return _tell(closing, lambda machine, fd: machine.close_output(pid, fd), cluster, where,
                 pid)


def _start(cluster: Cluster, names: list[str], image: bytes, name: str, argv: list[str],
           env: list[str], files: FileViewSpec | None = None,
           stdin: str = "empty") -> tuple[MachineHandle, int]:
    """Start the process on the first of `names` that takes it (a cordoned one does not)."""
    for machine in names:
        handle = cluster.machine(machine)
        try:
            return handle, handle.exec(image, name, argv, env, files=files, stdin=stdin)
        except CordonedError:
            continue
    # Say what the user can do from here, which the machine's own refusal cannot know.
    others = [m for m in cluster.machines if m not in names]
    if len(names) == 1 and others:
        raise CordonedError(f"machine {names[0]} is cordoned (draining): start the program on "
                            f"another with --machine ({', '.join(others)}), or "
                            f"`tender-ray undrain {names[0]}`")
    raise CordonedError(f"every machine is cordoned (draining: {', '.join(names)}): "
                        "`tender-ray undrain NAME` one of them first")


RESTARTED_ELSEWHERE_PATIENCE = 120.0  # seconds another restarter's copy may take to appear


def _restarted(cluster: Cluster, dead: str, pid: int) -> MachineHandle:
    """The machine process `pid` runs on after its machine `dead` died: restarted from its
    last checkpoint (here, or by another restarter such as `up`'s restart watch), or found
    alive elsewhere; MachineError when it was lost."""
    from tender_ray import logs
    from tender_ray.cluster.supervisor import recover

    recovery = recover(cluster, dead, [pid])
    for r in recovery.restarted:
        logs.get("exec").warning("machine died; process restarted from its checkpoint",
                                 pid=pid, machine=r.machine, lost_machine=dead, seq=r.seq)
        return cluster.machine(r.machine)
    for x in recovery.lost:
        raise MachineError(f"process {pid} was lost with machine {dead}: {x.reason} (run "
                           "with --checkpoint-every to have it restart elsewhere)")
    for e in recovery.elsewhere:
        logs.get("exec").warning("machine died; another restarter restarted the process",
                                 pid=pid, machine=e.machine, lost_machine=dead)
        # Its claim comes before its copy joins a machine's table: wait for the copy.
        deadline = time.monotonic() + RESTARTED_ELSEWHERE_PATIENCE
        while True:
            try:
                return cluster.locate(pid)
            except UnknownProcessError:
                if time.monotonic() > deadline:
                    raise MachineError(
                        f"process {pid} was lost with machine {dead}: another restart "
                        f"claimed it for machine {e.machine}, but it runs nowhere after "
                        f"{RESTARTED_ELSEWHERE_PATIENCE:.0f} s ({e.reason})") from None
                time.sleep(0.1)
    return cluster.locate(pid)


class ClusterStoppedError(MachineError):
    """The cluster a program ran on was stopped under it (`tender-ray down`, or its Ray)."""


def _cluster_gone(cluster: Cluster) -> bool:
    """No machine of the cluster runs any more: each is dead, or stopped (`down` stops each
    machine, then its actor)."""
    for handle in cluster.machines.values():
        try:
            if handle.statistics(timeout=CALL_PATIENCE).state != "stopped":
                return False
        except MachineStoppedError:
            continue
    return True


def _stopped(pid: int) -> ClusterStoppedError:
    return ClusterStoppedError(f"the cluster was stopped while process {pid} ran: no machine "
                               "of it runs any more (`tender-ray down`, or its Ray went); its "
                               "output so far is above")


def _vanished(cluster: Cluster, where: MachineHandle, pid: int) -> MachineError:
    """Why process `pid` is on no machine: the cluster was stopped (`tender-ray down`), or
    it was lost some other way."""
    if _cluster_gone(cluster):
        return _stopped(pid)
    return MachineError(f"process {pid} vanished from machine {where.name} and runs on no "
                        f"machine of the cluster ({', '.join(cluster.machines)})")


CALL_PATIENCE = 10.0  # seconds a machine may take to say whether it still runs


def execute(cluster: Cluster, path: str, args: Sequence[str], env: Sequence[str], *,
            machine: str | None = None, sink: OutputSink | None = None,
            poll_seconds: float = 0.02, migrate_every: float | None = None,
            options: MigrationOptions | None = None, files: FileViewSpec | None = None,
            stdin_fd: int | None = None, program: Program | None = None,
            signals: SignalForwarder | None = None) -> ExecResult:
    """Run `path` as a Tender process on `machine` (default: the first) until it ends.

    With `migrate_every`, the process is migrated round-robin to the next machine at that
    interval while it runs; a migration that cannot happen (the process is just ending) is
    skipped, and the process goes on where it is. `files` is its view of the host tree;
    with `stdin_fd` the driver's standard input is streamed to it (EBADF if fd is closed).
    `program` is what `resolve_program` found (default: `path` itself, an executable);
    `signals` passes the driver's signals on to it. When `sink` says an output has closed
    (BrokenPipeError), the process's next write there raises SIGPIPE and fails with EPIPE,
    as a pipe's writer does whose reader has gone (`Machine.close_output`). Interrupted
    (Ctrl-C twice) kills the process and is raised.
    """
    if program is None:
        name = os.path.basename(path)
        program = Program(read_program(path), name, (name, *args), path)
    names = list(cluster.machines)
    stdin = "empty" if stdin_fd is None else stdin_source(stdin_fd, files)
    where, pid = _start(cluster, [machine] if machine else names, program.image, program.name,
                        list(program.argv), list(env), files, stdin)
    pending: collections.deque[int] = signals.pending if signals else collections.deque()
    if signals is not None:
        signals.started = True
    try:
        return _follow(cluster, where, pid, names, sink, poll_seconds, migrate_every, options,
                       stdin_fd if stdin == "stream" else None, pending)
    except Interrupted as exc:
        # What exec started goes with it: the process first (on a cluster of `up` nothing
        # else would end it).
        exc.pid = pid
        with contextlib.suppress(TenderError):
            where = _deliver(collections.deque([Signal.SIGKILL]), cluster, where, pid)
            where.reap(pid)
        raise


def _follow(cluster: Cluster, where: MachineHandle, pid: int, names: list[str],
            sink: OutputSink | None, poll_seconds: float, migrate_every: float | None,
            options: MigrationOptions | None, stdin_fd: int | None,
            pending: collections.deque[int]) -> ExecResult:
    pump = StdinPump(stdin_fd) if stdin_fd is not None else None
    if migrate_every is not None:
        poll_seconds = min(poll_seconds, migrate_every)
    next_move = time.monotonic() + (migrate_every or 0.0)
    closed: set[int] = set()  # outputs whose reader has gone
    closing: collections.deque[int] = collections.deque()  # ... not yet told to the process

    def emit(fd: int, data: bytes) -> None:
        if sink is None or not data or fd in closed:
            return  # what is written after its reader went is lost, as natively
        try:
            sink(fd, data)
        except BrokenPipeError:
            closed.add(fd)
            closing.append(fd)

    # Bytes of each stream forwarded so far: a process restarted from a checkpoint sends
    # again what its checkpoint had not handed over yet, and that is written once.
    sent = {1: 0, 2: 0}

    def forward_chunks(chunks: Sequence[OutputChunk]) -> None:
        for c in chunks:
            new = c.data[max(0, sent[c.fd] - c.offset):]
            sent[c.fd] = max(sent[c.fd], c.offset + len(c.data))
            emit(c.fd, new)

    info: ProcessInfo
    while True:
        try:
            if pending:
                where = _deliver(pending, cluster, where, pid)
            if closing:
                where = _close_outputs(closing, cluster, where, pid)
            if pump is not None:
                pump.feed(where, pid)
            info = where.wait(pid, timeout=poll_seconds)
            forward_chunks(where.take_chunks(pid))
        except UnknownProcessError:
            try:
                where = cluster.locate(pid)  # moved by someone else (a balancer, a drain)
            except UnknownProcessError:
                raise _vanished(cluster, where, pid) from None
            continue
        except MachineStoppedError as exc:
            if isinstance(exc, NoReplyError):
                continue  # slow, not dead: ask again
            if _cluster_gone(cluster):
                raise _stopped(pid) from None
            try:
                where = _restarted(cluster, where.name, pid)
            except MachineError:
                if _cluster_gone(cluster):  # stopped while it was being looked for
                    raise _stopped(pid) from None
                raise
            names = list(cluster.machines)  # the dead one has left
            continue
        if info.state == "zombie":
            break
        if migrate_every is not None and len(names) > 1 and time.monotonic() >= next_move:
            target = names[(names.index(where.name) + 1) % len(names)]
            try:
                where.migrate(pid, target, options)
                where = cluster.machine(target)
            except ProcessStateError:
                pass  # it ended (or is ending) while we asked: nothing to move
            except ProcessTreeError:
                pass  # one process of a tree: it stays where its tree is, and runs on
            except UnknownProcessError:
                where = cluster.locate(pid)  # someone else moved it first
            except MachineError as exc:
                # The destination broke; the migration rolled back and the process goes on
                # where it is. Say so (in the log, not in the program's output), keep going.
                from tender_ray import logs

                logs.get("exec").warning("migration failed", pid=pid, destination=target,
                                         error=str(exc))
            next_move = time.monotonic() + migrate_every
    try:
        info, out, err = where.reap(pid)
    except UnknownProcessError:
        raise _vanished(cluster, where, pid) from None
    emit(1, out)
    emit(2, err)
    return ExecResult(pid=pid, exit_status=info.exit_status if info.exit_status is not None
                      else 128 + 9, exit_reason=info.exit_reason,
                      run_seconds=info.run_seconds, cpu_seconds=info.cpu_seconds,
                      syscalls=info.syscalls, unsupported=info.unsupported,
                      migrations=list(info.migrations), machine=where.name)
