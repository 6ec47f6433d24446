"""Direct descriptors on the native engine (engines/native/direct_files.py): the narrowing
seccomp filter checked by the host kernel itself; read-only regular files read straight from
the kernel, byte-identical to the native run while the process moves every 50 ms; and the
escapes — a symlink swapped or a directory renamed between the view's check and the
descriptor's install, /proc/self/fd/N reopened, a descriptor passed over a unix socket —
each refused or confined to the file the view opened. A file changed under a moving process
is reported to it (ESTALE), not read differently."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import bounce, finish, local_mover, wait_until

from tender_ray.engines.native import direct_files
from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec, LocalFileService

MakeMachine = Callable[..., Machine]
pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)

EVERY = 0.05  # seconds between two moves
PYTHON = "/usr/bin/python3"
ENV = ["LC_ALL=C", "PATH=/usr/bin:/bin"]
PY_LINES = ("import hashlib, sys\nh = hashlib.sha256()\n"
            "for line in open(sys.argv[1], 'rb'):\n    h.update(line)\nprint(h.hexdigest())")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight MiB of text lines from a fixed seed (read-only to the programs)."""
    where = tmp_path_factory.mktemp("direct") / "data.txt"
    rng = random.Random(21)
    with where.open("wb") as f:
        for _ in range(8 << 20 >> 6):
            f.write(rng.randbytes(31).hex().encode() + b"\n")
    return where


def _native(argv: list[str], stdin: Path | None = None) -> tuple[int, bytes]:
    with open(stdin or os.devnull, "rb") as source:
        done = subprocess.run(argv, stdin=source, capture_output=True, check=False,
                              env=dict(e.split("=", 1) for e in ENV))
    return done.returncode, done.stdout


def _exec(machine: Machine, argv: list[str], root: Path, stdin: str = "empty") -> int:
    return machine.exec(Path(argv[0]).read_bytes(), Path(argv[0]).name, argv, ENV,
                        files=FileViewSpec(cwd=str(root), writable=()), stdin=stdin)


# --- the filter, judged by the host kernel ------------------------------------------------

