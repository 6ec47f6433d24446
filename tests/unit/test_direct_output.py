"""Standard streams as host pipes on the native engine (engines/native/output_pipes.py): writes
to standard output and error go straight to the host kernel, and what reaches the owner is
byte-identical to the native run's, in order, while the process moves every 50 ms and while
its owner follows it; a write after stdout was dup2'd onto a file goes to the file; the
reader's close still ends the writer with SIGPIPE (141) or EPIPE, as natively."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import NATIVE_OK, NATIVE_WHY
from support.machines import bounce, finish, local_mover, wait_until

from tender_ray.kernel.machine import Machine
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.file_view import FileViewSpec

MakeMachine = Callable[..., Machine]
pytestmark = pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY)

EVERY = 0.05  # seconds between two moves
PYTHON = "/usr/bin/python3"
ENV = ["LC_ALL=C", "PATH=/usr/bin:/bin"]
# Lines to stdout and stderr by turns, in blocks of up to 4 KiB (each block one write(2),
# which may go straight to the host pipe; every fifth a writev(2), which the machine serves),
# then the same through one stream (stderr dup2'd onto stdout): the order shows in stdout.
INTERLEAVED = """
import os, sys
n = int(sys.argv[1])
put = lambda fd, i, data: os.writev(fd, [data]) if i % 5 == 0 else os.write(fd, data)
for i in range(n):
    line = b"%07d " % i + b"o" * (i % 4000) + b"\\n"
    put(1, i, line)
    put(2, i, line.replace(b"o", b"e"))
os.dup2(1, 2)
for i in range(n):
    put(1 if i % 3 else 2, i, b"%07d one stream %s\\n" % (i, b"x" * (i % 1000)))
"""
# 4 KiB blocks to stdout, then stdout dup2'd onto a file (blocks there), then back.
DUP2_FILE = """
import os, sys
saved = os.dup(1)
for i in range(512):
    os.write(1, bytes([65 + i % 26]) * 4096)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(fd, 1)
os.close(fd)
for i in range(512):
    os.write(1, bytes([97 + i % 26]) * 4096)
os.dup2(saved, 1)
os.write(1, b"back on the stream\\n")
"""


def _native(argv: list[str]) -> tuple[int, bytes, bytes]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                          env=dict(e.split("=", 1) for e in ENV))
    status = done.returncode if done.returncode >= 0 else 128 - done.returncode
    return status, done.stdout, done.stderr


def _exec(machine: Machine, argv: list[str], cwd: Path, writable: tuple[str, ...] = ()) -> int:
    return machine.exec(Path(argv[0]).read_bytes(), Path(argv[0]).name, argv, ENV,
                        files=FileViewSpec(cwd=str(cwd), writable=writable))


def _where_they_differ(got: bytes, want: bytes) -> str:
    same = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)))
    return f"{len(got)} bytes against {len(want)}, the same up to {same}"


def test_writes_to_stdout_go_straight_to_the_kernel(make_machine: MakeMachine,
                                                    tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4 << 20))
    argv = ["/usr/bin/dd", f"if={data}", "bs=4k", "status=none"]
    machine = make_machine(name="o0", engine="native", memory_mib=128)
    status, out, err, info = finish(machine, _exec(machine, argv, tmp_path))
    assert (status, out, err) == _native(argv)
    blocks = (4 << 20) // 4096
    assert info.syscalls.get("write", 0) < blocks // 4, info.syscalls  # not one stop a block


@pytest.mark.parametrize("followed", [False, True], ids=["collected", "followed"])
def test_stdout_and_stderr_interleaved_moved_every_50ms_are_byte_identical(
        make_machine: MakeMachine, tmp_path: Path, followed: bool) -> None:
    argv = [PYTHON, "-c", INTERLEAVED, "6000"]
    want = _native(argv)
    machines = [make_machine(name=f"i{i}", quantum_us=1000, engine="native",
                             memory_mib=256) for i in range(2)]
    pid = _exec(machines[0], argv, tmp_path)
    taken = [b"", b""]
    if followed:  # the owner takes the output as it comes: the streams are bounded
        out, err = machines[0].take_output(pid)
        taken = [out, err]

    def move(source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        if followed:
            out, err = source.take_output(pid)
            taken[0] += out
            taken[1] += err
        return local_mover()(source, pid, destination)

    at, records = bounce(machines, pid, move=move, pause=EVERY)
    status, out, err, _ = finish(machines[at], pid)
    assert records, "it ended before it moved"
    got = (status, taken[0] + out, taken[1] + err)
    assert got[1] == want[1], _where_they_differ(got[1], want[1])
    assert got == want, f"{len(records)} moves: {err[-2000:]!r}"


def test_a_write_after_stdout_is_dup2d_onto_a_file_goes_to_the_file(
        make_machine: MakeMachine, tmp_path: Path) -> None:
    native_file, tender_file = tmp_path / "native.out", tmp_path / "tender.out"
    want = _native([PYTHON, "-c", DUP2_FILE, str(native_file)])
    machine = make_machine(name="f0", engine="native", memory_mib=256)
    argv = [PYTHON, "-c", DUP2_FILE, str(tender_file)]
    got = finish(machine, _exec(machine, argv, tmp_path, writable=(str(tmp_path),)))[:3]
    assert got == want
    assert tender_file.read_bytes() == native_file.read_bytes()
    assert len(want[1]) == 512 * 4096 + len(b"back on the stream\n")


@pytest.mark.parametrize("moved", [False, True], ids=["here", "moved"])
def test_the_readers_close_ends_a_direct_writer_with_sigpipe(
        make_machine: MakeMachine, tmp_path: Path, moved: bool) -> None:
    """As `dd ... | head -c 1M`: once output has come, the reader goes; the writer, writing
    4 KiB blocks straight to its host pipe, is killed by SIGPIPE (141), silent, as natively."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(64 << 20))
    argv = ["/usr/bin/dd", f"if={data}", "bs=4k", "status=none"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(1 << 20)
        proc.stdout.close()
        native_err = proc.stderr.read()
        assert proc.wait(timeout=120) == -13
    machines = [make_machine(name=f"p{i}", quantum_us=1000, engine="native",
                             memory_mib=128) for i in range(2)]
    pid = _exec(machines[0], argv, tmp_path)
    out = bytearray()

    def some_output() -> bool:
        out.extend(machines[0].take_output(pid)[0])
        return len(out) >= 1 << 20

    wait_until(some_output, timeout=120, what="1 MiB of dd's output", machine=machines[0])
    at = 0
    if moved:
        local_mover()(machines[0], pid, machines[1])
        at = 1
    machines[at].close_output(pid, 1)
    status, _, err, info = finish(machines[at], pid)
    assert (status, err) == (141, native_err)
    assert info.syscalls.get("write", 0) < 64, info.syscalls  # the blocks went straight
