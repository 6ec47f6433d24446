"""Files whose identity is the descriptor, advisory locks, and data moved between
descriptors (kernel/syscalls/files.py, file_tree.py, locks.py, transfers.py): the musl
workloads `file_objects` (a file unlinked while open, an O_TMPFILE, a memfd with seals, creat,
fallocate), `locks` (flock, POSIX and OFD record locks) and `transfers` (sendfile, splice,
tee, copy_file_range, preadv/pwritev) print what the same binary prints natively — on both
engines, while they migrate (the unlinked file's contents travel in the image), and through
a home machine when the machine they run on has no host files. Two processes of one machine
see each other's locks, and a lock moves with its holder."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, start_in, wait_until
from support.programs import NATIVE_TIMEOUT, native_in

from tender_ray.kernel.machine import Machine
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.home_files import DirectLink

MakeMachine = Callable[..., Machine]
CASES = [("file_objects", "30"), ("locks", "all")]
QUICK = [("transfers",)]  # over before a move could come: run in place only


def _native(tmp_path: Path, name: str, *args: str) -> tuple[int, bytes, bytes]:
    where = tmp_path / "native"
    where.mkdir()
    return native_in(name, where, *args)


def _guest_dir(tmp_path: Path) -> Path:
    where = tmp_path / "guest"
    where.mkdir()
    return where


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES + QUICK, ids=lambda c: c[0])
def test_as_natively(make_machine: MakeMachine, tmp_path: Path, engine: str,
                     case: tuple[str, ...]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    pid = start_in(machine, case[0], _guest_dir(tmp_path), *case[1:])
    status, out, err, info = finish(machine, pid)
    assert (status, out, err) == _native(tmp_path, *case), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_through_migrations(make_machine: MakeMachine, tmp_path: Path, engine: str,
                            case: tuple[str, str]) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    pid = start_in(machines[0], case[0], _guest_dir(tmp_path), *case[1:])
    where, records = bounce(machines, pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == _native(tmp_path, *case), info.exit_reason


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_through_a_home_without_host_files(make_machine: MakeMachine, tmp_path: Path,
                                           case: tuple[str, str]) -> None:
    home = make_machine(name="home", quantum_us=1000, engine="emulated")
    away = make_machine(name="away", quantum_us=1000, engine="emulated", host_files="none")
    away.host_tree.link = lambda name: DirectLink(name, home.host_tree.home)
    pid = start_in(home, case[0], _guest_dir(tmp_path), *case[1:])
    where, records = bounce([home, away], pid, move=local_mover(), pause=0.005)
    assert records, "it ended before it moved"
    status, out, err, info = finish([home, away][where], pid)
    assert (status, out, err) == _native(tmp_path, *case), info.exit_reason


def _printed(machine: Machine, pid: int, line: bytes, what: str) -> None:
    wait_until(lambda: line in machine.scheduler.table[pid].stdout, 60.0, what,
               machine=machine)


BUSY = (b"flock now: busy\nrecord now: write [0, +0) pid a process\n"
        b"record without waiting: -1 Resource temporarily unavailable\n")


def test_two_processes_of_a_machine_see_each_others_locks(make_machine: MakeMachine,
                                                          tmp_path: Path) -> None:
    machine = make_machine(quantum_us=1000, engine="emulated")
    where = _guest_dir(tmp_path)
    holder = start_in(machine, "locks", where, "hold", stdin="stream")
    _printed(machine, holder, b"held\n", "the holder holds its locks")
    waiter = start_in(machine, "locks", where, "try")
    _printed(machine, waiter, BUSY, "the waiter finds them taken")
    assert machine.info(waiter).state != "zombie"  # it waits for the flock
    machine.feed_stdin(holder, b"", eof=True)  # the holder ends: its locks go with it
    status, out, _, info = finish(machine, waiter)
    assert (status, out) == (0, BUSY + b"flock, waiting: 0\ngot it\n"), info.exit_reason
    assert finish(machine, holder)[0] == 0


def test_a_lock_moves_with_its_holder(make_machine: MakeMachine, tmp_path: Path) -> None:
    a, b = (make_machine(name=n, quantum_us=1000, engine="emulated") for n in "ab")
    where = _guest_dir(tmp_path)
    holder = start_in(a, "locks", where, "hold", stdin="stream")
    _printed(a, holder, b"held\n", "the holder holds its locks")
    local_mover()(a, holder, b)
    waiter = start_in(b, "locks", where, "try")
    _printed(b, waiter, BUSY, "the waiter finds them taken where the holder went")
    b.feed_stdin(holder, b"", eof=True)
    status, out, _, info = finish(b, waiter)
    assert (status, out) == (0, BUSY + b"flock, waiting: 0\ngot it\n"), info.exit_reason
    assert finish(b, holder)[0] == 0


PYTHON_TEMPFILES = """
import hashlib, os, sys, tempfile
where = sys.argv[1]
anonymous = tempfile.TemporaryFile(dir=where)  # O_TMPFILE where Linux has it
named = tempfile.NamedTemporaryFile(dir=where, delete=False)
os.unlink(named.name)  # the tmpfile() pattern: open, unlinked, used
for i in range(400):
    block = hashlib.sha256(str(i).encode()).hexdigest().encode() * 40
    anonymous.write(block)
    named.write(block[::-1])
for f in (anonymous, named):
    f.flush()
    f.seek(0)
    print(hashlib.sha256(f.read()).hexdigest(), os.fstat(f.fileno()).st_nlink)
print(sorted(os.listdir(where)))
"""


@pytest.mark.parametrize("engine", ENGINES[1:])  # python3 at native speed
def test_python_temporary_files_travel(make_machine: MakeMachine, tmp_path: Path,
                                       engine: str) -> None:
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("python3 is not installed")
    native = subprocess.run([str(python), "-c", PYTHON_TEMPFILES, str(tmp_path)],
                            capture_output=True, env={}, timeout=NATIVE_TIMEOUT, check=True)
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine, memory_mib=256)
                for i in range(2)]
    where = _guest_dir(tmp_path)
    pid = machines[0].exec(python.read_bytes(), "python3",
                           [str(python), "-c", PYTHON_TEMPFILES, str(where)],
                           files=FileViewSpec(cwd=str(where), writable=(str(where),)))
    at, records = bounce(machines, pid, move=local_mover(), pause=0.01)
    status, out, err, info = finish(machines[at], pid, timeout=300)
    assert records, "it ended before it moved"
    assert (status, out) == (0, native.stdout), (err, info.exit_reason)
    assert out.endswith(b"[]\n")  # neither left a name behind