def _judged(allowed: int, window_of: Callable[[int], tuple[int, int] | None],
            writes: int = 0) -> list[int]:
    """In a child with only the narrowing filter (a TRACE answer without a tracer is
    ENOSYS), the errno of: read on fd 5 into a buffer, on fd 6, lseek on fd 5, fstat on fd 5
    into the buffer, read into a buffer past the window's end, then write from the buffer
    to fd 7 (a pipe) 4096 bytes, 4097 bytes, 64 bytes past the window's end, and 64 bytes
    to fd 8 (a pipe too); 0 where it ran. (The child reports with writev, which the filter
    does not judge.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(1 << 16)
    base = ctypes.addressof(buffer)
    window = window_of(base)
    program = direct_files.narrowing_filter(allowed, window, writes)
    code = ctypes.create_string_buffer(program)
    prog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(program) // 8,
                                                   ctypes.addressof(code)))
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only raw calls after the filter
        try:
            for fd in (5, 6):
                os.dup2(os.open(sys.executable, os.O_RDONLY), fd)
            for fd in (7, 8):
                os.dup2(os.pipe()[1], fd)
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 16)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            ok = libc.syscall(317, 1, 0, ctypes.c_void_p(ctypes.addressof(prog)))
            codes = [0 if ok == 0 else max(ctypes.get_errno(), 1)]
            for call in (lambda: libc.read(5, ctypes.c_void_p(base), 64),
                         lambda: libc.read(6, ctypes.c_void_p(base), 64),
                         lambda: libc.lseek(5, 0, 0),
                         lambda: libc.syscall(5, 5, ctypes.c_void_p(base)),
                         lambda: libc.read(5, ctypes.c_void_p(base + (1 << 16) - 8), 64),
                         lambda: libc.write(7, ctypes.c_void_p(base), 4096),
                         lambda: libc.write(7, ctypes.c_void_p(base), 4097),
                         lambda: libc.write(7, ctypes.c_void_p(base + (1 << 16) - 8), 64),
                         lambda: libc.write(8, ctypes.c_void_p(base), 64)):
                ctypes.set_errno(0)
                codes.append(0 if call() >= 0 else min(ctypes.get_errno(), 255))
            report = ctypes.create_string_buffer(bytes(codes))
            vector = struct.pack("<QQ", ctypes.addressof(report), len(codes))
            libc.writev(wfd, ctypes.c_char_p(vector), 1)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        got = list(r.read())
    os.waitpid(pid, 0)
    assert got and got[0] == 0, f"the filter was not installed: {got}"
    return got[1:]


def test_the_narrowing_filter_passes_only_allowed_numbers_and_buffers_in_the_window() -> None:
    enosys = errno.ENOSYS
    window = lambda base: (base & ~0xFFF, base + (1 << 16) - 4096)  # noqa: E731
    no_writes = [enosys] * 4
    assert _judged(1 << 5, window) == [0, enosys, 0, 0, enosys, *no_writes]
    assert _judged(1 << 5 | 1 << 6, window) == [0, 0, 0, 0, enosys, *no_writes]
    assert _judged(0, window) == [enosys] * 9
    # No window: only the calls that touch no guest memory pass.
    assert _judged(1 << 5, lambda base: None, 1 << 7) == [enosys, enosys, 0, enosys, enosys,
                                                         *no_writes]
    # A write passes on a number of `writes`, whole within PIPE_BUF, from inside the window.
    assert _judged(0, window, 1 << 7) == [enosys] * 5 + [0, enosys, enosys, enosys]
    assert _judged(0, window, 1 << 7 | 1 << 8) == [enosys] * 5 + [0, enosys, enosys, 0]


# --- real programs ------------------------------------------------------------------------

def _cases(data: Path) -> list[tuple[list[str], Path | None]]:
    return [(["/usr/bin/sha256sum", str(data)], None),
            (["/usr/bin/gzip", "-c", "-1"], data),
            (["/usr/bin/dd", f"if={data}", "bs=4k", "status=none"], None),
            ([PYTHON, "-c", PY_LINES, str(data)], None)]


def test_reads_go_straight_to_the_kernel(make_machine: MakeMachine, data: Path) -> None:
    machine = make_machine(name="d0", engine="native", memory_mib=256)
    argv = ["/usr/bin/sha256sum", str(data)]
    status, out = _native(argv)
    pid = _exec(machine, argv, data.parent)
    got_status, got_out, err, info = finish(machine, pid)
    assert (got_status, got_out) == (status, out), err
    reads = data.stat().st_size // 32768  # sha256sum reads 32 KiB at a time
    assert info.syscalls.get("read", 0) < reads // 4, info.syscalls


@pytest.mark.parametrize("case", range(4), ids=["sha256sum", "gzip", "dd", "python3"])
def test_each_program_moved_every_50ms_stays_byte_identical(
        make_machine: MakeMachine, data: Path, case: int) -> None:
    argv, stdin = _cases(data)[case]
    status, out = _native(argv, stdin)
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine="native",
                             memory_mib=256) for i in range(2)]
    pid = _exec(machines[0], argv, data.parent, stdin=str(stdin) if stdin else "empty")
    at, records = bounce(machines, pid, move=local_mover(), pause=EVERY)
    got_status, got_out, err, _info = finish(machines[at], pid)
    assert records, "it ended before it moved"
    same = next((i for i, (a, b) in enumerate(zip(got_out, out, strict=False)) if a != b),
                min(len(got_out), len(out)))
    assert (got_status, got_out) == (status, out), (
        f"{len(got_out)} bytes against {len(out)}, the same up to {same}, "
        f"{len(records)} moves: {err[-2000:]!r}")


# --- escapes ------------------------------------------------------------------------------

@pytest.fixture
def swap_after_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Callable[[], None]]]:
    """Run swaps[path]() right after the view's service opened `path`: between the check
    and the descriptor's install."""
    swaps: dict[str, Callable[[], None]] = {}
    opened = LocalFileService.open

    def open_then_swap(self: LocalFileService, host_path: str, flags: int, mode: int) -> int:
        handle = opened(self, host_path, flags, mode)
        swap = swaps.pop(host_path, None)
        if swap is not None:
            swap()
        return handle

    monkeypatch.setattr(LocalFileService, "open", open_then_swap)
    yield swaps


def test_a_symlink_swapped_after_the_check_is_not_followed(
        make_machine: MakeMachine, tmp_path: Path,
        swap_after_check: dict[str, Callable[[], None]]) -> None:
    root = tmp_path / "view"
    root.mkdir()
    (root / "file").write_bytes(b"the file the view opened\n" * 1000)
    (tmp_path / "secret").write_bytes(b"SECRET\n" * 1000)

    def swap() -> None:
        (root / "file").rename(root / "moved")
        (root / "file").symlink_to(tmp_path / "secret")

    swap_after_check[str(root / "file")] = swap
    machine = make_machine(name="s0", engine="native", memory_mib=128)
    pid = _exec(machine, ["/bin/cat", str(root / "file")], root)
    status, out, err, _ = finish(machine, pid)
    assert (status, out) == (0, b"the file the view opened\n" * 1000), err


