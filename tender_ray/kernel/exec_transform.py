"""execve as a transform in place: the process keeps its entry, pid, descriptors (all but the
close-on-exec ones), blocked mask and pending signals, and gets a new program resource and a
new virtual space, the way a migration's transform II/III gives an arriving process its
space and start position.

The call has two halves, as Linux's has a point of no return. `prepare` runs in the call:
it finds the program as exec does (the path through the process's file view, `#!` scripts
running their interpreter, the dynamic loader read through the view too) and answers the
errors a shell reports (ENOENT, EACCES, ENOEXEC, E2BIG) while the old program is intact.
`commit` runs between two runs of the CPU (a register edit): the old space is released, the
new one loaded, the CPU bound to it, and the new start state replaces the registers.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tender_ray import engines
from tender_ray.abi.cpu_state import CpuState
from tender_ray.abi.linux import Errno
from tender_ray.errors import BadProgramError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import process_tree, signals
from tender_ray.resources.file_view import FileStat, FileView, read_whole
from tender_ray.resources.plate import Plate
from tender_ray.resources.process import Process
from tender_ray.resources.program import Program, parse_program
from tender_ray.resources.virtual_space import VirtualSpace

if TYPE_CHECKING:
    from tender_ray.kernel.scheduler import Scheduler
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

SHEBANG_LIMIT = 256  # bytes of a `#!` line Linux reads (BINPRM_BUF_SIZE)
SHEBANG_DEPTH = 4  # interpreters that are scripts themselves, as Linux allows
MAX_ARG_STRLEN = 32 * 4096  # one argument or variable at most (Linux's MAX_ARG_STRLEN)
MAX_ARGS = 0x7FFFFFFF  # Linux's MAX_ARG_STRINGS


class ProgramLoader(Protocol):
    """What the transform needs of its machine (a `Machine` is one): its managers, plate,
    engine and kernel space, and the lock snapshots read the areas under."""

    managers: vm.Managers
    plate: Plate
    engine: str
    kernel_space: VirtualSpace

    @property
    def scheduler(self) -> Scheduler: ...


def load_in_place(m: ProgramLoader, p: Process, new: NewProgram) -> None:
    """The old space goes back and the new program is loaded as exec loads it (vDSO and
    all), its image kept on the plate (a later migration reloads text from there). On
    OutOfMemoryError the process is left without a space: the caller ends it."""
    from tender_ray.kernel.machine import choosing_features  # the machine imports this module

    plate_name = m.plate.store_program(new.image, new.program.digest)
    with m.scheduler.lock:  # snapshots read the areas under it
        vm.release_address_space(m.managers, p)
        try:
            vm.load_program(m.managers, p, new.program, new.image, new.argv, new.envp,
                            new.interpreter, vdso=engines.vdso_areas(m.engine))
        except BaseException:
            vm.release_address_space(m.managers, p)
            p.space = m.kernel_space
            raise
        p.plate_name = plate_name
        p.cpu_features = choosing_features(new.program, new.image, m.engine)


@dataclass(frozen=True)
class NewProgram:
    """What `prepare` found: the program to load, its arguments and environment, and the
    names the process takes (its command name, /proc/self/exe's path)."""

    program: Program
    image: bytes
    argv: list[bytes]
    envp: list[bytes]
    interpreter: tuple[Program, bytes] | None
    comm: str
    exe: str


def _fail(errno: Errno, what: str) -> OSError:
    return OSError(int(errno), what)


def read_string(p: Process, addr: int, limit: int = MAX_ARG_STRLEN) -> bytes:
    """The NUL-terminated string at `addr` (E2BIG past `limit` bytes), read page by page."""
    assert p.space is not None
    raw = b""
    while len(raw) <= limit:
        at = addr + len(raw)
        chunk = p.space.read(at, 4096 - at % 4096)
        end = chunk.find(b"\0")
        if end >= 0:
            return raw + chunk[:end]
        raw += chunk
    raise _fail(Errno.E2BIG, "an argument is longer than MAX_ARG_STRLEN")


def read_vector(p: Process, addr: int) -> list[bytes]:
    """The strings of a NULL-ended array of pointers (argv, envp); none for a NULL array,
    as Linux takes it."""
    if not addr:
        return []
    assert p.space is not None
    out: list[bytes] = []
    while True:
        (pointer,) = struct.unpack("<Q", p.space.read(addr + 8 * len(out), 8))
        if not pointer:
            return out
        if len(out) >= MAX_ARGS:
            raise _fail(Errno.E2BIG, "too many arguments")
        out.append(read_string(p, pointer))


def _executable(st: FileStat) -> bool:
    """Whether the caller may execute the file (root: when anyone may)."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        return bool(st.mode & 0o111)
    bits = (st.mode >> 6 if st.uid == uid else st.mode >> 3 if st.gid == gid else st.mode)
    return bool(bits & 1)


def open_program(view: FileView, path: str, *, check_exec: bool = True
                 ) -> tuple[str, bytes]:
    """The guest path and contents of the file `path` names, checked as execve checks it:
    ENOENT when there is none, EACCES when it is not a regular file, not executable, or not
    a host file of the view (a device, a file of /proc)."""
    if not path:
        raise _fail(Errno.ENOENT, "an empty path")
    r = view.resolve(path)
    if r.exe:
        r = view.resolve(view.exe)
    if r.host is None:
        raise _fail(Errno.EACCES, f"{path} is not a program file")
    st = view.service.lstat(r.host)
    if not stat_mod.S_ISREG(st.mode):
        raise _fail(Errno.EACCES, f"{path} is not a regular file")
    if check_exec and not _executable(st):
        raise _fail(Errno.EACCES, f"{path} is not executable")
    assert r.host is not None
    return r.guest, read_whole(view.service, r.host)


def shebang(image: bytes) -> tuple[str, bytes | None] | None:
    """A script's interpreter and its optional argument (the rest of its `#!` line, one
    argument, as Linux passes it); None for a file that is not a script."""
    if not image.startswith(b"#!"):
        return None
    line = image[2:SHEBANG_LIMIT].split(b"\n", 1)[0].replace(b"\t", b" ").strip(b" \r")
    if not line:
        raise _fail(Errno.ENOEXEC, "a #! line without an interpreter")
    interpreter, _, argument = line.partition(b" ")
    argument = argument.strip(b" ")
    return interpreter.decode("utf-8", "surrogateescape"), argument or None


def prepare(view: FileView, path: str, argv: list[bytes], envp: list[bytes]) -> NewProgram:
    """Find what `execve(path, argv, envp)` runs, or raise OSError with the errno Linux
    answers. A script runs as [interpreter, argument?, path, argv[1:]...]."""
    filename = path
    comm = posixpath.basename(path)
    for _ in range(SHEBANG_DEPTH + 1):
        guest, image = open_program(view, filename)
        script = shebang(image)
        if script is None:
            break
        interpreter, argument = script
        argv = [interpreter.encode("utf-8", "surrogateescape"),
                *([argument] if argument is not None else []),
                filename.encode("utf-8", "surrogateescape"), *argv[1:]]
        filename = interpreter
    else:
        raise _fail(Errno.ELOOP, "too many levels of #! interpreters")
    if image[:4] != b"\x7fELF":
        raise _fail(Errno.ENOEXEC, f"{filename} is neither an ELF executable nor a script")
    try:
        program = parse_program(image, comm)
    except BadProgramError as exc:
        raise _fail(Errno.ENOEXEC, str(exc)) from None
    if vm.stack_bytes(argv, envp) > vm.ARG_MAX:
        raise _fail(Errno.E2BIG, "arguments and environment are too long")
    interpreter_image: tuple[Program, bytes] | None = None
    if program.interpreter:
        def read(loader: str) -> bytes:
            return open_program(view, loader, check_exec=False)[1]
        try:
            interpreter_image = vm.read_interpreter(program, read)
        except BadProgramError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno:
                raise _fail(Errno(cause.errno), str(exc)) from None
            raise _fail(Errno.ELIBBAD, str(exc)) from None
    return NewProgram(program, image, argv, envp, interpreter_image, comm, guest)


def reset_signals(p: Process) -> None:
    """Handled signals go back to their default action (the handlers were in the old
    program); ignored ones stay ignored; the blocked mask and pending signals are kept; the
    alternate stack is gone with the old space."""
    state = signals.of(p)
    state.actions = [a if a.handler in (signals.SIG_DFL, signals.SIG_IGN) else signals.SigAction()
                     for a in state.actions]
    state.altstack = (0, signals.SS_DISABLE, 0)
    state.saved_mask = None
    state.wait = None
    signals.threads_of(state).clear()  # the other threads are gone


def close_on_exec(p: Process) -> None:
    for fd in sorted(fd for fd, entry in p.files.entries.items() if entry.cloexec):
        p.files.close(fd)


def commit(sc: SystemCalls, loader: ProgramLoader, p: Process, new: NewProgram) -> CpuState:
    """The point of no return, between two runs: the process becomes the new program. Its
    start registers (the caller's register edit returns them)."""
    load_in_place(loader, p, new)
    close_on_exec(p)
    reset_signals(p)
    p.tid_address = 0  # exec forgets the clear-child-tid address, as Linux's mm_release
    p.threads.clear()  # (its one thread's record with it: made again on first use)
    p.name = new.comm[:15]
    if p.view is not None:
        p.view.exe = new.exe
        p.view.cmdline = b"".join(arg + b"\0" for arg in new.argv)
        p.view.environ = b"".join(var + b"\0" for var in new.envp)
    assert p.registers is not None
    sc.attach(p)  # the CPU runs the new space from now on
    process_tree.released(loader.scheduler, p)  # a vfork parent goes on
    return p.registers