def test_a_directory_renamed_after_the_check_is_not_reached(
        make_machine: MakeMachine, tmp_path: Path,
        swap_after_check: dict[str, Callable[[], None]]) -> None:
    root = tmp_path / "view"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"checked\n" * 1000)

    def swap() -> None:
        (root / "dir").rename(root / "old")
        (root / "dir").mkdir()
        (root / "dir" / "file").write_bytes(b"OTHER\n" * 1000)

    swap_after_check[str(root / "dir" / "file")] = swap
    machine = make_machine(name="r0", engine="native", memory_mib=128)
    pid = _exec(machine, ["/bin/cat", str(root / "dir" / "file")], root)
    status, out, err, _ = finish(machine, pid)
    assert (status, out) == (0, b"checked\n" * 1000), err


PROC_FD = """import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.read(fd, 5).decode(), os.readlink(f"/proc/self/fd/{fd}"))
try:
    os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    print("opened for writing")
except OSError as e:
    print("write refused", e.errno)
again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
print(os.read(again, 5).decode(), os.lseek(fd, 0, os.SEEK_CUR))
"""


def test_proc_self_fd_reopened_is_confined_to_the_view(make_machine: MakeMachine,
                                                       tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"hello world\n" * 1000)
    machine = make_machine(name="p0", engine="native", memory_mib=128)
    pid = _exec(machine, [PYTHON, "-c", PROC_FD, str(tmp_path / "file")], tmp_path)
    status, out, err, _ = finish(machine, pid)
    assert status == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == f"hello {tmp_path / 'file'}"  # the guest's path, not the machine's fd
    assert lines[1] == f"write refused {errno.EROFS}"
    assert lines[2] == "hello 5"  # a description of its own, the same file


PASS_FD = """import os, socket, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
a, b = socket.socketpair()
try:
    socket.send_fds(a, [b"x"], [fd])
    _, fds, _, _ = socket.recv_fds(b, 16, 1)
except OSError as e:
    print("passing refused", e.errno)
    raise SystemExit(0)
got = fds[0]
print(os.read(got, 5).decode(), os.lseek(fd, 0, os.SEEK_CUR))
try:
    os.write(got, b"z")
    print("written")
except OSError as e:
    print("write refused", e.errno)
"""


def test_a_descriptor_passed_over_a_unix_socket_stays_the_file_it_was(
        make_machine: MakeMachine, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"hello world\n" * 1000)
    argv = [PYTHON, "-c", PASS_FD, str(tmp_path / "file")]
    machine = make_machine(name="u0", engine="native", memory_mib=128)
    pid = _exec(machine, argv, tmp_path)
    status, out, err, _ = finish(machine, pid)
    assert status == 0, err
    if out.startswith(b"passing refused"):
        return  # refused: nothing crossed
    assert out == _native(argv)[1] == f"hello 5\nwrite refused {errno.EBADF}\n".encode()


CHANGED = """import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
moved = os.dup2(fd, 40)  # a number nothing else used: direct
os.close(fd)
print(len(os.read(moved, 65536)), flush=True)
sys.stdin.read(1)
try:
    print(len(os.read(moved, 65536)))
except OSError as e:
    print("refused", e.errno)
"""


def test_a_file_changed_under_a_moving_process_is_reported(
        make_machine: MakeMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * (2 << 20))
    machines = [make_machine(name=f"c{i}", engine="native", memory_mib=128,
                             pid_base=1000 + i * 1000) for i in range(2)]
    pid = _exec(machines[0], [PYTHON, "-c", CHANGED, str(path)], tmp_path, stdin="stream")
    taken = bytearray()

    def first_read() -> bool:
        taken.extend(machines[0].take_output(pid)[0])
        return b"\n" in taken

    wait_until(first_read, 120, "the first read")
    opened = LocalFileService.open

    def change_then_open(self: LocalFileService, host_path: str, flags: int, mode: int
                         ) -> int:
        if host_path == str(path):  # the destination reopens it: changed on the way
            with path.open("ab") as f:
                f.write(b"changed")
        return opened(self, host_path, flags, mode)

    monkeypatch.setattr(LocalFileService, "open", change_then_open)
    local_mover()(machines[0], pid, machines[1])
    machines[1].feed_stdin(pid, b"x", eof=True)
    status, out, err, _ = finish(machines[1], pid)
    assert status == 0, err
    assert bytes(taken) + out == f"65536\nrefused {errno.ESTALE}\n".encode()
